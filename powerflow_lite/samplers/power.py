"""What the power samplers share: the proposal, the base model's log-probs of what it drew, answers in calls.

Both aim at p_base(y|q)^alpha at inference time, with the loaded model (the base, or base + adapter) at
a proposal temperature (default 1/alpha) as the proposal q: `resample.py` weighs N proposals per answer
by p_base^alpha / q, `mcmc.py` runs block-wise Metropolis-Hastings (Karan & Du). p_base is scored with
the adapter off, on the same weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import Tensor

from ..logprobs import score
from .rollouts import Rollouts, SamplingSettings, group_ids_of, per_sample

SCORE_ROWS = 64  # completions scored together with the adapter off
ROWS_PER_CALL = 256  # completions (proposals, particles) decoded together


def by_answer(answer: Callable[..., Rollouts], model, tokenizer, prompts: list[list[int]], samples_per_prompt: int,
              settings: SamplingSettings, per_answer: int) -> Rollouts:
    """G answers per prompt (rows grouped by prompt), `answer(model, tokenizer, prompts, settings)` giving one
    answer per prompt it is given, each of which decodes `per_answer` completions: as many answers per call as
    ROWS_PER_CALL completions allow."""
    answers = per_sample(prompts, samples_per_prompt)  # one row per answer
    per_call = max(1, ROWS_PER_CALL // per_answer)
    parts = [answer(model, tokenizer, answers[first:first + per_call], settings)
             for first in range(0, len(answers), per_call)]
    return Rollouts.concat(parts, tokenizer.pad_token_id,
                           group_ids_of(len(prompts), samples_per_prompt, parts[0].device))


def proposal(settings: SamplingSettings) -> SamplingSettings:
    """The settings the proposal is drawn with: the loaded model at the proposal temperature."""
    return replace(settings, temperature=settings.power.temperature())


def base_logps(model, rollouts: Rollouts) -> Tensor:
    """[N, L] log p_base of each token: the sampler's own temperature-1 log-probs when the loaded model is the base
    itself (no adapter to switch off), else one no-grad pass with the adapter off."""
    if not hasattr(model, "disable_adapter") and rollouts.sampled_logps is not None:
        return rollouts.sampled_logps
    return score(model, rollouts, SCORE_ROWS, adapter=False)[0]
