"""SIGKILL a real training process at chosen moments; `--resume` must end exactly like the run that was never killed."""

import subprocess
import sys
import time

import pytest
import torch
from helpers import untimed
from safetensors.torch import load_file

from powerflow_lite.metrics import read_metrics

STEPS = 5


REPLAY = ("--replay-steps", "2", "--replay-size", "4")  # steps 2, 3 and 5 replay; the buffer is in checkpoints


def train_args(model_dir, prompts, out, *extra) -> list[str]:
    return ["train", "--model", model_dir, "--prompts", prompts, "--output", out, "--alpha", "2", "--quant", "none",
            "--max-steps", STEPS, "--prompts-per-step", "2", "--samples-per-prompt", "3", "--max-new-tokens", "6",
            "--lr", "1e-2", "--warmup-steps", "1", "--save-every", "2", "--keep-checkpoints", "1",
            "--show-every", "0", *extra]


def run_straight(tiny_model_dir, root, *extra):
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Tell me a story."}\n{"prompt": "What is 2+2?"}\n{"prompt": "Name a color."}\n')
    completed = subprocess.run([sys.executable, "-m", "powerflow_lite",
                                *map(str, train_args(tiny_model_dir, prompts, root / "run", *extra))],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return root / "run", prompts


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    return run_straight(tiny_model_dir, tmp_path_factory.mktemp("straight"))


@pytest.fixture(scope="module")
def uninterrupted_replay(tiny_model_dir, tmp_path_factory):
    return run_straight(tiny_model_dir, tmp_path_factory.mktemp("straight-replay"), *REPLAY)


def metrics_rows(out) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


MOMENTS = {  # when to kill, as a condition on the output directory
    "after loading, before step 1": lambda out: (out / "config.yaml").is_file(),
    "step 1 logged, no checkpoint yet": lambda out: metrics_rows(out) >= 1,
    "while writing checkpoint-2": lambda out: (out / ".checkpoint-2.tmp").exists() or (out / "checkpoint-2").exists(),
    "step 3 logged, after checkpoint-2": lambda out: metrics_rows(out) >= 3,
    "while pruning checkpoint-2": lambda out: (out / "checkpoint-4").exists(),
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_then_resume_ends_exactly_like_the_uninterrupted_run(uninterrupted, tiny_model_dir, tmp_path, moment):
    kill_and_resume(uninterrupted, tiny_model_dir, tmp_path, moment)


@pytest.mark.parametrize("moment", ["while writing checkpoint-2", "step 3 logged, after checkpoint-2"])
def test_sigkill_with_a_replay_buffer_then_resume_ends_exactly_alike(uninterrupted_replay, tiny_model_dir, tmp_path,
                                                                      moment):
    out = kill_and_resume(uninterrupted_replay, tiny_model_dir, tmp_path, moment, *REPLAY)
    straight = uninterrupted_replay[0]
    want, got = (load_file(run / f"checkpoint-{STEPS}" / "replay.safetensors") for run in (straight, out))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert [r["replayed"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 1, 0, 1]


def kill_and_resume(uninterrupted, tiny_model_dir, tmp_path, moment, *extra):
    straight, prompts = uninterrupted
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "powerflow_lite", *map(str, train_args(tiny_model_dir, prompts,
                                                                                              out, *extra))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not MOMENTS[moment](out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed or cleaned up
    _, stderr = process.communicate()
    assert process.returncode == -9, f"the run ended before it was killed {moment}: {stderr.decode()[-500:]}"

    resumed = subprocess.run([sys.executable, "-m", "powerflow_lite", "train", "--output", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    # bit-identical adapter, log Z head and optimizer state, and the same metrics rows, one per step
    for path in ("adapter/adapter_model.safetensors", "adapter/z_head.safetensors",
                 f"checkpoint-{STEPS}/optimizer.safetensors", f"checkpoint-{STEPS}/adapter_model.safetensors"):
        want, got = load_file(straight / path), load_file(out / path)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), path
    assert (out / f"checkpoint-{STEPS}" / "optimizer.json").read_text() == \
           (straight / f"checkpoint-{STEPS}" / "optimizer.json").read_text()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert untimed(rows) == untimed(read_metrics(straight / "metrics.jsonl"))
    # --keep-checkpoints 1: only the newest is left, and no half-written or half-deleted directory
    assert sorted(p.name for p in out.iterdir()) == ["adapter", f"checkpoint-{STEPS}", "config.yaml",
                                                     "metrics.jsonl"]
    return out
