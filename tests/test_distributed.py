"""Data parallel (distributed.py): two gloo ranks on the CPU under torchrun train what one process trains.

Each launch starts processes that import torch and load the tiny model (a few seconds each on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from powerflow_lite.distributed import SINGLE, Ranks
from powerflow_lite.metrics import read_metrics
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.samplers.rollouts import SamplingSettings
from powerflow_lite.samplers.static import sample_static
from powerflow_lite.seeds import step_uniforms as uniforms

TIMINGS = {"time_sample", "time_score", "time_update", "sample_tokens_per_s", "peak_rss_gib", "time_eval"}


def flags(model: Path, prompts: Path, out: Path, **overrides) -> list[str]:
    values = dict(model=model, prompts=prompts, output=out, alpha=2.0, quant="none", device="cpu", sampler="static",
                  max_steps=3, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6, micro_batch_size=3,
                  lr=1e-2, warmup_steps=0, save_every=2, show_every=0, lr_schedule="constant",
                  # one process samples in calls of one rank's rows, and micro-batches hold one rank's rows: the
                  # same shapes, so the same float rounding (Adam would amplify a last-bit difference)
                  sample_batch_size=3, eval_data=prompts.parent / "eval.jsonl", eval_every=3, eval_k=2)
    values.update(overrides)
    flag = {key: f"--{key.replace('_', '-')}" for key in values}
    return [part for key, value in values.items()
            for part in ([flag[key]] if value is True else [flag[key], str(value)])]


def launch(args: list[str], processes: int, wait: bool = True, launcher: str = "torchrun"):
    """`powerflow train ARGS` in one process, or under torchrun (or accelerate launch) with `processes` ranks (gloo,
    one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    prefix = [sys.executable, "-m", "powerflow_lite", "train"]
    if processes > 1 and launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                  str(processes), "-m", "powerflow_lite", "train"]
    elif processes > 1:  # on the CPU accelerate needs --multi_gpu to start torchrun's processes (gloo here)
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "-m", "powerflow_lite", "train"]
    if not wait:
        return subprocess.Popen(prefix + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(prefix + args, env=env, capture_output=True, text=True, timeout=600)


def weights(out: Path) -> dict[str, torch.Tensor]:
    adapter = out / "adapter"
    return {**load_file(adapter / "adapter_model.safetensors"),
            **{f"head.{k}": v for k, v in load_file(adapter / "z_head.safetensors").items()}}


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-6, msg=key)
    assert any(v.abs().max() > 0 for k, v in first.items() if "lora_B" in k)  # the adapter trained


