"""The replay buffer: what it keeps and draws (by hand), and training on it (tiny model): schedule, exact resume."""

import dataclasses
import json
from functools import partial

import pytest
import torch
from helpers import config, untimed
from safetensors.torch import load_file

from powerflow_lite.batch import ScoredBatch
from powerflow_lite.checkpoint import load_replay
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.replay import ReplayBuffer, replay_batch
from powerflow_lite.samplers.rollouts import Rollouts
from powerflow_lite.setup import setup
from powerflow_lite.train import train

PAD = 0


def scored(completions: list[list[int]], base: list[list[float]], psi: list[float], groups: list[int]) -> ScoredBatch:
    """A ScoredBatch of hand-written completions (right-padded with PAD), prompts of two tokens."""
    n, width = len(completions), max(len(c) for c in completions)
    ids = torch.full((n, width), PAD)
    mask = torch.zeros((n, width), dtype=torch.long)
    base_logps = torch.zeros((n, width))
    for i, (c, b) in enumerate(zip(completions, base)):
        ids[i, :len(c)], mask[i, :len(c)], base_logps[i, :len(c)] = torch.tensor(c), 1, torch.tensor(b)
    rollouts = Rollouts(torch.ones((n, 2), dtype=torch.long), torch.ones((n, 2), dtype=torch.long), ids, mask,
                        torch.tensor(groups), torch.zeros(n, dtype=torch.bool))
    features = torch.tensor(groups, dtype=torch.float32)[:, None].repeat(1, 3)  # [N, 3]: a prompt's, its group id
    return ScoredBatch(rollouts, base_logps - 0.5, base_logps, torch.tensor(psi), features, base_logps - 0.25,
                       torch.tensor(psi))


def test_add_scores_each_completion_by_its_target_per_token_and_merges_duplicates():
    buffer = ReplayBuffer(capacity=8)
    batch = scored([[5, 6], [7], [5, 6]], [[-1.0, -3.0], [-0.5], [-1.0, -3.0]], [0.0, -0.5, 0.0], [0, 0, 1])
    buffer.add(batch, prompts=[10, 11], step=1, alpha=2.0)
    # prompt 10: [5, 6] target 2 * ((-1 - 3) / 2 + 0) = -4; [7]: 2 * (-0.5 - 0.5) = -2.  prompt 11: [5, 6]
    assert [e.target for e in buffer.entries[10]] == [-4.0, -2.0]
    assert buffer.entries[10][0].behaviour_logps.tolist() == [-1.25, -3.25]  # what drew it, not old_logps
    assert len(buffer.entries[11]) == 1 and len(buffer) == 3
    buffer.add(scored([[7]], [[-0.5]], [-0.5], [0]), prompts=[10], step=2, alpha=2.0)  # [7] again: one copy
    assert [(e.completion.tolist(), e.step) for e in buffer.entries[10]] == [([5, 6], 1), ([7], 2)]


@pytest.mark.parametrize("best_fraction, kept", [(0.5, [1, 3, 5, 6]), (0.0, [3, 4, 5, 6]), (0.25, [3, 4, 5, 6]),
                                                  (1.0, [1, 3, 5, 6])])
def test_eviction_keeps_the_best_fraction_of_the_capacity_and_otherwise_the_newest(best_fraction, kept):
    buffer = ReplayBuffer(capacity=4, best_fraction=best_fraction)
    for step, base in enumerate([-1.0, -9.0, -0.1, -8.0, -7.0, -6.0], start=1):  # one completion a step
        buffer.add(scored([[step]], [[base]], [0.0], [0]), prompts=[0], step=step, alpha=1.0)
    # 0.5: the 2 best (-0.1 at step 3, -1.0 at step 1) stay; of the rest the newest survive (steps 5, 6).
    # 0: the 4 newest. 0.25: the best (step 3) is among the 4 newest anyway. 1: the 4 best, whatever their age:
    # -0.1, -1.0, -6.0, -7.0 (steps 3, 1, 6, 5; -9.0 and then -8.0 were dropped)
    assert sorted(e.step for e in buffer.entries[0]) == kept


def test_draw_takes_the_best_fraction_then_the_newest_and_repeats_when_short():
    buffer = ReplayBuffer(capacity=8, best_fraction=0.5)
    for step, base in enumerate([-1.0, -5.0, -0.2, -4.0, -3.0], start=1):
        buffer.add(scored([[step]], [[base]], [0.0], [0]), prompts=[3], step=step, alpha=1.0)
    drawn = buffer.draw(3, 4)
    # best 2: steps 3 (-0.2) and 1 (-1.0); then the newest others: steps 5 and 4
    assert [e.step for e in drawn] == [3, 1, 5, 4]
    buffer.best_fraction = 0.0
    assert [e.step for e in buffer.draw(3, 3)] == [5, 4, 3]  # only the newest
    assert buffer.ready(5, done=5) == [3] and buffer.ready(6, done=5) == []
    buffer.window = 2
    assert buffer.ready(2, done=6) == [3] and buffer.ready(2, done=7) == []  # newest entry: step 5
    buffer.order = "random"  # a random choice among the kept ones, drawn from the step's generator
    draws = [[e.step for e in buffer.draw(3, 3, torch.Generator().manual_seed(seed))] for seed in range(6)]
    assert all(len(set(d)) == 3 and set(d) <= {1, 2, 3, 4, 5} for d in draws) and len({tuple(d) for d in draws}) > 1
    assert draws[2] == [e.step for e in buffer.draw(3, 3, torch.Generator().manual_seed(2))]
    small = ReplayBuffer(capacity=8, best_fraction=0.0)
    small.add(scored([[1], [2]], [[-1.0], [-2.0]], [0.0, 0.0], [0, 0]), prompts=[0], step=1, alpha=1.0)
    assert [e.completion.tolist() for e in small.draw(0, 5)] == [[2], [1], [2], [1], [2]]  # newest first, cycled


