"""What every sampler returns and takes: `Rollouts` (G completions per prompt) and `SamplingSettings`.

    settings = SamplingSettings(max_new_tokens=128)
    rollouts = SAMPLERS["static"].sample(model, tokenizer, [ids_q1, ids_q2], 4, settings)
    rollouts.completion_ids, rollouts.completion_mask, rollouts.group_ids  # [N, L], [N, L], [N]

Rows are grouped by prompt (a prompt's G completions are consecutive), prompts
are padded on the left and completions on the right.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..data import chat_stop_ids
from ..model import hf_model


@dataclass(frozen=True)
class PowerSettings:
    """What the power samplers (samplers/resample.py, mcmc.py, smc.py) aim at and spend: p_base^alpha."""

    alpha: float = 4.0  # the target p_base(y|q)^alpha
    candidates: int = 16  # importance resampling: proposals drawn per returned answer
    proposal_temperature: float = 0.0  # the proposal is the loaded model at this temperature (0: 1/alpha)
    mcmc_steps: int = 10  # Metropolis-Hastings steps after each block
    block_tokens: int = 0  # Metropolis-Hastings block length (0: max_new_tokens / 16)
    particles: int = 8  # sequential Monte Carlo: particles per returned answer
    ess_threshold: float = 0.5  # sequential Monte Carlo: resample when the ESS falls below this share of particles
    ramp_tokens: int = 0  # sequential Monte Carlo: the target's exponent rises from 1 to alpha over these tokens

    def temperature(self) -> float:
        return self.proposal_temperature or 1.0 / self.alpha


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = False  # never stop at EOS: every completion is max_new_tokens long, EOS scored as any token
    stop_ids: tuple[int, ...] = ()  # more ids that end a completion, e.g. the chat template's end of turn
    power: PowerSettings = PowerSettings()  # read by the power samplers only

    @staticmethod
    def from_config(cfg, tokenizer) -> "SamplingSettings":
        """A command's sampling options (config.SamplingOptions, and PowerOptions where the command has them), also
        stopping at the chat template's end-of-turn token."""
        power = PowerSettings(cfg.power_alpha, cfg.candidates, cfg.proposal_temperature, cfg.mcmc_steps,
                              cfg.block_tokens, cfg.particles, cfg.ess_threshold,
                              cfg.alpha_ramp_tokens) if hasattr(cfg, "power_alpha") else PowerSettings()
        return SamplingSettings(cfg.max_new_tokens, cfg.min_new_tokens, cfg.temperature, cfg.top_p, cfg.ignore_eos,
                                tuple(chat_stop_ids(tokenizer, cfg.chat_template)), power)


def per_sample(prompts: list[list[int]], samples_per_prompt: int) -> list[list[int]]:
    """Each prompt repeated G = samples_per_prompt times, rows grouped by prompt."""
    return [ids for ids in prompts for _ in range(samples_per_prompt)]


def group_ids_of(prompts: int, samples_per_prompt: int, device) -> Tensor:
    """[N] the prompt each row of `per_sample` answers: 0, 0, ..., 1, 1, ..."""
    return torch.arange(prompts, device=device).repeat_interleave(samples_per_prompt)


def stop_token_ids(model, tokenizer, settings: SamplingSettings) -> list[int]:
    """What ends a completion: the model's EOS tokens and the settings' stop ids (none with ignore_eos)."""
    return [] if settings.ignore_eos else sorted(set(eos_token_ids(model, tokenizer)) | set(settings.stop_ids))


