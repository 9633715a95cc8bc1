"""Step phase 3, update: log Z' before the update, then K epochs of gradient accumulation and an optimizer step.

    update = update_policy(run, batch, notes)   # Update: losses, residuals, grad norm, whether it was skipped

The micro-batch losses are divided by the whole step's count (its rows, or its
tokens for a per-token objective), so they add up to the step's loss and the
update does not depend on --micro-batch-size. A micro-batch holds whole groups
when the objective or log Z' compares a prompt's completions. A non-finite loss
or gradient skips the epoch and the ones after it (docs/design.md section 11).

The first epoch recomputes log pi under the weights that gave log pi_old, so
its gap to log pi_old measures only the numerics (kernels, batch shapes, dtype)
and LoRA dropout: it is logged every step and said once when it is large.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .batch import ScoredBatch
from .faults import halve_on_oom
from .log_z import Before
from .logprobs import completion_logprobs
from .model import trainable_parameters

if TYPE_CHECKING:
    from .distributed import Ranks
    from .setup import Run

# Mean |log pi - log pi_old| per token (nats) above which a step says so once: every importance ratio is then off by
# about exp(0.05) - 1 = 5% a token. A float32 CPU run's gap is ~1e-7; bf16/NF4 GPU kernels are expected to stay well
# below 0.01 (an expectation, not a measurement: docs/training-guide.md#log-prob-parity).
LOGP_GAP_WARN = 0.05


@dataclass
class Update:
    log_z_before: Before  # log Z' at the start of the step (the batch estimates and the head's values)
    losses: list[float]  # one per inner epoch run
    residuals: list[float]  # of the last epoch applied
    clipped: list[float]  # of every epoch applied
    grad_norm: float  # of the last epoch run (nan when its loss was not finite)
    skipped: bool  # an epoch's loss or gradient was not finite: it and the epochs after it were not applied
    logp_gap_mean: float = math.nan  # mean |log pi - log pi_old| per completion token in the first epoch (nats)
    logp_gap_max: float = math.nan  # its largest value


def micro_batches(n: int, size: int, group_size: int) -> list[slice]:
    """Consecutive row slices of at most `size` rows (a multiple of `group_size`: whole groups stay together)."""
    size = max(1, size // group_size) * group_size
    return [slice(start, start + size) for start in range(0, n, size)]


def logp_gap(policy_logps: Tensor, old_logps: Tensor, mask: Tensor) -> Tensor:
    """[3]: the sum of |log pi - log pi_old| over the completion tokens, their count, and the largest gap.

    A tensor, so that a step's micro-batches add up on the device and cost one transfer (`combine_gaps`)."""
    gap = torch.where(mask.bool(), (policy_logps.detach() - old_logps).abs(), 0.0)  # [n, L], 0 on padding
    return torch.stack([gap.sum(), mask.sum().to(gap.dtype), gap.max()])  # [3]


def combine_gaps(gaps: list[Tensor], ranks: Ranks) -> tuple[float, float]:
    """The micro-batches' `logp_gap`s (under a launcher, every process's) -> (mean per token, max); nan without
    tokens."""
    if not gaps:
        total, count, worst = 0.0, 0.0, 0.0
    else:
        each = torch.stack(gaps)  # [micro-batches, 3]
        total, count, worst = torch.stack([each[:, 0].sum(), each[:, 1].sum(), each[:, 2].max()]).tolist()
    total, count, worst = ranks.sum(total), ranks.sum(count), ranks.max(worst)
    return (total / count, worst) if count else (math.nan, math.nan)


def gap_note(mean: float, worst: float, lora_dropout: float, sampler: str) -> str:
    """What a large log-prob gap means, and what to try (said once per invocation; logp_gap_mean has every step's)."""
    said = (f"log pi in the update differs from log pi_old by {mean:.3f} nats/token on average (max {worst:.2f}) "
            "before any optimizer step, so every importance ratio is biased")
    if lora_dropout > 0:
        return f"{said}: expected with --lora-dropout {lora_dropout} (on in the update only); 0 removes it"
    if sampler != "hf":
        return (f"{said}: the {sampler} sampler's kernels and the update's disagree; compare --sampler hf, whose "
                "log pi_old comes from a forward pass like the update's (see logp_gap_mean)")
    return (f"{said}: the scoring pass and the update's forward pass disagree (dtype, batch shapes); compare "
            "--quant none (see logp_gap_mean)")


