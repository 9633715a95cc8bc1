"""Exploration (--explore-temperature): part of each prompt's completions drawn at another temperature, with the
log-probs of the distribution that drew them recorded (sampler, scoring, training, buffer, config)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import config

from powerflow_lite.errors import PowerflowError
from powerflow_lite.logprobs import score, score_behaviour
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.samplers.hf import sample
from powerflow_lite.samplers.rollouts import Rollouts, SamplingSettings
from powerflow_lite.samplers.static import sample_static
from powerflow_lite.setup import setup
from powerflow_lite.tiny import write_tiny_model
from powerflow_lite.train import train


@pytest.fixture(scope="module")
def peaky(tmp_path_factory):
    model_dir = write_tiny_model(tmp_path_factory.mktemp("explore") / "model", logit_scale=4.0)
    model = load_base_model(str(model_dir), "none", torch.device("cpu"))
    return model.eval(), load_tokenizer(str(model_dir))


PROMPTS = ["hello there", "a b"]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_the_static_sampler_returns_the_log_probs_at_its_temperature_and_at_1(peaky, temperature):
    model, tokenizer = peaky
    torch.manual_seed(0)
    rollouts = sample_static(model, tokenizer, [tokenizer(p).input_ids for p in PROMPTS], 3,
                             SamplingSettings(10, temperature=temperature))
    at_1, _ = score(model, rollouts, 8)
    tempered, _ = score(model, rollouts, 8, temperature=temperature)  # log-softmax(logits / T), teacher-forced
    torch.testing.assert_close(rollouts.sampled_logps, at_1, rtol=0, atol=1e-5)
    torch.testing.assert_close(rollouts.behaviour_logps, tempered, rtol=0, atol=1e-5)
    assert (rollouts.behaviour_logps - rollouts.sampled_logps).abs().max() > 0.05  # the two really differ
    assert rollouts.temperature.tolist() == [temperature] * 6


def test_at_temperature_1_the_behaviour_is_the_policy_itself(peaky):
    model, tokenizer = peaky
    rollouts = sample_static(model, tokenizer, [tokenizer(PROMPTS[0]).input_ids], 2, SamplingSettings(6))
    assert rollouts.behaviour_logps is rollouts.sampled_logps


def test_hf_rows_are_scored_at_the_temperature_they_were_drawn_at(peaky):
    model, tokenizer = peaky
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    torch.manual_seed(0)
    parts = [sample(model, tokenizer, prompts, 2, SamplingSettings(8, temperature=t)) for t in (1.0, 0.5)]
    assert all(p.behaviour_logps is None and p.sampled_logps is None for p in parts)  # generate returns neither
    rollouts = Rollouts.concat(parts, tokenizer.pad_token_id, torch.arange(8))
    old, _ = score(model, rollouts, 8)
    behaviour = score_behaviour(model, rollouts, old, 3)
    assert torch.equal(behaviour[:4], old[:4])  # temperature 1: the policy's own log-probs
    torch.testing.assert_close(behaviour[4:], score(model, rollouts.select(slice(4, 8)), 8, temperature=0.5)[0])
    assert not torch.allclose(behaviour[4:], old[4:])


# the shared tiny-run config (helpers.config), with what these tests change
config = partial(config, samples_per_prompt=4, micro_batch_size=8, save_every=0, explore_temperature=2.0,
                 explore_fraction=0.25, replay_steps=2, replay_size=8)


@pytest.mark.parametrize("sampler", ["static", "hf"])
def test_each_prompt_explores_the_last_of_its_completions_and_the_buffer_keeps_what_drew_them(
        tiny_model_dir, prompts_file, tmp_path, sampler):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", sampler=sampler))
    seen = []
    add = run.state.replay.add

    def checked_add(batch, prompts, step, alpha):  # called before the update: the policy that sampled the batch
        temperatures = batch.rollouts.temperatures()
        for t in (1.0, 2.0):
            rows = (temperatures == t).nonzero().squeeze(-1)
            expected, _ = score(run.model, batch.rollouts.select(rows), 8, temperature=t)
            torch.testing.assert_close(batch.behaviour_logps[rows], expected, rtol=0, atol=1e-5)
        seen.append(temperatures.tolist())
        for g in batch.group_ids.unique():  # the explored row answers its group's prompt
            ids = batch.rollouts.prompt_ids[batch.group_ids == g]
            assert (ids == ids[0]).all()
        assert not torch.equal(batch.rollouts.prompt_ids[0], batch.rollouts.prompt_ids[4])
        add(batch, prompts, step, alpha)

    run.state.replay.add = checked_add
    first = next(train(run))
    # 4 completions per prompt: 3 at temperature 1, then 1 at 2, each group's rows together
    assert seen == [[1.0, 1.0, 1.0, 2.0] * 2]
    assert first.metrics["explored_frac"] == 0.25 and first.metrics["replayed"] == 0
    assert first.metrics["behaviour_log_ratio"] != 0.0  # explored rows are off-policy
    assert all([e.temperature for e in kept] == [1.0, 1.0, 1.0, 2.0] for kept in run.state.replay.entries.values())
    assert all(len({e.prompt for e in kept}) == 1 for kept in run.state.replay.entries.values())


def test_with_replay_alone_a_fresh_step_is_on_policy(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", explore_temperature=1.0, max_steps=2))
    rows = [r.metrics for r in train(run)]
    assert rows[0]["explored_frac"] == 0.0 and rows[0]["behaviour_log_ratio"] == 0.0  # exactly: the same tensor
    assert rows[1]["replayed"] == 1 and rows[1]["behaviour_log_ratio"] != 0.0  # the adapter moved since


def test_exploration_without_replay_reports_its_share(tiny_model_dir, prompts_file, tmp_path):
    rows = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "run", replay_steps=0,
                                                  explore_fraction=0.5, max_steps=1)))]
    assert rows[0]["explored_frac"] == 0.5 and "replayed" not in rows[0]


def test_explore_settings_are_checked(tiny_model_dir, prompts_file, tmp_path):
    assert config(tiny_model_dir, prompts_file, tmp_path, explore_fraction=0.1).explored_per_prompt == 1  # >= 1
    assert config(tiny_model_dir, prompts_file, tmp_path, explore_fraction=0.5).explored_per_prompt == 2
    assert config(tiny_model_dir, prompts_file, tmp_path, explore_fraction=1.0).explored_per_prompt == 4
    assert config(tiny_model_dir, prompts_file, tmp_path, explore_temperature=1.0).explored_per_prompt == 0
    with pytest.raises(PowerflowError, match=r"--explore-fraction must be in \(0, 1\]"):
        config(tiny_model_dir, prompts_file, tmp_path, explore_fraction=0.0)
    with pytest.raises(PowerflowError, match="--explore-temperature must be > 0"):
        config(tiny_model_dir, prompts_file, tmp_path, explore_temperature=0.0)
    with pytest.raises(PowerflowError, match="--explore-temperature needs a trajectory-balance objective"):
        config(tiny_model_dir, prompts_file, tmp_path, objective="rl-traj", replay_steps=0)
