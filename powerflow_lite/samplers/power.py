"""What the two power samplers share: the proposal, and the base model's log-probs of what it drew.

Both aim at p_base(y|q)^alpha at inference time, with the loaded model (the base, or base + adapter) at
a proposal temperature (default 1/alpha) as the proposal q: `resample.py` weighs N proposals per answer
by p_base^alpha / q, `mcmc.py` runs block-wise Metropolis-Hastings (Karan & Du). p_base is scored with
the adapter off, on the same weights.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from ..logprobs import score
from .rollouts import Rollouts, SamplingSettings

SCORE_ROWS = 64  # completions scored together with the adapter off


def proposal(settings: SamplingSettings) -> SamplingSettings:
    """The settings the proposal is drawn with: the loaded model at the proposal temperature."""
    return replace(settings, temperature=settings.power.temperature())


def base_logps(model, rollouts: Rollouts) -> Tensor:
    """[N, L] log p_base of each token: the sampler's own temperature-1 log-probs when the loaded model is the base
    itself (no adapter to switch off), else one no-grad pass with the adapter off."""
    if not hasattr(model, "disable_adapter") and rollouts.sampled_logps is not None:
        return rollouts.sampled_logps
    return score(model, rollouts, SCORE_ROWS, adapter=False)[0]