def update_policy(run: Run, batch: ScoredBatch, notes: list[str], lr_scale: float = 1.0) -> Update:
    """Start or re-centre log Z' on the batch, then run the epochs; a step that applied nothing takes the log Z'
    changes back. `lr_scale` multiplies the learning rates of its optimizer steps (--replay-lr-scale)."""
    state = run.state
    before = run.log_z.before_update(batch, run.cfg.samples_per_prompt, state.z_initialized)
    update = _epochs(run, batch, notes, lr_scale, before)
    if update.logp_gap_mean > LOGP_GAP_WARN and not state.warned_logp_gap:  # once per invocation
        state.warned_logp_gap = True
        notes.append(gap_note(update.logp_gap_mean, update.logp_gap_max, run.cfg.lora_dropout, run.info.sampler))
    if update.skipped and len(update.losses) == 1:  # not even a first epoch applied: nor is the re-centring
        run.log_z.undo(before)
    else:
        state.z_initialized = before.started
    state.bad_steps_in_row = state.bad_steps_in_row + 1 if update.skipped else 0
    return update


def _epochs(run: Run, batch: ScoredBatch, notes: list[str], lr_scale: float, before: Before) -> Update:
    """K epochs of gradient accumulation and an optimizer step each; the schedule advances K steps regardless."""
    cfg, objective, ranks = run.cfg, run.objective, run.ranks
    group = cfg.micro_batch_group  # the smallest micro-batch
    lora_params = trainable_parameters(run.model)
    # the whole step's counts (under a launcher, every process's rows): the gradients then add up to the step's
    step_rows = ranks.sum(len(batch))
    denominator = ranks.sum(float(batch.mask.sum())) if objective.per_token else float(step_rows)
    update = Update(before, [], [], [], float("nan"), False)

    def accumulate(size: int, first: bool) -> tuple[float, list[float] | None, list[float], list[Tensor]]:
        """One epoch's gradients: (loss, residuals, clipped, gaps); residuals None once the loss is not finite; in
        the `first` epoch gaps holds each micro-batch's `logp_gap` (an attempt after out-of-memory starts anew)."""
        run.optimizer.zero_grad(set_to_none=True)
        total, residuals, clipped, gaps = 0.0, [], [], []
        for rows in micro_batches(len(batch), size, group):
            part = batch.select(rows)
            policy_logps, _ = completion_logprobs(run.model, part.rollouts)  # [n, L] with grad
            if first:  # the weights that gave log pi_old: what differs is the numerics (and LoRA dropout)
                gaps.append(logp_gap(policy_logps, part.old_logps, part.mask))
            log_z, head_loss = run.log_z.for_loss(policy_logps, part, step_rows)  # [n], scalar
            loss, stats = objective.loss(policy_logps=policy_logps, log_z=log_z, denominator=denominator,
                                         alpha=cfg.alpha, clip_eps=cfg.clip_eps, **part.objective_inputs())
            if not torch.isfinite(loss + head_loss):
                return (loss + head_loss).item(), None, clipped, gaps
            (loss + head_loss).backward()
            total += loss.item()
            residuals += stats["residual"].tolist()
            clipped += stats["clipped"].tolist()
        return total, residuals, clipped, gaps

    hint = "lower --max-new-tokens" + ("" if cfg.gradient_checkpointing else ", or turn --gradient-checkpointing on")
    run.model.train()
    for epoch in range(cfg.inner_epochs):
        loss, residuals, clipped, gaps = halve_on_oom(partial(accumulate, first=epoch == 0), run.state.micro_batch,
                                                      len(batch), group, "in the update", hint, notes)
        update.losses.append(loss)
        if epoch == 0:
            update.logp_gap_mean, update.logp_gap_max = combine_gaps(gaps, ranks)
        if ranks.any(residuals is None):  # a loss was not finite (under a launcher: on any process): not applied
            residuals = None
        else:  # under a launcher, the processes' gradients added up: one all-reduce per optimizer step
            ranks.sum_gradients(lora_params + (list(run.head.parameters()) if objective.uses_log_z else []))
        if residuals is not None:
            update.grad_norm = float(torch.nn.utils.clip_grad_norm_(lora_params, cfg.max_grad_norm or float("inf")))
        if residuals is None or not (math.isfinite(update.grad_norm) and _finite_grads(run.head)):
            update.skipped = True
            run.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # torch warns when a schedule steps before any optimizer step
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(epoch, cfg.inner_epochs):
                    run.scheduler.step()
            break
        scheduled = [param_group["lr"] for param_group in run.optimizer.param_groups]
        for param_group in run.optimizer.param_groups:
            param_group["lr"] *= lr_scale
        run.optimizer.step()
        for param_group, lr in zip(run.optimizer.param_groups, scheduled):
            param_group["lr"] = lr
        run.scheduler.step()
        update.residuals, update.clipped = residuals, update.clipped + clipped
    # Sampling and scoring run in eval mode (eval_mode() skips the switch when there is nothing to switch):
    # back to it now rather than walking every module twice more per step.
    run.model.eval()
    return update


def _finite_grads(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
