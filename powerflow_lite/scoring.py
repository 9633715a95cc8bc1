"""Step phase 2, score: what the update needs that stays fixed while it runs.

    batch = score_step(run, taken, notes)   # ScoredBatch: log pi_old, log p_base, psi, features

log pi_old comes from the sampler when it returns it, log p_base from the same
weights with the adapter off (logprobs.py); psi from --format-penalty and
--truncation-penalty. Out of memory, the scoring passes run again in smaller
batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .batch import ScoredBatch
from .faults import halve_on_oom
from .logprobs import score, score_behaviour
from .rewards import format_penalties
from .samplers.rollouts import Rollouts

if TYPE_CHECKING:
    from .rollout import StepRollout
    from .setup import Run


def score_step(run: Run, taken: StepRollout, notes: list[str]) -> ScoredBatch:
    """Everything the update needs that stays fixed while it runs: log pi_old (from the sampler when it returns
    it), log p_base (the same weights, adapter off), the behaviour log-probs, the prompts' features and psi. A
    replayed completion keeps what the buffer stored and needs only log pi_old under today's weights."""
    cfg, rollouts = run.cfg, taken.rollouts
    if taken.stored is None:
        old_logps, behaviour_logps, base_logps, features = _score(run, rollouts, notes)  # 3 x [N, L], [N, H]
    else:
        old_logps = _score(run, rollouts, notes, base=False)[0]  # [N, L]
        behaviour_logps, base_logps, features = (taken.stored.behaviour_logps, taken.stored.base_logps,
                                                 taken.stored.features)
    # psi under this invocation's --format-penalty and --truncation-penalty, replayed completions included
    formats = torch.tensor(format_penalties(run.format_penalty, cfg.format_penalty, taken.texts, taken.prompt_texts),
                           device=run.device)  # [N]
    psi = formats - cfg.truncation_penalty * rollouts.truncated.float()  # [N]
    return ScoredBatch(rollouts, old_logps, base_logps, psi, features, behaviour_logps, formats)


def _score(run: Run, rollouts: Rollouts, notes: list[str], base: bool = True) -> tuple[Tensor, ...]:
    """log pi_old [N, L] (from the sampler when it returns it), and with `base` the behaviour log-probs [N, L]
    (those of the row's sampling temperature), log p_base [N, L] and prompt features [N, H]; out of memory,
    again in smaller batches."""

    def attempt(size: int):
        old = rollouts.sampled_logps  # a sampler that returns log-probs (Sampler.returns_logps) hands it over
        if old is None:
            old, _ = score(run.model, rollouts, size, adapter=True)
        if not base:
            return (old,)
        return (old, score_behaviour(run.model, rollouts, old, size), *score(run.model, rollouts, size, adapter=False))

    return halve_on_oom(attempt, run.state.micro_batch, len(rollouts), 1, "while scoring",
                        "lower --max-new-tokens (scoring holds one micro-batch's logits)", notes)
