"""The worst-case probe before step 1 (probe.py), forced on the CPU with injected out-of-memory errors, and the
time estimate recorded beside the measured phases."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from helpers import config, untimed

import powerflow_lite.probe as probe
from powerflow_lite.cards import find_card
from powerflow_lite.errors import PowerflowError
from powerflow_lite.samplers import SAMPLERS
from powerflow_lite.setup import setup
from powerflow_lite.train import train


def oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


@pytest.fixture
def forced(monkeypatch):
    """The probe on the CPU, as it runs on a GPU."""
    monkeypatch.setattr(probe, "probes", lambda run: True)


def test_the_probe_runs_on_a_gpu_unless_turned_off():
    def run(device, on=True):
        return SimpleNamespace(cfg=SimpleNamespace(probe=on), device=torch.device(device))

    assert probe.probes(run("cuda")) and not probe.probes(run("cuda", on=False)) and not probe.probes(run("cpu"))


def test_the_probe_changes_nothing_that_is_learnt(tiny_model_dir, prompts_file, tmp_path, forced, monkeypatch):
    calls = []
    real = probe.worst_case
    monkeypatch.setattr(probe, "worst_case", lambda run: calls.append(run.state.step) or real(run))
    probed = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "probed")))]
    monkeypatch.undo()
    plain = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "plain")))]
    assert calls == [0]  # once, before step 1
    assert untimed(probed) == untimed(plain)


def test_the_probe_samples_every_completion_at_full_length(tiny_model_dir, prompts_file, tmp_path, forced,
                                                          monkeypatch):
    seen = []
    real = SAMPLERS["static"].sample

    def spy(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        seen.append((len(prompts) * samples_per_prompt, settings.ignore_eos, {len(p) for p in prompts}))
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    monkeypatch.setitem(SAMPLERS, "static", replace(SAMPLERS["static"], sample=spy))
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=1))
    longest = max(len(ids) for ids in run.prompt_ids)
    probe.worst_case(run)
    assert seen == [(6, True, {longest})]  # a step's 2 prompts x 3, all the longest prompt, EOS ignored


def test_out_of_memory_in_the_probe_halves_before_step_1(tiny_model_dir, prompts_file, tmp_path, forced,
                                                         monkeypatch):
    real = SAMPLERS["static"].sample

    def flaky(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        if len(prompts) * samples_per_prompt > 2:
            raise oom()
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    monkeypatch.setitem(SAMPLERS, "static", replace(SAMPLERS["static"], sample=flaky))
    real_forward = probe.completion_logprobs

    def heavy(model, rollouts, *args):
        if len(rollouts) > 1 and torch.is_grad_enabled():
            raise oom()
        return real_forward(model, rollouts, *args)

    monkeypatch.setattr(probe, "completion_logprobs", heavy)
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=2, micro_batch_size=4,
                       log_z="head"))  # head: micro-batches of single rows
    results = list(train(run))
    first = results[0].notes
    assert [n for n in first if "while sampling" in n] == [
        "out of GPU memory while sampling: retrying with --sample-batch-size 3 (pass it to start there next time)",
        "out of GPU memory while sampling: retrying with --sample-batch-size 1 (pass it to start there next time)"]
    assert [n for n in first if "worst-case probe" in n] == [
        "out of GPU memory in the update (worst-case probe): retrying with --micro-batch-size 2 (pass it to start "
        "there next time)", "out of GPU memory in the update (worst-case probe): retrying with --micro-batch-size 1 "
        "(pass it to start there next time)"]
    assert results[1].notes == ()  # steps start at what fitted: nothing to halve again
    assert run.state.sample_batch.value == 1 and run.state.micro_batch.value == 1


def test_a_run_that_cannot_fit_stops_before_step_1(tiny_model_dir, prompts_file, tmp_path, forced, monkeypatch):
    def always(*args, **kwargs):
        raise oom()

    monkeypatch.setattr(probe, "completion_logprobs", always)
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run"))
    with pytest.raises(PowerflowError, match=r"in the update \(worst-case probe\) even at 3 completion"):  # a group
        next(train(run))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_the_evaluation_is_probed_at_its_batch(tiny_model_dir, prompts_file, tmp_path, forced, monkeypatch):
    from helpers import write_jsonl

    import powerflow_lite.inference as inference

    problems = write_jsonl(tmp_path / "p.jsonl", [{"problem": "What is 1 + 1?" * n, "answer": "2"} for n in (1, 3)])
    real, calls = SAMPLERS["static"].sample, []

    def flaky(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        calls.append((len(prompts), settings.ignore_eos))
        if settings.ignore_eos and len(prompts) > 2:
            raise oom()
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    monkeypatch.setattr(inference, "SAMPLERS", {**SAMPLERS, "static": replace(SAMPLERS["static"], sample=flaky)})
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", eval_data=str(problems), eval_every=2,
                       eval_k=2))
    notes = probe.worst_case(run)
    assert calls[:2] == [(128, True), (64, True)]  # the CPU's evaluation batch, halved
    assert "out of GPU memory in the evaluation (worst-case probe): retrying with --sample-batch-size 64" in notes[0]
    assert run.state.sample_batch.value == 2


def test_the_card_table_knows_the_names_torch_gives():
    assert find_card("NVIDIA GeForce RTX 4090").key == "rtx4090"
    assert find_card("NVIDIA GeForce RTX 3060").key == "rtx3060"
    assert find_card("NVIDIA A100-SXM4-40GB").key == "a100-40gb"
    assert find_card("NVIDIA H100 80GB HBM3").key == "h100-80gb"
    for other in ("NVIDIA GeForce RTX 3060 Ti", "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 3060 Laptop GPU",
                  "Tesla T4"):
        assert find_card(other) is None


def test_the_estimate_goes_beside_the_measured_times(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=1))
    estimate = probe.card_estimate(run, "NVIDIA GeForce RTX 4090")
    assert set(estimate) == {"estimate_time_sample", "estimate_time_score", "estimate_time_update"}
    assert all(0 < seconds < 1 for seconds in estimate.values())  # a tiny model on a 4090: far below a second
    assert probe.card_estimate(run, "Tesla T4") == {}
    run.estimate.update(estimate)
    row = next(train(run)).metrics
    assert {key: row[key] for key in estimate} == estimate and row["time_sample"] > 0
