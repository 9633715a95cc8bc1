"""Step phase 1, rollout: G completions per prompt from the policy or, on a replay step, from the buffer.

    taken = take(run, step, notes)          # StepRollout: the rollouts, their prompts and texts
    remember(run, batch, taken, step)       # after scoring: a fresh step's completions into the replay buffer

A fresh step samples its prompts (seeds.prompt_indices) at temperature 1, the
last --explore-fraction of each prompt's completions at --explore-temperature.
With --replay-steps K, K replay steps follow each fresh one: each draws up to
--prompts-per-step prompts from the buffer and G stored completions of each,
and needs no sampling (docs/design.md section 12).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .errors import PowerflowError
from .faults import halve_on_oom
from .replay import Stored, replay_batch
from .samplers import SAMPLERS
from .samplers.rollouts import Rollouts, group_ids_of, sample_in_batches
from .seeds import prompt_indices, seed_step, step_generator, step_uniforms, weighted_prompt_indices

if TYPE_CHECKING:
    from .batch import ScoredBatch
    from .setup import Run


@dataclass(frozen=True)
class StepRollout:
    rollouts: Rollouts  # [N] rows, the G completions of each prompt together
    prompts: list[int]  # prompts[g]: the prompt (an index into run.prompts) that group g answers
    texts: list[str]  # [N] the completions, decoded
    prompt_texts: list[str]  # [N] each row's prompt
    stored: Stored | None = None  # on a replay step, what the buffer kept of each row

    @property
    def replayed(self) -> bool:
        return self.stored is not None


def take(run: Run, step: int, notes: list[str]) -> StepRollout:
    """The step's completions; `notes` collects what the user should read once (a batch halved)."""
    cfg = run.cfg
    seed_step(cfg.seed, step, run.ranks.rank)  # dropout masks and generate's draws: a function of (seed, step)
    generator = step_generator(cfg.seed, step)  # a replay step's choice of prompts and completions
    prompts = _replay_prompts(run, step, generator)
    stored = None
    if prompts is None:
        prompts, rollouts = _fresh(run, step, notes)
    else:
        entries = [entry for prompt in prompts
                   for entry in run.state.replay.draw(prompt, cfg.samples_per_prompt, generator)]
        rollouts, stored = replay_batch(entries, run.prompt_ids, cfg.samples_per_prompt, run.tokenizer.pad_token_id,
                                        run.device)
    texts = run.tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    prompt_texts = [run.prompts[prompts[g]]["prompt"] for g in rollouts.group_ids.tolist()]
    return StepRollout(rollouts, prompts, texts, prompt_texts, stored)


def remember(run: Run, batch: ScoredBatch, taken: StepRollout, step: int) -> None:
    """With --replay-steps, a fresh step's scored completions go into the buffer."""
    if run.state.replay is not None and not taken.replayed:
        run.state.replay.add(batch, taken.prompts, step + 1, run.cfg.alpha)


def _fresh(run: Run, step: int, notes: list[str]) -> tuple[list[int], Rollouts]:
    """The step's prompts (under a launcher, this process's share of them) and their sampled completions."""
    cfg = run.cfg
    weights = run.prompts.weights  # a mixture of --prompts sources (data.Prompts); None: one source
    every = (prompt_indices(len(run.prompts), run.state.fresh_steps, cfg.prompts_per_step, cfg.seed) if weights is None
             else weighted_prompt_indices(weights, run.state.fresh_steps, cfg.prompts_per_step, cfg.seed))
    share = run.ranks.share(every)  # all of them in one process
    rollouts = _sample(run, [run.prompt_ids[i] for i in every[share]], step, notes, share.start, len(every))
    rollouts = run.ranks.pad_to_step(rollouts, max(len(run.prompt_ids[i]) for i in every), run.tokenizer.pad_token_id)
    run.state.fresh_steps += 1
    return every[share], rollouts


def _replay_prompts(run: Run, step: int, generator: torch.Generator) -> list[int] | None:
    """The prompts a replay step draws from the buffer, or None for a fresh step.

    With --replay-steps K, K steps replay after each fresh one (the first step is fresh); a replay step takes
    up to --prompts-per-step prompts, chosen at random (a function of (seed, step)) among those with at least
    two completions stored (a prompt with fewer than G distinct ones repeats them) and, with --replay-window N,
    sampled in the last N steps."""
    K, replay = run.cfg.replay_steps, run.state.replay
    if replay is None or step % (K + 1) == 0:
        return None
    ready = replay.ready(min(2, run.cfg.samples_per_prompt), step)
    if not ready:
        return None
    order = torch.randperm(len(ready), generator=generator)[:run.cfg.prompts_per_step]
    return [ready[i] for i in order.tolist()]


def _sample(run: Run, prompts: list[list[int]], step: int, notes: list[str], first: int = 0,
            step_prompts: int | None = None) -> Rollouts:
    """G completions per prompt, the last --explore-fraction of each prompt's at --explore-temperature; out of
    memory, again with half as many per sampling call. `prompts` are the step's `step_prompts` from its `first`
    on (a rank's share; default all): a seeded-rows sampler draws row i of the step from uniforms fixed by
    (seed, step, i), whichever process samples it."""
    cfg, settings = run.cfg, run.sampling
    sampler = SAMPLERS[cfg.sampler]
    G, explored = cfg.samples_per_prompt, cfg.explored_per_prompt
    total = len(prompts) * G
    shares = [(settings, G - explored), (replace(settings, temperature=cfg.explore_temperature), explored)]
    shares = [(stream, share, count) for stream, (share, count) in enumerate(shares) if count]

    def draws(stream: int, count: int):
        """The uniforms of this process's rows of one share, or None (the sampler draws from torch's stream)."""
        if not sampler.seeded_rows:
            return None
        every = step_uniforms(cfg.seed, step, stream, (step_prompts or len(prompts)) * count, settings.max_new_tokens,
                              run.device)
        return every[first * count:(first + len(prompts)) * count]

    def attempt(size: int) -> Rollouts:
        seed_step(cfg.seed, step, run.ranks.rank)  # a retry draws as a first attempt with that batch size would
        try:
            parts = [sample_in_batches(sampler.sample, run.model, run.tokenizer, prompts, count, share, size,
                                       draws(stream, count))
                     for stream, share, count in shares]
        except RuntimeError as err:
            if "probability tensor contains" not in str(err):
                raise
            raise PowerflowError(f"the policy's probabilities are not finite at step {step + 1} (the adapter's "
                                 "weights overflow): lower --lr, or use a GPU with bf16 rather than fp16; "
                                 "resume from an earlier checkpoint") from None
        if len(parts) == 1:
            return parts[0]
        # each prompt's G rows together: its G - m at temperature 1, then its m explored ones
        group_ids = group_ids_of(len(prompts), G, parts[0].device)
        order = torch.cat([torch.arange(len(prompts))[:, None] * (G - explored) + torch.arange(G - explored),
                           len(prompts) * (G - explored) + torch.arange(len(prompts))[:, None] * explored
                           + torch.arange(explored)], dim=1).flatten()
        merged = Rollouts.concat(parts, run.tokenizer.pad_token_id, group_ids)
        return replace(merged.select(order.to(merged.device)), group_ids=group_ids)

    return halve_on_oom(attempt, run.state.sample_batch, total, 1, "while sampling",
                        "lower --samples-per-prompt, --prompts-per-step or --max-new-tokens", notes)
