"""The run's live state: what the steps change, saved whole in every checkpoint and restored whole on resume.

    state = TrainState(seed=cfg.seed).under(cfg)           # a new run, at step 0 (setup.py)
    state = load_checkpoint(path, ...).under(cfg)          # a resumed one (checkpoint.py reads it back whole)
    state.step, state.fresh_steps, state.micro_batch.value, state.replay

Everything else the loop uses is built once by setup.py (model, data, optimizer,
config) or saved as tensors beside this (the adapter, the log Z' head, the
optimizer and the scheduler). There is no RNG state: the draws of a step are
functions of (seed, step) (seeds.py), and its prompts of (seed, fresh_steps).
One flag is the invocation's and not saved: `warned_logp_gap`, so that a resumed
run (perhaps with other flags) says a large log-prob gap again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from .faults import BatchSize
from .replay import ReplayBuffer

MICRO_BATCH, SAMPLE_BATCH = "--micro-batch-size", "--sample-batch-size"  # the flags a halving note names


@dataclass
class TrainState:
    step: int = 0  # steps completed
    seed: int = 0  # the run's --seed, which every draw of a step is a function of
    fresh_steps: int = 0  # steps that sampled (the rest replayed): where the prompt schedule stands
    bad_steps_in_row: int = 0  # skipped updates in a row, towards --max-bad-steps
    z_initialized: bool = False  # the log Z' head's start value is set (log_z.LogPartition.before_update)
    micro_batch: BatchSize = field(default_factory=lambda: BatchSize(MICRO_BATCH, 0))  # completions per
    # forward/backward, as out-of-memory errors left it (0: --micro-batch-size's)
    sample_batch: BatchSize = field(default_factory=lambda: BatchSize(SAMPLE_BATCH, 0))  # completions per
    # sampling call, likewise (0: all of a step's completions in one call)
    replay: ReplayBuffer | None = None  # with --replay-steps: the completions of earlier fresh steps
    warned_logp_gap: bool = False  # this invocation said the log-prob gap is large (update.py); not saved

    def under(self, cfg) -> TrainState:
        """This state under an invocation's settings (a TrainConfig): sizes halved after an out-of-memory error stay
        halved, never above its flags; with --replay-steps the buffer (a new one when there is none) keeps what it
        holds and takes the invocation's --replay-size and rules; without, there is none."""
        micro = min(cfg.micro_batch_size, self.micro_batch.value or cfg.micro_batch_size)
        sample = (min(cfg.sample_batch_size or self.sample_batch.value, self.sample_batch.value)
                  if self.sample_batch.value else cfg.sample_batch_size)
        replay = None
        if cfg.replay_steps:
            replay = self.replay if self.replay is not None else ReplayBuffer(cfg.replay_size)
            replay.capacity, replay.best_fraction = cfg.replay_size, cfg.replay_best
            replay.window, replay.order = cfg.replay_window, cfg.replay_order
        return replace(self, micro_batch=BatchSize(MICRO_BATCH, micro), sample_batch=BatchSize(SAMPLE_BATCH, sample),
                       replay=replay)

    def to_json(self) -> str:
        """trainer_state.json: the counters (the replay buffer has a file of its own, checkpoint.py)."""
        return json.dumps({"step": self.step, "seed": self.seed, "z_initialized": self.z_initialized,
                           "bad_steps_in_row": self.bad_steps_in_row, "micro_batch_size": self.micro_batch.value,
                           "sample_batch_size": self.sample_batch.value, "fresh_steps": self.fresh_steps}, indent=2)

    @staticmethod
    def from_json(text: str) -> TrainState:
        """trainer_state.json back (checkpoint.load_checkpoint adds the replay buffer). Keys this version does not
        know are ignored; the ones an older checkpoint lacks take their defaults (no fresh_steps: every step
        sampled)."""
        saved = json.loads(text)
        fresh = saved.get("fresh_steps")
        return TrainState(saved["step"], saved["seed"], saved["step"] if fresh is None else fresh,
                          saved.get("bad_steps_in_row", 0), saved["z_initialized"],
                          BatchSize(MICRO_BATCH, saved.get("micro_batch_size", 0)),
                          BatchSize(SAMPLE_BATCH, saved.get("sample_batch_size", 0)))