def test_state_round_trip_is_exact_and_replay_batch_rebuilds_the_rows():
    buffer = ReplayBuffer(capacity=8, best_fraction=0.25, window=3, order="random")
    batch = scored([[5, 6, 9], [7], [8, 8]], [[-1.1, -3.3, -0.7], [-0.5], [-2.0, -2.0]], [0.0, -0.5, 0.0], [0, 1, 1])
    batch = dataclasses.replace(batch, rollouts=dataclasses.replace(
        batch.rollouts, temperature=torch.tensor([1.0, 0.5, 1.0])))
    buffer.add(batch, prompts=[2, 0], step=4, alpha=3.0)
    tensors, meta = buffer.state()
    # compact: the completions concatenated as int32 with offsets, the features once per prompt
    assert tensors["completion"].dtype == torch.int32 and tensors["completion"].tolist() == [7, 8, 8, 5, 6, 9]
    assert tensors["offsets"].tolist() == [0, 1, 3, 6] and tensors["features"].shape == (2, 3)
    again = ReplayBuffer.from_state(tensors, meta)
    assert (again.capacity, again.best_fraction, again.window, again.order) == (8, 0.25, 3, "random")
    for prompt in (0, 2):
        for a, b in zip(buffer.entries[prompt], again.entries[prompt], strict=True):
            assert torch.equal(a.completion, b.completion) and torch.equal(a.base_logps, b.base_logps)
            assert torch.equal(a.behaviour_logps, b.behaviour_logps) and torch.equal(a.features, b.features)
            assert (a.psi, a.target, a.step, a.temperature) == (b.psi, b.target, b.step, b.temperature)
    assert [e.temperature for e in again.entries[0]] == [0.5, 1.0]
    again.order = "newest"
    entries = again.draw(2, 2) + again.draw(0, 2)  # two groups of G = 2 (prompt 2 has one, repeated)
    rollouts, stored = replay_batch(entries, [[1], [2, 3], [4, 5, 6]], 2, PAD, torch.device("cpu"))
    psi = torch.tensor([e.psi for e in entries])  # kept per entry (for the target); the loop recomputes it
    assert rollouts.completion_ids.tolist() == [[5, 6, 9], [5, 6, 9], [8, 8, PAD], [7, PAD, PAD]]
    assert rollouts.completion_mask.sum(-1).tolist() == [3, 3, 2, 1] and rollouts.group_ids.tolist() == [0, 0, 1, 1]
    assert rollouts.prompt_ids.tolist() == [[4, 5, 6], [4, 5, 6], [PAD, PAD, 1], [PAD, PAD, 1]]  # left-padded
    assert torch.equal(stored.base_logps[0], torch.tensor([-1.1, -3.3, -0.7])) and psi.tolist() == [0.0, 0.0, 0.0, -0.5]
    assert torch.equal(stored.behaviour_logps[3], torch.tensor([-0.75, 0.0, 0.0]))
    assert rollouts.temperature.tolist() == [1.0, 1.0, 1.0, 0.5]
    assert stored.features[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


# --- training on replayed completions (tiny model)


# the shared tiny-run config (helpers.config), with what these tests change
config = partial(config, max_steps=6, micro_batch_size=6, replay_steps=2, replay_size=6)


def test_replay_steps_train_without_sampling(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run"))
    lora_before = None
    rows = []
    for result in train(run):
        lora = torch.cat([p.detach().flatten() for p in run.model.parameters() if p.requires_grad])
        if lora_before is not None and result.metrics["replayed"]:
            assert not torch.equal(lora, lora_before)  # a replay step updates the adapter
        lora_before = lora.clone()
        rows.append(result.metrics)
    assert [r["replayed"] for r in rows] == [0, 1, 1, 0, 1, 1]
    assert [r["sampled_tokens"] > 0 for r in rows] == [True, False, False, True, False, False]
    assert all(r["sampled_tokens"] == 0 and r["time_score"] >= 0 for r in rows if r["replayed"])
    assert run.state.fresh_steps == 2 and len(run.state.replay) > 0
    assert all(abs(r["residual_mean"]) < 1e-5 for r in rows)  # --log-z batch: zero on replayed groups too
    saved = load_replay(tmp_path / "run" / "checkpoint-6")
    assert saved is not None and len(saved) == len(run.state.replay)


def test_without_replay_the_prompt_schedule_and_rows_are_unchanged(tiny_model_dir, prompts_file, tmp_path):
    rows = read_metrics_of(setup(config(tiny_model_dir, prompts_file, tmp_path / "a", replay_steps=0, max_steps=2)))
    assert "replayed" not in rows[0] and all(r["sampled_tokens"] > 0 for r in rows)
    assert not (tmp_path / "a" / "checkpoint-2" / "replay.safetensors").exists()
    state = json.loads((tmp_path / "a" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["fresh_steps"] == 2


def read_metrics_of(run):
    list(train(run))
    return read_metrics(run.out / "metrics.jsonl")


# with dropout, a replay step's random draws must be (seed, step)'s; exploring, the buffer holds tempered rows
@pytest.mark.parametrize("dropout, explore", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.5)])
def test_resume_with_a_buffer_ends_exactly_like_the_uninterrupted_run(tiny_model_dir, prompts_file, tmp_path,
                                                                      dropout, explore):
    settings = dict(lora_dropout=dropout, explore_temperature=explore)
    list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "straight", **settings))))
    steps = train(setup(config(tiny_model_dir, prompts_file, tmp_path / "stopped", **settings)))
    for result in steps:
        if result.step == 3:  # a fresh step's completions reached the buffer after checkpoint-2: resume redoes it
            break
    steps.close()
    resumed = setup(config(tiny_model_dir, prompts_file, tmp_path / "stopped", resume=True, **settings))
    assert resumed.state.step == 2 and resumed.state.fresh_steps == 1 and len(resumed.state.replay) > 0
    list(train(resumed))
    for name in ("adapter_model.safetensors", "z_head.safetensors"):
        straight, stopped = (load_file(tmp_path / run / "adapter" / name) for run in ("straight", "stopped"))
        assert all(torch.equal(straight[key], stopped[key]) for key in straight)
    assert untimed(read_metrics(tmp_path / "stopped" / "metrics.jsonl")) == \
        untimed(read_metrics(tmp_path / "straight" / "metrics.jsonl"))