def assert_same_rows(a: Path, b: Path, training_only: bool = False) -> None:
    """metrics.jsonl rows equal save timings (floats to 1e-5); `training_only`: without the eval figures."""
    first, second = (read_metrics(out / "metrics.jsonl") for out in (a, b))
    if training_only:
        first, second = ([{k: v for k, v in r.items() if not k.startswith("eval_") and k != "time_eval"}
                          for r in rows if "loss" in r] for rows in (first, second))
    assert [r["step"] for r in first] == [r["step"] for r in second]
    for one, two in zip(first, second):
        assert one.keys() == two.keys()
        for key in one.keys() - TIMINGS:
            if isinstance(one[key], int) and not isinstance(one[key], bool):
                assert one[key] == two[key], (one["step"], key)  # lengths, tokens, skipped: exactly
            else:
                assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-6, nan_ok=True), (one["step"], key)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference: one process, 2 prompts a step, 3 steps, evaluated before and after on 3 problems (an odd
    count: two ranks split them 1 + 2)."""
    root = tmp_path_factory.mktemp("one")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["Tell me a story.", "What is 2+2?", "Name a color.", "Say hi."]))
    (root / "eval.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in
                                             [("What is 1+1?", "2"), ("What is 2+3?", "5"), ("What is 4-1?", "3")]))
    result = launch(flags(tiny_model_dir, prompts, root / "run"), 1)
    assert result.returncode == 0, result.stderr
    return root / "run", prompts


def test_two_ranks_train_what_one_process_trains(tiny_model_dir, one_process, tmp_path):
    reference, prompts = one_process
    result = launch(flags(tiny_model_dir, prompts, tmp_path / "run"), 2)
    assert result.returncode == 0, result.stderr
    assert "2 processes (data parallel)" in result.stdout and result.stdout.count("done: 3 steps") == 1
    assert_same_weights(reference, tmp_path / "run")
    assert_same_rows(reference, tmp_path / "run")
    # rank 0 alone wrote: the eval before step 1 and one metrics row per step, the checkpoints and the adapter
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    # the evals: each rank sampled a share of the problems, rank 0 graded them all, as one process does
    for step in (0, 3):
        name = f"evals/step-{step}.samples.jsonl"
        ours, theirs = (read_metrics(run / name) for run in (reference, tmp_path / "run"))
        assert [(r["prompt_index"], r["completion"]) for r in ours] == \
            [(r["prompt_index"], r["completion"]) for r in theirs] and len(ours) == 6


def test_powerflow_eval_under_torchrun_grades_what_one_process_grades(tiny_model_dir, one_process, tmp_path):
    reference, prompts = one_process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["eval", "--model", str(tiny_model_dir), "--adapter", str(reference / "adapter"), "--data",
            str(prompts.parent / "eval.jsonl"), "-k", "3", "--compare-base", "--max-new-tokens", "6",
            "--device", "cpu", "--batch-size", "4"]
    outs = {}
    for processes in (1, 2):
        out = tmp_path / f"eval-{processes}"
        prefix = [sys.executable, "-m", "powerflow_lite"] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "powerflow_lite"]
        result = subprocess.run(prefix + args + ["--output", str(out)], env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("avg@3") == 1  # one table, from rank 0
        outs[processes] = out
    one, two = (json.loads((outs[n] / "summary.json").read_text()) for n in (1, 2))
    assert one["results"].keys() == two["results"].keys() == {"base", "adapter"}
    for variant in ("base", "adapter"):
        assert one["results"][variant]["avg_at_k_per_prompt"] == two["results"][variant]["avg_at_k_per_prompt"]
        assert one["results"][variant]["length_mean"] == two["results"][variant]["length_mean"]
    samples = [read_metrics(outs[n] / "samples.jsonl") for n in (1, 2)]
    assert [(r["variant"], r["prompt_index"], r["sample"], r["completion"]) for r in samples[0]] == \
        [(r["variant"], r["prompt_index"], r["sample"], r["completion"]) for r in samples[1]]
    assert len(samples[0]) == 2 * 3 * 3


def test_accelerate_launch_trains_what_one_process_trains(tiny_model_dir, one_process, tmp_path):
    pytest.importorskip("accelerate")  # not a dependency: checked where it is installed
    reference, prompts = one_process
    result = launch(flags(tiny_model_dir, prompts, tmp_path / "run"), 2, launcher="accelerate")
    assert result.returncode == 0, result.stderr
    assert "2 processes (data parallel)" in result.stdout
    assert_same_weights(reference, tmp_path / "run")
    assert_same_rows(reference, tmp_path / "run")


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_in_another_number_of_processes(tiny_model_dir, one_process, tmp_path, first, then):
    reference, prompts = one_process
    out = tmp_path / "run"
    assert launch(flags(tiny_model_dir, prompts, out, max_steps=2), first).returncode == 0
    result = launch(flags(tiny_model_dir, prompts, out, resume=True), then)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    assert_same_weights(reference, out)
    assert_same_rows(reference, out, training_only=True)  # the first invocation also evaluated after its step 2


def test_killing_a_rank_and_resuming_ends_like_the_uninterrupted_run(tiny_model_dir, one_process, tmp_path):
    reference, prompts = one_process
    out = tmp_path / "run"
    args = flags(tiny_model_dir, prompts, out, save_every=1)
    with launch(args, 2, wait=False) as runner:  # leaving the block closes its pipes
        try:
            deadline = time.monotonic() + 300
            while not (out / "checkpoint-1").is_dir():
                assert runner.poll() is None and time.monotonic() < deadline, "no checkpoint-1"
                time.sleep(0.1)
            workers = _children(runner.pid)
            assert len(workers) == 2, workers
            os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run; torchrun takes the other down
            runner.wait(timeout=120)
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode != 0
    assert not (out / "adapter").exists()  # it did not finish
    result = launch(args + ["--resume"], 2)
    assert result.returncode == 0, result.stderr
    assert_same_weights(reference, out)
    assert_same_rows(reference, out)


def _children(pid: int) -> list[int]:
    """The worker processes torchrun started (children of its agent), by pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_bad_input_under_torchrun_is_one_line(tiny_model_dir, one_process, tmp_path):
    # Each rank exits with 2 and only rank 0 prints; torchrun then adds its own failure report (its traceback,
    # "exitcode : 2" per rank) and exits 1: that part is the launcher's, not ours.
    _, prompts = one_process
    result = launch(flags(tiny_model_dir, prompts, tmp_path / "run", alpha=-1), 2)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --alpha must be > 0, got -1.0"], result.stderr
    assert "powerflow_lite/" not in result.stderr  # no traceback from our code
    assert "exitcode  : 2" in result.stderr  # (a rank still starting when the first failed is stopped by torchrun)
    result = launch(flags(tiny_model_dir, prompts, tmp_path / "run", prompts_per_step=3), 2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and "multiple of the number of processes (2)" in errors[0]
    assert not (tmp_path / "run").exists()  # nothing was written


# --- without a launcher (fast)


def test_without_a_launcher_every_collective_is_the_identity():
    assert Ranks.from_environment() == SINGLE and not SINGLE.active and SINGLE.main
    assert SINGLE.cat([1, 2]) == [1, 2] and SINGLE.sum(2.5) == 2.5 and SINGLE.any(False) is False
    SINGLE.agree(None)  # returns
    assert [Ranks(r, 3).share(list(range(8))) for r in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 8)]
    assert [Ranks(r, 2).share(list(range(4))) for r in range(2)] == [slice(0, 2), slice(2, 4)]


