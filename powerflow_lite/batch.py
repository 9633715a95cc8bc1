"""A step's scored completions: what the objectives consume and the update iterates over.

    batch = ScoredBatch(rollouts, old_logps, base_logps, psi, features, behaviour_logps, formats)
    for rows in micro_batches(len(batch), size, G):
        part = batch.select(rows)
        loss, stats = objective.loss(policy_logps=..., log_z=..., **part.objective_inputs(), alpha=a, clip_eps=e)

Everything in it is fixed once the completions are scored; only the policy's
log-probs change as the adapter trains, and the update recomputes them from
`rollouts` under grad.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

from .samplers.rollouts import Rollouts


@dataclass(frozen=True)
class ScoredBatch:
    rollouts: Rollouts  # prompt and completion ids and masks, group ids, truncation
    old_logps: Tensor  # [N, L] log-prob of each token under the policy that sampled it (no grad)
    base_logps: Tensor  # [N, L] log p_base, adapter off (no grad)
    psi: Tensor  # [N] psi(y): format penalties minus the truncation penalty
    features: Tensor  # [N, H] the prompt's features for the log Z' head (adapter off, detached)
    behaviour_logps: Tensor  # [N, L] log-prob of each token under the distribution that drew it (no grad)
    formats: Tensor  # [N] the format penalty alone (psi without the truncation penalty): 0 when the format is kept

    @property
    def mask(self) -> Tensor:  # [N, L] 1 on completion tokens
        return self.rollouts.completion_mask

    @property
    def group_ids(self) -> Tensor:  # [N] which prompt of the step each row answers
        return self.rollouts.group_ids

    def __len__(self) -> int:
        return len(self.rollouts)

    def select(self, rows: Tensor | slice) -> "ScoredBatch":
        """The same batch restricted to `rows` (a slice or an index tensor)."""
        return ScoredBatch(**{f.name: getattr(self, f.name).select(rows) if f.name == "rollouts"
                              else getattr(self, f.name)[rows] for f in fields(self)})

    def objective_inputs(self) -> dict[str, Tensor]:
        """The tensors every objective takes besides the policy's log-probs and log Z' (objectives.py)."""
        return dict(old_logps=self.old_logps, base_logps=self.base_logps, mask=self.mask, psi=self.psi,
                    group_ids=self.group_ids)