@dataclass(frozen=True)
class Rollouts:
    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P] 1 on prompt tokens
    completion_ids: Tensor  # [N, L] right-padded with the pad id
    completion_mask: Tensor  # [N, L] 1 on generated tokens, EOS included when emitted
    group_ids: Tensor  # [N] which prompt of the batch each row answers
    truncated: Tensor  # [N] bool: ended by the length limit, not by EOS
    sampled_logps: Tensor | None = None  # [N, L] log pi of each sampled token at temperature 1 (static)
    temperature: Tensor | None = None  # [N] the temperature each row was sampled at (None: 1)
    behaviour_logps: Tensor | None = None  # [N, L] log-prob of each token under the distribution that drew it,
    # the logits divided by the row's temperature (static only; None: compute it, or sampled_logps at 1)
    sampled_tokens: Tensor | None = None  # [N] tokens sampled to produce each row (power samplers: every proposal)
    ess: Tensor | None = None  # [N] effective sample size of the importance weights that chose each row
    resamples: Tensor | None = None  # [N] times the particles of each row were resampled (power-smc)
    ess_trace: Tensor | None = None  # [N, T] their effective sample size at each step, before resampling (power-smc)

    def temperatures(self) -> Tensor:  # [N]
        return self.temperature if self.temperature is not None else torch.ones(len(self), device=self.device)

    @property
    def device(self) -> torch.device:
        return self.completion_ids.device

    @property
    def lengths(self) -> Tensor:  # [N]
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, rows: Tensor | slice) -> "Rollouts":
        return Rollouts(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                           for f in fields(self)})

    @staticmethod
    def concat(parts: list["Rollouts"], pad_id: int, group_ids: Tensor,
               widths: tuple[int, int] | None = None) -> "Rollouts":
        """The rows of `parts` in order, prompts re-padded on the left and completions on the right (to `widths`,
        prompt and completion, when given: at least the parts' own)."""
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        width = max(p.completion_ids.shape[1] for p in parts)
        if widths is not None:
            prompt_width, width = max(prompt_width, widths[0]), max(width, widths[1])

        def cat(name: str, value, left: bool = False):
            tensors = [getattr(p, name) for p in parts]
            target = prompt_width if left else width
            return torch.cat([torch.nn.functional.pad(t, (target - t.shape[1], 0) if left else (0, target - t.shape[1]),
                                                      value=value) for t in tensors])

        def rows(name: str):  # a per-row figure, when every part has it
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        logps = None if parts[0].sampled_logps is None else cat("sampled_logps", 0.0)
        behaviour = None if any(p.behaviour_logps is None for p in parts) else cat("behaviour_logps", 0.0)
        trace = None
        if all(p.ess_trace is not None for p in parts):  # as many steps as the longest part's
            steps = max(p.ess_trace.shape[1] for p in parts)
            trace = torch.cat([torch.nn.functional.pad(p.ess_trace, (0, steps - p.ess_trace.shape[1])) for p in parts])
        return Rollouts(cat("prompt_ids", pad_id, left=True), cat("prompt_mask", 0, left=True),
                        cat("completion_ids", pad_id), cat("completion_mask", 0), group_ids,
                        torch.cat([p.truncated for p in parts]), logps, torch.cat([p.temperatures() for p in parts]),
                        behaviour, rows("sampled_tokens"), rows("ess"), rows("resamples"), trace)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS plus the model's generation EOS list."""
    ids = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    configured = getattr(hf_model(model).generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(ids)


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Token id lists -> ids [N, P], mask [N, P], padded on the left for generation."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def sample_in_batches(sampler, model, tokenizer, prompts: list[list[int]], samples_per_prompt: int,
                      settings: SamplingSettings, batch_size: int, uniforms: Tensor | None = None) -> Rollouts:
    """`sampler` over at most `batch_size` completions per call (0: all in one call, exactly `sampler` itself);
    `uniforms` [N, L] (rows in order) are handed to the calls, each its rows."""
    total = len(prompts) * samples_per_prompt
    if not batch_size or batch_size >= total:
        return sampler(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)
    rows = per_sample(prompts, samples_per_prompt)
    parts = [sampler(model, tokenizer, rows[start:start + batch_size], 1, settings,
                     uniforms=None if uniforms is None else uniforms[start:start + batch_size])
             for start in range(0, total, batch_size)]
    group_ids = group_ids_of(len(prompts), samples_per_prompt, parts[0].group_ids.device)
    return Rollouts.concat(parts, tokenizer.pad_token_id, group_ids)


