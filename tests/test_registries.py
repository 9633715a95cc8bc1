"""Every entry of the three registries through one contract on a tiny model: samplers.SAMPLERS, tasks.TASKS and
objectives.OBJECTIVES. A new entry is tested here without a new test; what its flags promise is checked too.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import run_cli

from powerflow_lite.config import TrainConfig
from powerflow_lite.display import eval_rows, eval_table, eval_text
from powerflow_lite.errors import PowerflowError
from powerflow_lite.evaluate import load_eval_set, training_metrics
from powerflow_lite.logprobs import score
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.objectives import OBJECTIVES
from powerflow_lite.samplers import SAMPLERS, resolve_sampler, unsupported
from powerflow_lite.samplers.rollouts import SamplingSettings, stop_token_ids
from powerflow_lite.setup import setup
from powerflow_lite.tasks import COMMON_METRICS, EVAL_METRICS, TASKS, Measures, too_few_samples
from powerflow_lite.tasks.models import load_embedder
from powerflow_lite.train import train

CPU = torch.device("cpu")
ROWS = [{"prompt": "What is 1+1?", "answer": "2"}, {"prompt": "Name a color.", "answer": "red"},
        {"prompt": "What is 2+2?", "answer": "4"}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), "none", CPU), load_tokenizer(str(tiny_model_dir))


# --- samplers


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_returns_rollouts_grouped_masked_and_padded(name, tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Hi").input_ids, tokenizer("Tell me a story.").input_ids]
    torch.manual_seed(0)
    uniforms = torch.rand(6, 8, dtype=torch.float64)  # the numbers a seeded-rows sampler draws each token with
    rollouts = SAMPLERS[name].sample(model, tokenizer, prompts, 3, SamplingSettings(8), uniforms=uniforms)
    stops = torch.tensor(stop_token_ids(model, tokenizer, SamplingSettings(8)))
    assert len(rollouts) == 6 and rollouts.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    for row in range(6):
        prompt = rollouts.prompt_ids[row][rollouts.prompt_mask[row].bool()].tolist()
        assert prompt == prompts[row // 3]  # left-padded, grouped by prompt
        mask, ids = rollouts.completion_mask[row], rollouts.completion_ids[row]
        length = int(mask.sum())
        assert 1 <= length <= 8 and mask[:length].all() and not mask[length:].any()  # ones, then padding
        assert (ids[length:] == tokenizer.pad_token_id).all()
        ended = bool(torch.isin(ids[length - 1], stops))
        assert bool(rollouts.truncated[row]) == (not ended) and not torch.isin(ids[:length - 1], stops).any()
    assert rollouts.temperatures().tolist() == [1.0] * 6


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_keeps_the_promises_of_its_flags(name, tiny):
    model, tokenizer = tiny
    sampler, settings = SAMPLERS[name], SamplingSettings(8)
    prompts = [tokenizer("Hi").input_ids, tokenizer("Tell me a story.").input_ids]
    uniforms = torch.rand(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    rollouts = sampler.sample(model, tokenizer, prompts, 3, settings, uniforms=uniforms)
    if sampler.returns_logps:  # log pi_old (and for training the behaviour log-probs) come with the samples
        torch.testing.assert_close(rollouts.sampled_logps, score(model, rollouts, 6)[0], rtol=0, atol=1e-4)
        assert rollouts.behaviour_logps is not None or not sampler.trains
    else:
        assert rollouts.sampled_logps is None
    if sampler.seeded_rows:  # row 4 drawn alone from its own numbers: the same completion as in the batch
        alone = sampler.sample(model, tokenizer, prompts[1:], 1, settings, uniforms=uniforms[4:5])
        width = int(alone.completion_mask.sum())
        assert alone.completion_ids[0, :width].tolist() == rollouts.completion_ids[4, :width].tolist()
    if sampler.top_p:
        assert unsupported(name, 0.5) is None
        assert len(sampler.sample(model, tokenizer, prompts, 1, SamplingSettings(4, top_p=0.5))) == 2
    else:  # refused in the config, and by the sampler itself
        assert unsupported(name, 0.5) and f"--sampler {name}" in unsupported(name, 0.5)
        with pytest.raises(PowerflowError, match=f"--sampler {name}"):
            TrainConfig(model="m", prompts="p", alpha=2.0, sampler=name, top_p=0.5)
        with pytest.raises(ValueError):
            sampler.sample(model, tokenizer, prompts, 1, SamplingSettings(4, top_p=0.5))
    for device in sampler.auto_on:  # `auto` picks it where it says it is picked
        assert resolve_sampler("auto", torch.device(device)) == (name, f"auto: {sampler.auto_why}")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_trains_a_step_or_is_refused(name, tiny_model_dir, prompts_file, tmp_path):
    settings = dict(model=str(tiny_model_dir), alpha=2.0, prompts=str(prompts_file), output=str(tmp_path / "out"),
                    quant="none", max_steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6, lr=1e-2,
                    warmup_steps=0, show_every=0, sampler=name)
    if not SAMPLERS[name].trains:  # a sampler of p_base^alpha at inference time: training samples the policy
        with pytest.raises(PowerflowError, match=f"--sampler {name}"):
            TrainConfig(**settings)
        return
    run = setup(TrainConfig(**settings))
    assert run.info.sampler == name
    [result] = list(train(run))
    assert result.metrics["grad_norm"] > 0 and torch.isfinite(torch.tensor(result.metrics["loss"]))


# --- eval tasks


@pytest.fixture(scope="module")
def measures():
    return Measures(embed=load_embedder("")) if any(task.uses_embedder for task in TASKS.values()) else Measures()


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_measures_a_policy_as_it_declares(name, tiny, tiny_model_dir, tmp_path, measures):
    model, tokenizer = tiny
    task = TASKS[name]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    eval_set = load_eval_set(str(data), tokenizer, None, name, max_new_tokens=6)
    assert eval_set.task == name
    k = max(2, task.min_k)
    row, summary, records = training_metrics(model, tokenizer, eval_set, k, SamplingSettings(6), seed=0,
                                             measures=measures if task.uses_embedder else Measures())
    # the metrics row: every key it declares, and the ones every task has, nothing undeclared
    assert set(task.metrics) | set(COMMON_METRICS) <= set(row) <= set(EVAL_METRICS)
    assert task.line(row) and eval_text(row) == task.line(row) and task.line({}) == ""
    for key in task.paired:  # a per-prompt figure for every change it pairs
        assert len(summary[f"{key}_per_prompt"]) == len(ROWS)
    assert len(records) == len(ROWS) * k
    table = {"task": name, "data": str(data), "k": k, "prompts": len(ROWS), "seconds": 1.0,
             "results": {"before": summary, "after": summary}, "change": {}}
    for label, _, _ in eval_rows(table):  # every row of its table resolves to a figure it reports
        assert label in _rendered(eval_table(table))
    for _, keys in task.plot_panels:
        assert set(keys) <= set(task.metrics)
    if task.min_k > 1:
        assert too_few_samples(name, task.min_k - 1, "-k") and too_few_samples(name, task.min_k, "-k") is None


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_runs_powerflow_eval(name, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", "--model", tiny_model_dir, "--data", data, "--task", name, "-k",
                                         max(2, TASKS[name].min_k), "--max-new-tokens", 6, "--quant", "none",
                                         "--output", out])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == name and len(summary["results"]) == 1
    figures = summary["results"]["base"]
    assert {key.removeprefix("eval_") for key in TASKS[name].metrics} <= set(figures)


def _rendered(table) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


# --- objectives


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_refuses_what_its_flags_rule_out(name):
    objective, base = OBJECTIVES[name], dict(model="m", prompts="p", alpha=2.0, objective=name, log_z="head")
    for changes, refused in (({"samples_per_prompt": 1}, objective.grouped),
                             ({"replay_steps": 1}, objective.on_policy),
                             ({"explore_temperature": 0.5}, objective.on_policy)):
        if refused:
            with pytest.raises(PowerflowError, match=f"--objective {name}"):
                TrainConfig(**base, **changes)
        else:
            assert dataclasses.replace(TrainConfig(**base), **changes).objective == name


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_trains_a_step(name, tiny_model_dir, prompts_file, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dir), alpha=2.0, prompts=str(prompts_file), output=str(tmp_path / "out"),
                      quant="none", max_steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                      lr=1e-2, warmup_steps=0, show_every=0, objective=name)
    [result] = list(train(setup(cfg)))
    assert result.metrics["grad_norm"] > 0 and torch.isfinite(torch.tensor(result.metrics["loss"]))
    assert result.metrics["update_skipped"] == 0
