"""`--sampler power-resample`: p_base^alpha at inference time by importance resampling.

    settings = SamplingSettings(64, power=PowerSettings(alpha=4.0, candidates=16))
    rollouts = sample_resampled(model, tokenizer, prompts, 4, settings)   # 4 answers per prompt
    rollouts.ess, rollouts.sampled_tokens                                 # [N] per answer: its cost

Each answer is one of N proposals y_1..y_N drawn from q (the loaded model at
the proposal temperature), chosen with probability proportional to
w_i = p_base(y_i)^alpha / q(y_i), q the exact log-prob of what drew each token.
As N grows the answer's distribution tends to p_base^alpha (truncated answers
count with the probability of their prefix); with N = 1 it is plain sampling at
the proposal temperature. It costs N sampled completions per answer; the
effective sample size (sum w)^2 / sum w^2 says how many of them counted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .power import base_logps, by_answer, proposal
from .rollouts import Rollouts, SamplingSettings, group_ids_of
from .static import sample_static


@torch.no_grad()
def sample_resampled(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
                     uniforms: Tensor | None = None) -> Rollouts:
    """G answers per prompt (rows grouped by prompt), each resampled from its own N proposals.  `uniforms` is not
    used (the proposals draw from torch's stream)."""
    if settings.top_p != 1.0 or settings.min_new_tokens:
        raise ValueError("importance resampling needs the exact proposal: no top-p < 1, no min_new_tokens")
    return by_answer(_resample, model, tokenizer, prompts, samples_per_prompt, settings, settings.power.candidates)


def _resample(model, tokenizer, answers: list[list[int]], settings: SamplingSettings) -> Rollouts:
    """One answer for each prompt of `answers` (a prompt per answer)."""
    N, alpha = settings.power.candidates, settings.power.alpha
    candidates = sample_static(model, tokenizer, answers, N, proposal(settings))  # [A * N] rows, N per answer
    mask = candidates.completion_mask
    log_q = (candidates.behaviour_logps * mask).sum(-1)  # [A * N] log q(y), the proposal that drew it
    log_base = (base_logps(model, candidates) * mask).sum(-1)  # [A * N] log p_base(y), adapter off
    weights, ess = importance_weights(log_base.view(-1, N), log_q.view(-1, N), alpha)  # [A, N], [A]
    chosen = torch.multinomial(weights, 1).squeeze(-1)  # [A]
    rows = torch.arange(len(chosen), device=chosen.device) * N + chosen
    picked = candidates.select(rows)
    return Rollouts(picked.prompt_ids, picked.prompt_mask, picked.completion_ids, picked.completion_mask,
                    group_ids_of(len(answers), 1, chosen.device), picked.truncated, picked.sampled_logps,
                    torch.ones(len(answers), device=chosen.device),  # not drawn at a temperature: resampled
                    sampled_tokens=mask.sum(-1).view(-1, N).sum(-1), ess=ess)


def importance_weights(log_base: Tensor, log_q: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """[A, N] sequence log-probs of each answer's N proposals -> their normalised weights w_i ∝ p_base^alpha / q
    [A, N] and the effective sample size (sum w)^2 / sum w^2 [A] (between 1 and N)."""
    weights = torch.softmax(alpha * log_base.double() - log_q.double(), dim=-1)  # float64: sums of many log-probs
    return weights, 1.0 / weights.square().sum(-1)
