"""The training objectives of docs/design.md section 3, as pure functions of tensors.

Every objective takes the same keyword arguments and returns `(loss, stats)`:

    policy_logps  [N, L]  log pi_theta(y_t | q, y_<t), with grad
    old_logps     [N, L]  log pi_old, the policy that sampled y (no grad)
    base_logps    [N, L]  log p_base with the adapter off (no grad)
    mask          [N, L]  1 for completion tokens (EOS included when emitted), 0 for padding
    log_z         [N]     log Z'(q) of each completion's prompt (with grad into the head)
    psi           [N]     format penalty psi(y)
    group_ids     [N]     which prompt each completion came from (the RL baselines use it)
    alpha, clip_eps       floats
    denominator           what the summed loss is divided by; the default makes it the
                          mean of docs/design.md section 3 over this batch. The trainer passes the
                          whole step's count so that micro-batch losses add up to it exactly.

`stats["residual"]` [N] is each completion's mismatch (the quantity that is
zero at the optimum), `stats["weight"]` the clipped importance weight and
`stats["clipped"]` whether clipping changed it.

No model, config or device in the losses: tests check each one against arithmetic
done by hand (tests/test_objectives.py). The registry `OBJECTIVES` at the end
says what each needs (capability flags), and `Objective.check` refuses the
settings an objective cannot train with. The losses use tensor methods only, so
importing this module (the CLI's choices and checks) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import PowerflowError

if TYPE_CHECKING:
    from torch import Tensor


def sequence_sum(logps: Tensor, mask: Tensor) -> Tensor:
    """sum_t logps[n, t] over the completion tokens.  [N, L] -> [N]"""
    return (logps * mask).sum(-1)


def lengths_of(mask: Tensor) -> Tensor:
    """|y| as a float, at least 1 so that length-normalised terms stay finite.  [N, L] -> [N]"""
    return mask.sum(-1).clamp(min=1).float()


def importance_weights(policy_logps: Tensor, old_logps: Tensor, mask: Tensor, clip_eps: float):
    """w = clip(exp((S_pi - S_old) / |y|), 1 - eps, 1 + eps), detached.  -> w [N], clipped [N] bool"""
    log_ratio = (sequence_sum(policy_logps.detach(), mask) - sequence_sum(old_logps, mask)) / lengths_of(mask)
    ratio = log_ratio.exp()  # [N]
    weight = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return weight, weight != ratio


def group_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of `values` over the rows sharing a group id, broadcast back to every row.  [N] -> [N]"""
    _, index = group_ids.unique(return_inverse=True)
    sums = values.new_zeros(int(index.max()) + 1).index_add_(0, index, values)
    counts = index.bincount().to(values.dtype)
    return (sums / counts)[index]


def latb(*, policy_logps, old_logps, base_logps, mask, log_z, psi, group_ids, alpha, clip_eps, denominator=None):
    """Length-aware TB (the paper's Eq. 10): r = log_z + S_pi/|y| - alpha (S_base/|y| + psi)."""
    weight, clipped = importance_weights(policy_logps, old_logps, mask, clip_eps)
    length = lengths_of(mask)  # [N]
    s_pi, s_base = sequence_sum(policy_logps, mask), sequence_sum(base_logps, mask)  # [N], [N]
    residual = log_z + s_pi / length - alpha * (s_base / length + psi)
    loss = (weight * residual.square()).sum() / (denominator or residual.numel())
    return loss, _stats(residual, weight, clipped)


def tb_traj(*, policy_logps, old_logps, base_logps, mask, log_z, psi, group_ids, alpha, clip_eps, denominator=None):
    """Plain trajectory balance: r = log_z + S_pi - alpha (S_base + psi)."""
    weight, clipped = importance_weights(policy_logps, old_logps, mask, clip_eps)
    residual = log_z + sequence_sum(policy_logps, mask) - alpha * (sequence_sum(base_logps, mask) + psi)  # [N]
    loss = (weight * residual.square()).sum() / (denominator or residual.numel())
    return loss, _stats(residual, weight, clipped)


