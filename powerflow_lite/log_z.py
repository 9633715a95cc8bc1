"""log Z'(q): the learned head, each prompt's batch estimate, and which the loss uses (docs/design.md section 4).

    log_z = LogPartition(head, objective, mode="batch", z_init="batch", alpha=4.0, clip_eps=0.2)
    before = log_z.before_update(batch, G, initialized)   # start the head, re-centre it on the batch's estimates
    log_z_rows, head_loss = log_z.for_loss(policy_logps, part, len(batch))   # per micro-batch, with grad
    log_z.undo(before)                                    # the update was skipped: the head as it was

The head is a small MLP on the masked mean of the prompt's last hidden states
from the base pass, so it never back-propagates into the LM. Three choices keep
it in step with a fast-moving policy:

1. its output bias starts at the value that zeroes the first batch's mean residual, not at 0;
2. with --log-z batch (the default) the loss uses each prompt's batch estimate and the head regresses on it;
3. each layer's learning rate is --z-lr / sqrt(fan-in): Adam moves every weight by about lr per step,
   so a layer whose gradient signs agree would move its output by lr x fan-in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .batch import ScoredBatch
from .distributed import SINGLE, Ranks
from .errors import PowerflowError
from .objectives import Objective, group_mean

FILENAME = "z_head.safetensors"


class LogZHead(nn.Module):
    """features [B, H] -> log Z'(q) [B]."""

    def __init__(self, hidden_size: int, width: int = 256):
        super().__init__()
        self.hidden_size, self.width = hidden_size, width
        # LayerNorm without parameters: hidden-state scales differ by orders of magnitude between models,
        # and with Adam the head's per-step change in output grows with the size of its inputs.
        self.net = nn.Sequential(nn.LayerNorm(hidden_size, elementwise_affine=False), nn.Linear(hidden_size, width),
                                 nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.output.weight)  # start as a constant: the bias
        nn.init.zeros_(self.output.bias)

    @property
    def output(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.to(self.output.weight.dtype)).squeeze(-1)

    def param_groups(self, z_lr: float) -> list[dict]:
        """Optimizer groups with per-layer learning rates (see module docstring)."""
        first = self.net[1]
        return [
            {"params": [self.output.bias], "lr": z_lr, "weight_decay": 0.0},
            {"params": [first.weight, first.bias], "lr": z_lr / math.sqrt(self.hidden_size), "weight_decay": 0.0},
            {"params": [self.output.weight], "lr": z_lr / math.sqrt(self.width), "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def recenter(self, predicted: Tensor, targets: Tensor) -> None:
        """Shift the output bias so that the head's mean over these prompts, `predicted` [B], becomes the
        mean of `targets` [B] (their batch estimates): --log-z batch and hybrid, every step."""
        self.output.bias.add_((targets.float() - predicted.float()).mean())

    @torch.no_grad()
    def init_bias_from_residuals(self, residual_without_log_z: Tensor) -> None:
        """Set the output bias so that the mean residual of this batch becomes zero."""
        self.output.bias.fill_(-residual_without_log_z.float().mean().item())


def without_log_z(objective: Objective, policy_logps: Tensor, inputs: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective's loss and stats with log Z' = 0: the residuals the start value and the estimates come from."""
    return objective.loss(policy_logps=policy_logps, log_z=torch.zeros_like(inputs["psi"]), **inputs)


def batch_log_z_estimate(objective: Objective, policy_logps: Tensor, inputs: dict,
                         stats: dict[str, Tensor] | None = None) -> Tensor:
    """Each prompt's log Z that minimises the loss over its completions in this batch.  -> [n], no grad

    Every log-Z objective is a weighted sum of squares (c + g)^2 in the constant c = log Z, so
    the minimiser is c* = -sum(w g) / sum(w), over completions (latb, tb-traj) or over tokens (tb-token).
    With it in the loss, the loss is the group's weighted variance of the residual (the log-variance,
    or VarGrad, form of trajectory balance): the same fixed point, and no head to wait for.
    `stats`: those of `without_log_z` on the same inputs, when the caller has them.
    """
    stats = stats or without_log_z(objective, policy_logps, inputs)[1]
    free = stats["residual"]  # [n] the residual without log Z (per-token mean for tb-token)
    weight = stats["weight"] * (inputs["mask"].sum(-1).clamp(min=1) if objective.per_token else 1.0)  # [n]
    return -group_mean(weight * free, inputs["group_ids"]) / group_mean(weight, inputs["group_ids"])


@dataclass(frozen=True)
class Before:
    """log Z' at the start of a step, before the update."""

    estimates: Tensor | None  # [B] each prompt's batch estimate (None without log Z or with one sample per prompt)
    head: Tensor  # [B] the head's values, before any re-centring
    bias: Tensor  # the head's output bias before this step touched it
    initialized: bool  # whether the head had been started before this step
    started: bool  # whether it has been started now (TrainState.z_initialized once the step applies)


@dataclass
class LogPartition:
    """The owner of log Z'(q): which value the loss uses (`mode`, --log-z) and the head's training."""

    head: LogZHead
    objective: Objective
    mode: str  # batch: each prompt's batch estimate; head: the head; hybrid: the head, re-centred every step
    z_init: str  # batch: the head starts at the first finite batch's value; zero: at 0
    alpha: float
    clip_eps: float
    ranks: Ranks = SINGLE  # under a launcher, the start and the re-centring use every rank's rows

    @property
    def from_batch(self) -> bool:
        """The loss uses each prompt's batch estimate, so a micro-batch must hold whole groups."""
        return self.objective.uses_log_z and self.mode == "batch"

    def estimate(self, policy_logps: Tensor, batch: ScoredBatch) -> Tensor:
        """Each row's prompt's batch estimate.  [N, L] -> [N], no grad"""
        return batch_log_z_estimate(self.objective, policy_logps, self._inputs(batch))

    def before_update(self, batch: ScoredBatch, group_size: int, initialized: bool) -> Before:
        """Start the head on the first finite batch (unless it is `initialized`: TrainState.z_initialized); with
        --log-z batch or hybrid, re-centre it on the estimates."""
        starting = self.objective.uses_log_z and not initialized and self.z_init == "batch"
        estimating = self.objective.uses_log_z and group_size >= 2
        start_loss, stats = (without_log_z(self.objective, batch.old_logps, self._inputs(batch))
                             if starting or estimating else (None, None))  # one objective call serves both
        estimates = (batch_log_z_estimate(self.objective, batch.old_logps, self._inputs(batch), stats)[::group_size]
                     if estimating else None)  # [B]
        bias, started = self.head.output.bias.detach().clone(), initialized
        if self.objective.uses_log_z and not initialized:
            if self.z_init == "batch":
                if not self.ranks.any(not bool(torch.isfinite(start_loss))):  # else this step is skipped, and a
                    self.head.init_bias_from_residuals(self.ranks.cat_tensor(stats["residual"]))  # later batch sets it
                    started = True
            else:
                started = True
        with torch.no_grad():
            head = self.head(batch.features[::group_size])  # [B]
        # with batch the head is a regression on the estimates; re-centred, it keeps up with the policy too
        if self.mode != "head" and estimates is not None:
            every = self.ranks.cat_tensor(estimates)  # [B] of the whole step
            if bool(torch.isfinite(every).all()):
                self.head.recenter(self.ranks.cat_tensor(head), every)
        return Before(estimates, head, bias, initialized, started)

    def undo(self, before: Before) -> None:
        """No update was applied this step: take back the start and the re-centring (the head stays as started as it
        was: before.initialized)."""
        self.head.output.bias.data.copy_(before.bias)

    def for_loss(self, policy_logps: Tensor, part: ScoredBatch, total_rows: int) -> tuple[Tensor, Tensor | float]:
        """log Z' of each row of a micro-batch [n] for the loss, and the head's own loss on it (to add).

        With --log-z batch the loss uses the rows' batch estimates (whole groups are in the micro-batch)
        and the head regresses on them, its squared error summed over the step's `total_rows`."""
        log_z = self.head(part.features)  # [n]
        if not self.from_batch:
            return log_z, 0.0
        target = self.estimate(policy_logps.detach(), part)  # [n]
        return target, (log_z - target).square().sum() / total_rows

    def values(self, batch: ScoredBatch, group_size: int) -> list[float]:
        """The head's log Z'(q), one value per prompt of the step."""
        with torch.no_grad():
            return self.head(batch.features[::group_size]).tolist()

    def _inputs(self, batch: ScoredBatch) -> dict:
        return dict(batch.objective_inputs(), alpha=self.alpha, clip_eps=self.clip_eps)


def save_head(head: LogZHead, directory: str | Path) -> None:
    metadata = {"format": "pt", "config": json.dumps({"hidden_size": head.hidden_size, "width": head.width})}
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(Path(directory) / FILENAME), metadata=metadata)


def load_head(directory: str | Path, device: torch.device | str = "cpu") -> LogZHead:
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise PowerflowError(f"{str(path)!r} not found: the checkpoint has no log Z head")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    head = LogZHead(config["hidden_size"], config["width"])
    head.load_state_dict(load_file(str(path)))
    return head.to(device)