def test_a_row_samples_the_same_completion_whichever_rows_are_sampled_beside_it(tmp_path):
    from powerflow_lite.tiny import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "model", logit_scale=4.0)
    model = load_base_model(str(model_dir), "none", torch.device("cpu")).eval()
    tokenizer = load_tokenizer(str(model_dir))
    prompts = [tokenizer(p).input_ids for p in ("hello there", "a b", "what now")]
    draws = uniforms(7, 3, 0, 3 * 2, 12, torch.device("cpu"))  # the step's 6 rows
    whole = sample_static(model, tokenizer, prompts, 2, SamplingSettings(12), uniforms=draws)
    second = sample_static(model, tokenizer, prompts[1:2], 2, SamplingSettings(12), uniforms=draws[2:4])
    width = int(second.lengths.max())
    assert torch.equal(second.completion_ids, whole.completion_ids[2:4, :width])
    assert torch.equal(uniforms(7, 3, 0, 6, 12, torch.device("cpu")), draws)  # a function of (seed, step, stream)
    assert not torch.equal(uniforms(7, 3, 1, 6, 12, torch.device("cpu")), draws)


def test_an_eval_row_samples_the_same_whatever_batch_or_share_it_is_in(tmp_path):
    from powerflow_lite.inference import generate_records
    from powerflow_lite.tiny import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "model", logit_scale=4.0)
    model = load_base_model(str(model_dir), "none", torch.device("cpu")).eval()
    tokenizer = load_tokenizer(str(model_dir))
    prompts = [tokenizer(p).input_ids for p in ("hello there", "a b", "what now")]

    def completions(prompt_ids, batch, first_row=0):
        return [r["completion"] for r in generate_records(model, tokenizer, prompt_ids, 2, SamplingSettings(10),
                                                          batch, score_base=False, seed=5, first_row=first_row)]

    whole = completions(prompts, 6)
    assert completions(prompts, 4) == whole  # batches of 4 then 2
    assert completions(prompts[1:], 3, first_row=2) == whole[2:]  # a rank's share: prompts 1 and 2
    assert len(set(whole)) > 1


def test_a_rank_other_than_0_says_only_the_errors_it_alone_had(monkeypatch, capsys):
    from powerflow_lite import cli, distributed
    from powerflow_lite.errors import PowerflowError

    monkeypatch.setattr(cli, "_QUIET", True)
    monkeypatch.setenv("RANK", "1")
    shared = PowerflowError("bad input")
    shared.shared = True  # what Ranks.agree raises: rank 0 says it
    monkeypatch.setattr(distributed, "JOINED", False)
    cli._say_error("error: before joining", PowerflowError("x"))  # every rank parsed the same flags
    monkeypatch.setattr(distributed, "JOINED", True)
    cli._say_error("error: bad input", shared)
    cli._say_error("error: out of memory", PowerflowError("oom"))  # this rank alone
    assert capsys.readouterr().err.splitlines() == ["[rank 1] error: out of memory"]