def tb_token(*, policy_logps, old_logps, base_logps, mask, log_z, psi, group_ids, alpha, clip_eps, denominator=None):
    """Per-token balance: r_t = log_z + log pi(y_t) - alpha (log p_base(y_t) + psi/|y|), mean over tokens."""
    weight, clipped = importance_weights(policy_logps, old_logps, mask, clip_eps)
    length = lengths_of(mask)  # [N]
    token_residual = log_z[:, None] + policy_logps - alpha * (base_logps + (psi / length)[:, None])  # [N, L]
    loss = (weight[:, None] * token_residual.square() * mask).sum() / (denominator or mask.sum())
    residual = sequence_sum(token_residual, mask) / length  # [N] mean per-token mismatch, for the logs
    return loss, _stats(residual, weight, clipped)


def rl_traj(*, policy_logps, old_logps, base_logps, mask, log_z, psi, group_ids, alpha, clip_eps, denominator=None):
    """REINFORCE on the reverse KL: R = alpha (S_base + psi) - S_pi, A = R - mean of R over the group."""
    s_pi = sequence_sum(policy_logps, mask)  # [N]
    return _policy_gradient(s_pi, sequence_sum(base_logps, mask) + psi, policy_logps, old_logps, mask,
                            group_ids, alpha, clip_eps, denominator)


def rl_token(*, policy_logps, old_logps, base_logps, mask, log_z, psi, group_ids, alpha, clip_eps, denominator=None):
    """As rl-traj per token: R/|y| = alpha (S_base/|y| + psi) - S_pi/|y|, psi entering per token as in latb."""
    length = lengths_of(mask)  # [N]
    s_pi = sequence_sum(policy_logps, mask) / length  # [N]
    return _policy_gradient(s_pi, sequence_sum(base_logps, mask) / length + psi, policy_logps, old_logps, mask,
                            group_ids, alpha, clip_eps, denominator)


def _policy_gradient(s_pi, log_reward_base, policy_logps, old_logps, mask, group_ids, alpha, clip_eps, denominator):
    weight, clipped = importance_weights(policy_logps, old_logps, mask, clip_eps)
    reward = (alpha * log_reward_base - s_pi).detach()  # [N]
    advantage = reward - group_mean(reward, group_ids)  # [N]
    loss = -(weight * advantage * s_pi).sum() / (denominator or s_pi.numel())
    return loss, _stats(-reward, weight, clipped)


def _stats(residual: Tensor, weight: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    return {"residual": residual.detach(), "weight": weight.detach(), "clipped": clipped.detach()}


@dataclass(frozen=True)
class Objective:
    loss: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    per_token: bool  # the loss is a mean over tokens rather than over completions
    grouped: bool  # needs every completion of a prompt in the same call (group baseline)
    uses_log_z: bool  # trains the log Z'(q) head
    on_policy: bool  # an estimator right only for completions the policy itself sampled at temperature 1

    def check(self, name: str, cfg) -> None:
        """Refuse, in one line, the training settings (a TrainConfig) this objective cannot train with."""
        if self.grouped and cfg.samples_per_prompt < 2:
            raise PowerflowError(f"--objective {name} compares completions of a prompt: needs --samples-per-prompt "
                                 ">= 2")
        if self.on_policy and cfg.replay_steps:
            raise PowerflowError(f"--replay-steps needs a trajectory-balance objective: --objective {name} is an "
                                 "on-policy estimator, right only for completions the current policy sampled")
        if self.on_policy and cfg.explore_temperature != 1.0:
            raise PowerflowError(f"--explore-temperature needs a trajectory-balance objective: --objective {name} is "
                                 "an on-policy estimator, right only for completions the policy samples at "
                                 "temperature 1")


OBJECTIVES: dict[str, Objective] = {
    "latb": Objective(latb, per_token=False, grouped=False, uses_log_z=True, on_policy=False),
    "tb-traj": Objective(tb_traj, per_token=False, grouped=False, uses_log_z=True, on_policy=False),
    "tb-token": Objective(tb_token, per_token=True, grouped=False, uses_log_z=True, on_policy=False),
    "rl-traj": Objective(rl_traj, per_token=False, grouped=True, uses_log_z=False, on_policy=True),
    "rl-token": Objective(rl_token, per_token=False, grouped=True, uses_log_z=False, on_policy=True),
}
