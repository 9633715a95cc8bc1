"""The run's live state: trainer_state.json read back (older files too), and a saved state under an invocation's
settings. That a checkpoint saves the state whole and a resumed run ends as an uninterrupted one: test_checkpoint,
test_train, test_replay and test_faults."""

from __future__ import annotations

import json

import pytest
from helpers import config

from powerflow_lite.faults import BatchSize
from powerflow_lite.replay import ReplayBuffer
from powerflow_lite.state import MICRO_BATCH, SAMPLE_BATCH, TrainState


def settings(**overrides):
    return config("model", "prompts.jsonl", "out", **overrides)


def test_an_older_checkpoints_file_reads_with_defaults_and_unknown_keys_are_ignored():
    # written before the halved batch sizes and replay were saved, with a key a later version might add
    state = TrainState.from_json('{"z_initialized": true, "seed": 5, "step": 4, "future_key": 1}')
    assert state == TrainState(step=4, seed=5, fresh_steps=4, bad_steps_in_row=0, z_initialized=True,
                               micro_batch=BatchSize(MICRO_BATCH, 0), sample_batch=BatchSize(SAMPLE_BATCH, 0))
    assert TrainState.from_json(state.to_json()) == state


def test_the_file_keeps_every_counter_under_its_name():
    state = TrainState(step=9, seed=2, fresh_steps=3, bad_steps_in_row=1, z_initialized=True,
                       micro_batch=BatchSize(MICRO_BATCH, 2), sample_batch=BatchSize(SAMPLE_BATCH, 6))
    assert json.loads(state.to_json()) == {"step": 9, "seed": 2, "z_initialized": True, "bad_steps_in_row": 1,
                                           "micro_batch_size": 2, "sample_batch_size": 6, "fresh_steps": 3}


@pytest.mark.parametrize("saved, flags, expected", [
    ((0, 0), (8, 0), (8, 0)),  # a new run (or a file from before they were saved): the flags
    ((2, 4), (8, 16), (2, 4)),  # halved after running out of memory: they stay halved
    ((2, 4), (1, 2), (1, 2)),  # ... but never above this invocation's flags
    ((2, 4), (8, 0), (2, 4)),  # --sample-batch-size 0 (all in one call) does not undo a halving
])
def test_halved_sizes_stay_halved_within_this_invocations_flags(saved, flags, expected):
    state = TrainState(micro_batch=BatchSize(MICRO_BATCH, saved[0]), sample_batch=BatchSize(SAMPLE_BATCH, saved[1]))
    resumed = state.under(settings(micro_batch_size=flags[0], sample_batch_size=flags[1]))
    assert (resumed.micro_batch.value, resumed.sample_batch.value) == expected
    assert (resumed.micro_batch.flag, resumed.sample_batch.flag) == ("--micro-batch-size", "--sample-batch-size")


def test_the_buffer_keeps_what_it_holds_under_this_invocations_rules():
    buffer = ReplayBuffer(capacity=4, best_fraction=0.0, window=0, order="newest")
    buffer.entries[0] = []
    flags = dict(replay_steps=1, replay_size=9, replay_best=0.5, replay_window=3, replay_order="random")
    resumed = TrainState(replay=buffer).under(settings(**flags))
    assert resumed.replay is buffer and list(buffer.entries) == [0]
    assert (buffer.capacity, buffer.best_fraction, buffer.window, buffer.order) == (9, 0.5, 3, "random")
    new = TrainState().under(settings(**flags)).replay  # none saved: an empty one
    assert len(new) == 0 and (new.capacity, new.best_fraction, new.window, new.order) == (9, 0.5, 3, "random")
    assert TrainState(replay=buffer).under(settings()).replay is None  # without --replay-steps: none