@pytest.mark.parametrize("objective", ["rl-traj", "rl-token"])
def test_replay_refuses_the_on_policy_objectives(tiny_model_dir, prompts_file, tmp_path, objective):
    with pytest.raises(PowerflowError, match="--replay-steps needs a trajectory-balance objective"):
        config(tiny_model_dir, prompts_file, tmp_path / "run", objective=objective)
    with pytest.raises(PowerflowError, match="--replay-size"):
        config(tiny_model_dir, prompts_file, tmp_path / "run", replay_size=2)


def test_add_skips_rows_that_are_not_finite_and_owns_its_tensors():
    buffer = ReplayBuffer(capacity=8)
    batch = scored([[5, 6], [7]], [[-1.0, float("-inf")], [-0.5]], [0.0, 0.0], [0, 0])
    buffer.add(batch, prompts=[0], step=1, alpha=2.0)
    [entry] = buffer.entries[0]  # the row with a -inf base log-prob is not kept
    assert entry.completion.tolist() == [7]
    assert entry.completion.untyped_storage().nbytes() == 8  # its own copy, not a view of the step's batch


def test_the_disk_check_counts_a_full_buffer_in_every_checkpoint(tiny_model_dir, prompts_file, tmp_path):
    from powerflow_lite.setup import _disk_needed

    cfg = config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=10, save_every=5, keep_checkpoints=0)
    without = _disk_needed(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=10, save_every=5,
                                  replay_steps=0), 0, 1000, 100, 64)
    # 3 checkpoints (5, 10 and the last), each with 100 prompts of 6 entries of 12 x 6 + 57 bytes, 4 x 64 + 8 more
    assert _disk_needed(cfg, 0, 1000, 100, 64) - without == 3 * 100 * (6 * (12 * 6 + 57) + 4 * 64 + 8)


def test_replay_lr_scale_zero_leaves_the_weights_as_the_fresh_step_left_them(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", replay_lr_scale=0.0, max_steps=4))
    lora, lrs = [], []
    for result in train(run):
        lora.append((result.metrics["replayed"], torch.cat([p.detach().flatten().clone() for p in
                                                           run.model.parameters() if p.requires_grad])))
        lrs.append(result.metrics["lr"])
    assert [replayed for replayed, _ in lora] == [0, 1, 1, 0]
    assert torch.equal(lora[0][1], lora[1][1]) and torch.equal(lora[1][1], lora[2][1])  # replay steps: lr 0
    assert not torch.equal(lora[2][1], lora[3][1])  # a fresh step trains
    assert lrs == pytest.approx([1e-2 * lr_cosine(step, 4) for step in range(1, 5)])  # the schedule is untouched


def lr_cosine(done: int, total: int) -> float:
    import math

    return 0.5 * (1 + math.cos(math.pi * done / total))
