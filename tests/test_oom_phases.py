"""Out of GPU memory, injected on the CPU, in the phases outside a training step: the evaluation during training,
`powerflow eval`, `powerflow sample` and `powerflow preview`. Each halves its batch, says so once, and gives the
same samples as a run that started at the smaller batch (the static sampler draws each row from its own uniforms).
The training step's own phases: tests/test_faults.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import config, one_error_line, read_jsonl, run_cli, write_jsonl

import powerflow_lite.inference as inference
import powerflow_lite.preview as preview_module
from powerflow_lite.samplers import SAMPLERS
from powerflow_lite.setup import setup
from powerflow_lite.train import train


def oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def flaky_static(limit: int, calls: list[int]):
    """The static sampler, out of memory above `limit` rows a call; `calls` records each call's rows."""
    real = SAMPLERS["static"].sample

    def sample(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        calls.append(len(prompts) * samples_per_prompt)
        if calls[-1] > limit:
            raise oom()
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    return {**SAMPLERS, "static": replace(SAMPLERS["static"], sample=sample)}


def texts(path) -> list[tuple]:
    return [(r["prompt_index"], r["sample"], r["completion"], r["tokens"]) for r in read_jsonl(path)]


@pytest.fixture
def problems(tmp_path):
    return write_jsonl(tmp_path / "problems.jsonl", [{"problem": f"What is {n} + 1?", "answer": str(n + 1)}
                                                     for n in range(4)])


def test_the_evaluation_during_training_halves_and_training_sampling_keeps_it(tiny_model_dir, prompts_file,
                                                                               problems, tmp_path, monkeypatch):
    def first_eval(out, **overrides):
        run = setup(config(tiny_model_dir, prompts_file, out, eval_data=str(problems), eval_every=2, eval_k=2,
                           max_steps=2, **overrides))
        result = next(train(run))  # the eval before training: 4 problems x 2 samples
        return run, result, json.loads((out / "evals" / "step-0.json").read_text())

    _, _, reference = first_eval(tmp_path / "ref")
    calls: list[int] = []
    monkeypatch.setattr(inference, "SAMPLERS", flaky_static(2, calls))  # the evaluation's sampler only
    run, result, halved = first_eval(tmp_path / "run")
    assert calls == [8, 4, 2, 2, 2, 2]  # all 8 rows, then halves, down to 2 at a time
    assert [n.split(": ")[1] for n in result.notes] == ["retrying with --sample-batch-size 4 (pass it to start "
                                                        "there next time)", "retrying with --sample-batch-size 2 "
                                                        "(pass it to start there next time)"]
    assert all(n.startswith("out of GPU memory in the evaluation") for n in result.notes)
    assert run.state.sample_batch.value == 2  # training's sampling starts at what fitted
    assert halved["avg_at_k_per_prompt"] == reference["avg_at_k_per_prompt"]
    # the same samples, row by row (their log-probs to float precision: batches of another size)
    assert texts(tmp_path / "run" / "evals" / "step-0.samples.jsonl") == texts(
        tmp_path / "ref" / "evals" / "step-0.samples.jsonl")


def test_the_evaluation_honours_sample_batch_size(tiny_model_dir, prompts_file, problems, tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(inference, "SAMPLERS", flaky_static(10**6, calls))
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", eval_data=str(problems), eval_every=2,
                       eval_k=2, max_steps=2, sample_batch_size=3, device="cpu"))
    next(train(run))
    # on the CPU an evaluation samples at least CPU_EVAL_ROWS together; a GPU would take 3, as training does
    assert calls == [8]
    from powerflow_lite.record import eval_batch

    assert eval_batch(run.cfg, 3, "cuda") == 3 and eval_batch(run.cfg, 0, "cuda") == 6  # 2 prompts x 3 samples
    assert eval_batch(run.cfg, 3, "cpu") == 128


def test_powerflow_eval_halves_its_batch(tiny_model_dir, problems, tmp_path, capsys, monkeypatch):
    args = ["eval", "--model", tiny_model_dir, "--data", problems, "-k", 2, "--max-new-tokens", 4, "--quant", "none",
            "--sampler", "static"]
    code, _, err = run_cli(capsys, [*args, "--output", tmp_path / "ref"])
    assert (code, err) == (0, "")
    calls: list[int] = []
    monkeypatch.setattr(inference, "SAMPLERS", flaky_static(3, calls))
    code, _, err = run_cli(capsys, [*args, "--output", tmp_path / "run", "--batch-size", 8])
    assert code == 0
    assert err.splitlines() == ["note: out of GPU memory in the evaluation: retrying with --batch-size 4 (pass it to "
                                "start there next time)", "note: out of GPU memory in the evaluation: retrying with "
                                "--batch-size 2 (pass it to start there next time)"]
    assert calls == [8, 4, 2, 2, 2, 2]
    assert texts(tmp_path / "run" / "samples.jsonl") == texts(tmp_path / "ref" / "samples.jsonl")


def test_powerflow_sample_halves_its_batch(tiny_model_dir, prompts_file, tmp_path, capsys, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(inference, "SAMPLERS", flaky_static(1, calls))
    out = tmp_path / "samples.jsonl"
    code, _, err = run_cli(capsys, ["sample", "--model", tiny_model_dir, "--prompts", prompts_file, "-n", 2,
                                    "--max-new-tokens", 4, "--quant", "none", "--sampler", "static",
                                    "--batch-size", 4, "--out", out])
    assert code == 0
    assert calls[:3] == [4, 2, 1] and set(calls[3:]) == {1}
    assert len(read_jsonl(out)) == 2 * len(read_jsonl(prompts_file))  # every completion, once
    assert "note: out of GPU memory while sampling: retrying with --batch-size 1" in err


def test_powerflow_sample_at_one_row_stops_with_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "SAMPLERS", flaky_static(0, []))
    out = tmp_path / "samples.jsonl"
    code, _, err = run_cli(capsys, ["sample", "--model", tiny_model_dir, "--prompt", "Hi.", "--quant", "none",
                                    "--sampler", "static", "--out", out])
    assert code == 2 and not out.exists()
    assert "out of GPU memory while sampling even at 1 completion(s) at a time: lower --max-new-tokens" in (
        one_error_line(err))


def test_powerflow_preview_halves_its_calls(tiny_model_dir, tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Name {n}."} for n in range(3)])
    real, calls = preview_module.sample_static, []

    def flaky(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        calls.append(len(prompts) * samples_per_prompt)
        if calls[-1] > 4:
            raise oom()
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    monkeypatch.setattr(preview_module, "sample_static", flaky)
    out = tmp_path / "table.json"
    code, _, err = run_cli(capsys, ["preview", "--model", tiny_model_dir, "--prompts", data, "--candidates", 4,
                                    "--temperatures", "1", "--alphas", "0.5,2", "--max-new-tokens", 4,
                                    "--quant", "none", "--json", out])
    assert code == 0
    assert calls == [12, 4, 4, 4]  # 3 prompts x 4; half of 12 in whole prompts' 4 completions: one prompt a call
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        "note: out of GPU memory in the preview: retrying with 4 completions at a time"]
    table = json.loads(out.read_text())
    assert table["prompts"] == 3 and len(table["alphas"]["2"]["ess_per_prompt"]) == 3
