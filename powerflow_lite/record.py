"""Step phase 4, record: the metrics row, evaluations, checkpoints, the final adapter; and the step's clock.

    clock = StepClock(run.device)                          # at the start of a step: peak memory reset
    row = metrics_row(run, step, batch, update, replayed, clock)
    if evaluates_after(run, step + 1): row.update(evaluate_policy(run, step + 1, notes))
    saved = save(run)                                      # OUT/checkpoint-N, N = run.state.step
    finish(run)                                            # OUT/adapter, and the before/after table

Under a launcher a metrics row covers every process's rows, in rank order, with
token counts added and times and memory the slowest process's: R processes
write the row one process writes. Rank 0 alone writes files.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from . import checkpoint as ckpt
from .batch import ScoredBatch
from .errors import PowerflowError
from .evaluate import EVALS, before_after, training_metrics, write_training_eval
from .faults import BatchSize
from .metrics import mean, peak_rss_gib, reset_peak_rss, std
from .samplers.rollouts import SamplingSettings

if TYPE_CHECKING:
    from .rollout import StepRollout
    from .setup import Run
    from .update import Update

# completions an evaluation samples together on the CPU, where a batch costs less than its rows
# (docs/experiments/README.md, why the defaults)
CPU_EVAL_ROWS = 128


class StepClock:
    """Seconds per phase of a step, and its peak memory (reset when the clock starts)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            reset_peak_rss()
        self.last = time.perf_counter()
        self.laps: list[float] = []  # sample, score, update

    def lap(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.laps.append(now - self.last)
        self.last = now

    def peak_memory(self) -> tuple[str, float]:
        """The metrics key and GiB: GPU memory allocated, or the process's resident memory on the CPU."""
        if self.device.type == "cuda":
            return "peak_gpu_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30
        return "peak_rss_gib", peak_rss_gib()


def metrics_row(run: Run, step: int, batch: ScoredBatch, update: Update, replayed: bool, clock: StepClock) -> dict:
    """The step's metrics.jsonl row (metrics.METRICS says what each key means)."""
    cfg, ranks, G = run.cfg, run.ranks, run.cfg.samples_per_prompt
    mask, before = batch.mask, update.log_z_before
    tokens = mask.sum(-1)  # [N]
    per_row = ranks.concat_columns({  # the step's rows (under a launcher, every process's in rank order)
        "lengths": tokens.tolist(),
        "truncated": batch.rollouts.truncated.float().tolist(),
        "format_ok": (batch.formats >= 0).float().tolist(),
        "psi": batch.psi.tolist(),
        "old": (batch.old_logps * mask).sum(-1).tolist(),
        "base": (batch.base_logps * mask).sum(-1).tolist(),
        "behaviour": (batch.behaviour_logps * mask).sum(-1).tolist(),
        "explored": (batch.rollouts.temperatures() == cfg.explore_temperature).float().tolist(),
        "residuals": update.residuals,
        "clipped": update.clipped,
        "log_z": run.log_z.values(batch, G),  # one value per prompt
        "estimates": [] if before.estimates is None else before.estimates.tolist(),
        "head": before.head.tolist(),
    })
    losses = ranks.elementwise(update.losses, sum)  # the processes' parts of each epoch's loss add up
    time_sample, time_score, time_update = ranks.elementwise(clock.laps, max)
    lengths, count = per_row["lengths"], sum(per_row["lengths"])
    estimates, head = per_row["estimates"], per_row["head"]
    row = {
        "step": step + 1,
        "loss": mean(losses),
        "log_z_mean": mean(per_row["log_z"]),
        "log_z_std": std(per_row["log_z"]),
        "log_z_batch_mean": mean(estimates) if estimates else float("nan"),
        "log_z_gap": mean([h - e for h, e in zip(head, estimates)]) if estimates else float("nan"),
        "residual_mean": mean(per_row["residuals"]),
        "residual_std": std(per_row["residuals"]),
        "length_mean": mean(lengths),
        "length_min": min(lengths),
        "length_max": max(lengths),
        "truncated_frac": mean(per_row["truncated"]),
        "format_frac": mean(per_row["format_ok"]),
        "psi_mean": mean(per_row["psi"]),
        "policy_logp_per_token": sum(per_row["old"]) / count,
        "base_logp_per_token": sum(per_row["base"]) / count,
        "clip_frac": mean(per_row["clipped"]),
        "logp_gap_mean": update.logp_gap_mean,  # every process's tokens already (update.combine_gaps)
        "logp_gap_max": update.logp_gap_max,
        "grad_norm": update.grad_norm,
        "update_skipped": int(update.skipped),
        "lr": run.scheduler.get_last_lr()[0],
        "sampled_tokens": 0 if replayed else count,
        "sample_tokens_per_s": float("nan") if replayed else count / max(time_sample, 1e-9),
        "time_sample": time_sample,
        "time_score": time_score,
        "time_update": time_update,
    }
    if run.state.replay is not None:
        row["replayed"] = int(replayed)
    if run.state.replay is not None or cfg.explored_per_prompt:
        row["explored_frac"] = mean(per_row["explored"]) if cfg.explored_per_prompt else 0.0
        # mean over tokens of log pi(y_t) - log b(y_t): 0 on-policy; its negation estimates KL(b || pi) per token
        row["behaviour_log_ratio"] = (sum(per_row["old"]) - sum(per_row["behaviour"])) / count
    key, gib = clock.peak_memory()
    row[key] = ranks.max(gib)
    row.update(run.estimate)  # on a GPU the card table has: the estimate beside the measured time_* (probe.py)
    return row


def eval_batch(cfg, sample_batch_size: int, device: str) -> int:
    """Completions an evaluation during training samples together: --sample-batch-size (as halved), else a step's
    prompts x samples; on the CPU at least CPU_EVAL_ROWS."""
    rows = sample_batch_size or cfg.prompts_per_step * cfg.samples_per_prompt
    return max(rows, CPU_EVAL_ROWS) if device == "cpu" else rows


@contextmanager
def eval_sizes(run: Run) -> Iterator[tuple[BatchSize, int]]:
    """The evaluation's sampling batch (eval_batch) and the rows it scores together (--micro-batch-size; on the
    CPU the whole batch, which costs less there than its rows). Halved after running out of memory, the batch
    did not fit where a step's sampling call must either: training's sampling starts there too."""
    state = run.state
    rows = eval_batch(run.cfg, state.sample_batch.value, run.device.type)
    size = BatchSize(state.sample_batch.flag, rows)
    yield size, rows if run.device.type == "cpu" else state.micro_batch.value
    if size.value < rows:
        state.sample_batch.value = min(state.sample_batch.value or size.value, size.value)


def evaluates_after(run: Run, done: int) -> bool:
    """Whether the step that completes `done` steps ends with an evaluation (every --eval-every, and the last)."""
    return bool(run.evals) and (done % run.cfg.eval_every == 0 or done == run.cfg.max_steps)


def eval_before_training(run: Run, notes: list[str]) -> dict:
    """The eval at step 0, where the curves start: the base model itself (a fresh adapter changes nothing); with
    --eval-tempered also the base at --eval-temperature (default 1/alpha), for the before/after table (not a
    metrics row)."""
    row = {"step": 0, **evaluate_policy(run, 0, notes)}
    run.metrics.write(row)
    if run.cfg.eval_tempered:
        evaluate_policy(run, 0, notes, temperature=run.cfg.eval_temperature or 1.0 / run.cfg.alpha)
    return row


def evaluate_policy(run: Run, step: int, notes: list[str], temperature: float = 1.0) -> dict:
    """eval_* metrics of the policy now (temperature 1, stopping at EOS, whatever the training sampler does), on
    each eval set (a further set's keys prefixed NAME/); the figures and samples also go to OUT/evals/step-N.* (a
    further set's to OUT/evals/NAME/; at another `temperature`, step-N-tempered.*). At step 0 the adapter is
    fresh: the policy is the base.

    It samples as many completions together as a step's sampling call (eval_batch) and scores --micro-batch-size
    of them together; out of memory, it halves the sampling batch, which training's sampling then keeps too."""
    cfg, merged = run.cfg, {}
    settings = SamplingSettings(cfg.max_new_tokens, temperature=temperature, stop_ids=run.sampling.stop_ids)
    for each in run.evals:
        with eval_sizes(run) as (size, score_rows):
            row, summary, records = training_metrics(run.model, run.tokenizer, each.eval_set, cfg.eval_k, settings,
                                                     cfg.seed, run.measures, size.value, policy_is_base=step == 0,
                                                     ranks=run.ranks, score_rows=score_rows, size=size, notes=notes)
        merged.update({each.key(key): value for key, value in row.items()})
        if run.ranks.main:  # rank 0 graded every process's samples
            setting = {"data": each.data, "task": each.eval_set.task, "k": cfg.eval_k, "limit": cfg.eval_limit,
                       "max_new_tokens": cfg.max_new_tokens, "chat_template": cfg.chat_template,
                       "system_prompt": cfg.system_prompt}
            write_training_eval(run.out, f"{step}" if temperature == 1.0 else f"{step}-tempered", summary, records,
                                {**setting, **({"temperature": temperature} if temperature != 1.0 else {})},
                                each.name)
    return merged


def stop_after_bad_steps(run: Run, done: int) -> None:
    """Stop (one error line) after --max-bad-steps skipped updates in a row."""
    bad = run.state.bad_steps_in_row
    if bad < run.cfg.max_bad_steps:
        return
    latest = ckpt.latest_checkpoint(run.out)
    back = (f"The last checkpoint is {latest}: continue from it with a lower --lr (--resume-from {latest})"
            if latest else "No checkpoint was written yet")
    raise PowerflowError(f"stopped at step {done}: the loss or gradient was not finite in {bad} steps in a "
                         f"row (--max-bad-steps {run.cfg.max_bad_steps}), and their updates were skipped. Likely "
                         "causes: --lr or --z-lr too high, an extreme --alpha or format penalty, or fp16 overflow on a "
                         f"GPU without bf16. {back}", shared=True)  # counted alike by every process


def saves_after(run: Run, done: int) -> bool:
    """Whether a checkpoint follows the step that completes `done` steps (every --save-every, and the last)."""
    return bool(run.cfg.save_every and done % run.cfg.save_every == 0) or done == run.cfg.max_steps


def save(run: Run) -> Path:
    """OUT/checkpoint-N, N the steps done (every process holds the same weights: rank 0 writes, the others wait)."""

    def write() -> Path:
        path = ckpt.save_checkpoint(run.out, run.model, run.head, run.optimizer, run.scheduler, run.state)
        ckpt.prune_checkpoints(run.out, run.cfg.keep_checkpoints)
        return path

    run.ranks.main_writes(write)
    return run.out / f"checkpoint-{run.state.step}"


def example(run: Run, step: int, taken: StepRollout) -> dict | None:
    """One prompt and its completion, on the first step and every --show-every steps."""
    show = run.cfg.show_every and (step == run.info.start_step or (step + 1) % run.cfg.show_every == 0)
    if not show:
        return None
    rollouts = taken.rollouts
    return {"prompt": taken.prompt_texts[0], "completion": taken.texts[0], "length": int(rollouts.lengths[0]),
            "truncated": bool(rollouts.truncated[0])}


def finish(run: Run) -> None:
    """With an eval before and after training the table comparing them (run.outcome), then OUT/adapter and its
    model card, which shows that table."""
    for each in run.evals if run.ranks.main else []:
        if not (run.out / EVALS / each.name / f"step-{run.cfg.max_steps}.json").is_file():
            continue
        compared = before_after(run.out, each.data, run.cfg.eval_k, run.cfg.max_steps, each.name)
        if each.name:  # a further eval set: its table beside the first's
            run.outcome.more_before_after[each.name] = compared
        elif isinstance(compared, dict):
            run.outcome.before_after = compared
        else:
            run.outcome.before_after_note = compared
    # Also when there was nothing left to do: a run killed between its last checkpoint and this write.
    run.ranks.main_writes(lambda: ckpt.save_final_adapter(run.out, run.model, run.head))
    run.metrics.close()  # TensorBoard and W&B (--report-to) have every row
