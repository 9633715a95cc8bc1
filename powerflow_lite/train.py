"""The training loop: rollout -> score -> update -> record, one step after another.

    run = setup(cfg)           # setup.py: output dir, prompts, model + LoRA, log Z head, optimizer, resume
    for result in train(run):  # one StepResult per step: metrics.jsonl and checkpoints are written as it goes
        print(result.metrics.get("loss"))

Each phase is a module named for it: rollout.py, scoring.py, update.py,
record.py. What the loop does differently from GRPO-style trainers, and why:

1. the reward is the base model itself (the same weights, adapter off), raised to alpha;
2. the loss is a regression (LA-TB) on log Z'(q), not a policy gradient (docs/design.md sections 3-4);
3. the random draws of a step are functions of (seed, step), so a checkpoint needs no RNG state (seeds.py);
4. under a launcher every helper the loop calls adds up the processes' work to one process's (distributed.py).

`train` is a generator so that the CLI can draw between steps; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import probe, record, rollout
from .errors import first_line
from .scoring import score_step
from .setup import Run, setup  # noqa: F401 - setup is re-exported: from powerflow_lite.train import setup, train
from .update import update_policy


@dataclass(frozen=True)
class StepResult:
    step: int  # steps completed (0: the eval before training)
    max_steps: int
    metrics: dict  # the metrics.jsonl row
    example: dict | None  # one prompt and completion, every --show-every steps
    checkpoint: Path | None
    notes: tuple[str, ...] = ()  # things the user should read once, e.g. a batch halved after running out of memory


def train(run: Run, should_stop: Callable[[], bool] = lambda: False) -> Iterator[StepResult]:
    """The steps from run.state.step on; once `should_stop()` is true (a signal), leave after a checkpoint."""
    cfg = run.cfg
    stop = lambda: run.ranks.any(should_stop())  # noqa: E731 - under a launcher every process stops alike
    first_notes = _before_step_1(run) if run.state.step < cfg.max_steps else []
    if run.evals and run.state.step == 0:  # where the curves start: the base model itself
        notes, first_notes = first_notes, []
        yield StepResult(0, cfg.max_steps, record.eval_before_training(run, notes), None, None, tuple(notes))
        if stop():  # a signal during that eval: nothing trained yet, so nothing to save
            run.outcome.stopped = True
            return

    for step in range(run.state.step, cfg.max_steps):
        clock, notes, first_notes = record.StepClock(run.device), first_notes, []

        # --- 1. rollout: G completions per prompt from the policy, or G stored ones on a replay step
        taken = rollout.take(run, step, notes)
        clock.lap()
        # --- 2. score: log pi_old, log p_base (the same weights, adapter off), psi
        batch = score_step(run, taken, notes)
        rollout.remember(run, batch, taken, step)
        clock.lap()
        # --- 3. update: log Z' on this batch, then K epochs over micro-batches (a non-finite one is skipped)
        update = update_policy(run, batch, notes, cfg.replay_lr_scale if taken.replayed else 1.0)
        clock.lap()
        # --- 4. record: the metrics row (and an eval), a checkpoint, the step's result
        run.state.step = done = step + 1  # the step is done: what a checkpoint saves from here on
        row = record.metrics_row(run, step, batch, update, taken.replayed, clock)
        if record.evaluates_after(run, done):
            row.update(record.evaluate_policy(run, done, notes))
        example = record.example(run, step, taken)
        run.metrics.write(row)
        run.metrics.example(done, example)
        record.stop_after_bad_steps(run, done)
        stopping = stop()
        saved = record.save(run) if stopping or record.saves_after(run, done) else None
        yield StepResult(done, cfg.max_steps, row, example, saved, tuple(notes))
        if (stopping or stop()) and done < cfg.max_steps:  # a signal: leave with this step saved
            if saved is None:
                record.save(run)
            run.outcome.stopped = True
            run.metrics.close()
            return

    record.finish(run)


def _before_step_1(run: Run) -> list[str]:
    """On a GPU: the worst-case probe (unless --no-probe), and this card's time estimate for the metrics rows."""
    notes = probe.worst_case(run) if probe.probes(run) else []
    if run.device.type != "cuda":
        return notes
    try:
        run.estimate.update(probe.card_estimate(run, torch.cuda.get_device_name(run.device)))
    except Exception as err:  # noqa: BLE001 - a model the rehearsal cannot build still trains
        notes.append(f"no time estimate in metrics.jsonl: the rehearsal failed ({first_line(err)})")
    return notes
