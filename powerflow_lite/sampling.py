"""Rollouts: G completions per prompt from the policy, by pure ancestral sampling.

`sample()` wraps Hugging Face `generate` (`--sampler hf`); `engine.sample_static` is
the other sampler (`--sampler static`); both return `Rollouts`, and the trainer,
`powerflow sample` and `powerflow eval` pick one through `engine.SAMPLERS`.

The maths assumes the behaviour policy is the model itself at temperature 1, so
we hand `generate` a configuration in which nothing reshapes the distribution:
the model's own `generation_config.json` (top_k=20, repetition penalties, ...)
is swapped out for the call, and `top_k=0` overrides the library's global
default of 50.

    rollouts = sample(model, tokenizer, [ids_q1, ids_q2], samples_per_prompt=4,
                      settings=SamplingSettings(max_new_tokens=128))
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .model import eval_mode, hf_model


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = False  # never stop at EOS: every completion is max_new_tokens long, EOS scored as any token
    stop_ids: tuple[int, ...] = ()  # more ids that end a completion, e.g. the chat template's end of turn

    @staticmethod
    def from_config(cfg, tokenizer) -> "SamplingSettings":
        """A command's sampling options (those its config lacks take the defaults above), also stopping at the
        chat template's end-of-turn token."""
        from .data import chat_stop_ids

        return SamplingSettings(cfg.max_new_tokens, getattr(cfg, "min_new_tokens", 0), getattr(cfg, "temperature", 1.0),
                                getattr(cfg, "top_p", 1.0), getattr(cfg, "ignore_eos", False),
                                tuple(chat_stop_ids(tokenizer, cfg.chat_template)))


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
    sampled_logps: Tensor | None = None  # [N, L] log pi of each sampled token at temperature 1 (engine.py only)
    temperature: Tensor | None = None  # [N] the temperature each row was sampled at (None: 1)
    behaviour_logps: Tensor | None = None  # [N, L] log-prob of each token under the distribution that drew it,
    # the logits divided by the row's temperature (engine.py only; None: compute it, or sampled_logps at 1)

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

        logps = None if parts[0].sampled_logps is None else cat("sampled_logps", 0.0)
        behaviour = None if any(p.behaviour_logps is None for p in parts) else cat("behaviour_logps", 0.0)
        return Rollouts(cat("prompt_ids", pad_id, left=True), cat("prompt_mask", 0, left=True),
                        cat("completion_ids", pad_id), cat("completion_mask", 0), group_ids,
                        torch.cat([p.truncated for p in parts]), logps, torch.cat([p.temperatures() for p in parts]),
                        behaviour)


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


def sample(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
           uniforms: Tensor | None = None) -> Rollouts:
    """G = samples_per_prompt completions for each prompt (rows grouped by prompt), adapter as it is set.
    `generate` draws from torch's own stream: `uniforms` (engine.sample_static's) is not used."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(per_sample(prompts, samples_per_prompt), tokenizer.pad_token_id, device)
    stop_ids = stop_token_ids(model, tokenizer, settings)
    generation_config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=0,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens or None,
        eos_token_id=stop_ids,  # an empty list, not None: None would fall back to the model's EOS
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    with eval_mode(model), _neutral_generation_config(model):
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config)
    completion_ids = output[:, prompt_ids.shape[1]:]  # [N, L]
    completion_mask, truncated = _completion_mask(completion_ids, stop_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    group_ids = group_ids_of(len(prompts), samples_per_prompt, device)
    temperature = torch.full((len(completion_ids),), settings.temperature, device=device)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, group_ids, truncated,
                    temperature=temperature)


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


def _completion_mask(completion_ids: Tensor, stop_ids: list[int]) -> tuple[Tensor, Tensor]:
    """1 up to and including the first stop token; rows without one run to the end (truncated)."""
    length = completion_ids.shape[1]
    if not stop_ids:
        full = torch.ones_like(completion_ids)
        return full, torch.ones(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))  # [N, L]
    stopped = is_stop.any(-1)  # [N]
    first_stop = is_stop.int().argmax(-1)  # [N], 0 where there is none
    lengths = torch.where(stopped, first_stop + 1, torch.full_like(first_stop, length))  # [N]
    positions = torch.arange(length, device=completion_ids.device)
    return (positions[None, :] < lengths[:, None]).long(), ~stopped


@contextmanager
def _neutral_generation_config(model):
    """Hide the model's own generation defaults (top_k, penalties, ...) for the duration of a call."""
    from transformers import GenerationConfig

    inner = hf_model(model)
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved
