"""Faults a long run survives, injected on the CPU: non-finite steps, out-of-memory errors, signals, a full disk."""

import json
import signal
from dataclasses import replace
from functools import partial

import pytest
import torch
from helpers import config, one_error_line, run_cli, untimed
from safetensors.torch import load_file

import powerflow_lite.checkpoint as ckpt
import powerflow_lite.scoring as scoring
import powerflow_lite.update as update_module
from powerflow_lite.config import TrainConfig
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.samplers import SAMPLERS
from powerflow_lite.setup import setup
from powerflow_lite.train import train

PER_STEP = 6  # completions per step below: 2 prompts x 3 samples


# the shared tiny-run config (helpers.config), with what these tests change
config = partial(config, max_steps=4, save_every=1)


def cli_args(cfg: TrainConfig) -> list[str]:
    flags = ["train", "--model", cfg.model, "--prompts", cfg.prompts, "--output", cfg.output, "--alpha", cfg.alpha,
             "--quant", "none", "--max-steps", cfg.max_steps, "--prompts-per-step", 2, "--samples-per-prompt", 3,
             "--max-new-tokens", 6, "--micro-batch-size", cfg.micro_batch_size, "--lr", cfg.lr, "--warmup-steps", 0,
             "--save-every", cfg.save_every, "--show-every", 0, "--max-bad-steps", cfg.max_bad_steps]
    return [*flags, *(["--format-penalty", cfg.format_penalty] if cfg.format_penalty != "none" else [])]


def psi_file(tmp_path, bad_steps=(), signal_at=None, name="psi.py") -> str:
    """A format penalty that overflows the loss (+-1e30 within a group) on `bad_steps`, or sends a signal."""
    path = tmp_path / name
    path.write_text(f"""import os
calls = []
def psi(completion, prompt):
    calls.append(1)
    step = (len(calls) - 1) // {PER_STEP} + 1
    for signum, at in {signal_at or []!r}:
        if step == at and (len(calls) - 1) % {PER_STEP} == 0:
            os.kill(os.getpid(), signum)
    if step in {tuple(bad_steps)!r}:
        return 1e30 if len(calls) % 2 else -1e30
    return 0.0
""")
    return f"{path}:psi"


def tensors(path):
    return {name: load_file(path / name) for name in ("adapter_model.safetensors", "z_head.safetensors",
                                                      "optimizer.safetensors")}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[f].keys() == b[f].keys() and
                                        all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


def state(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())


# --- a loss or gradient that is not finite


def test_a_non_finite_step_is_skipped_counted_and_the_run_goes_on(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    rows = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, out,
                                                  format_penalty=psi_file(tmp_path, bad_steps=(2,)))))]
    assert [r["update_skipped"] for r in rows] == [0, 1, 0, 0]
    assert not torch.isfinite(torch.tensor(rows[1]["loss"])) and torch.isfinite(torch.tensor(rows[2]["loss"]))
    # step 2 changed nothing: adapter, head and optimizer moments are those of step 1; step 3 moves again
    assert same_tensors(tensors(out / "checkpoint-1"), tensors(out / "checkpoint-2"))
    assert not same_tensors(tensors(out / "checkpoint-2"), tensors(out / "checkpoint-3"))
    assert [state(out / f"checkpoint-{s}")["bad_steps_in_row"] for s in (1, 2, 3)] == [0, 1, 0]
    # the schedule follows the step count, applied or not: cosine over 4 steps after no warmup
    assert rows[1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 4)).item()))


def test_log_z_starts_at_the_first_finite_batch(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    list(train(setup(config(tiny_model_dir, prompts_file, out, max_steps=2,
                            format_penalty=psi_file(tmp_path, bad_steps=(1,))))))
    assert [state(out / f"checkpoint-{s}")["z_initialized"] for s in (1, 2)] == [False, True]
    head_before, head_after = (load_file(out / f"checkpoint-{s}" / "z_head.safetensors") for s in (1, 2))
    assert all(torch.isfinite(t).all() for t in head_after.values())
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=3))
    name, param = next((n, p) for n, p in run.model.named_parameters() if p.requires_grad)
    poison = {"on": False}
    param.register_hook(lambda grad: grad * float("nan") if poison["on"] else grad)
    after, heads = [], []
    for result in train(run):
        after.append((result.metrics, param.detach().clone()))
        heads.append({k: v.clone() for k, v in run.head.state_dict().items()})
        poison["on"] = result.step == 1  # the next step's gradient is poisoned
    (_, p1), (m2, p2), (m3, p3) = after
    assert m2["update_skipped"] == 1 and torch.isfinite(torch.tensor(m2["loss"])) and m3["update_skipped"] == 0
    assert torch.equal(p1, p2) and not torch.equal(p2, p3)
    # the log Z' head too: under --log-z batch (the default) its bias is re-centred before the update, and a
    # skipped update takes that back
    assert run.cfg.log_z == "batch"
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not torch.equal(heads[1]["net.3.bias"], heads[2]["net.3.bias"])


def test_max_bad_steps_in_a_row_stop_the_run_naming_the_causes(tiny_model_dir, prompts_file, tmp_path, capsys):
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=5, max_bad_steps=2,
                 format_penalty=psi_file(tmp_path, bad_steps=(2, 3)))
    code, _, err = run_cli(capsys, cli_args(cfg))
    assert code == 2
    message = one_error_line(err)
    assert "stopped at step 3" in message and "not finite in 2 steps in a row" in message
    assert "--lr" in message and "fp16" in message and "checkpoint-2" in message
    assert [r["update_skipped"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 1]
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "checkpoint-3").exists()


# --- CUDA out of memory, injected


def oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_in_the_update_halves_the_micro_batch(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    # The reference updates in micro-batches of 1 from the start, and scores step 1 as the run below does (in
    # batches of 4, before its update runs out of memory), so the two must agree to float precision: a first
    # Adam step moves each weight by about lr whatever the size of its gradient, so a scoring difference in the
    # last bit can otherwise move a weight whose gradient is near zero by lr.
    real_score, scored = scoring.score, []

    def score_step_1_in_fours(model, rollouts, size, adapter=True):
        scored.append(size)
        return real_score(model, rollouts, 4 if len(scored) <= 2 else size, adapter)

    monkeypatch.setattr(scoring, "score", score_step_1_in_fours)
    reference = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "ref",
                                                       micro_batch_size=1, max_steps=2, sampler="hf",
                                                       log_z="head")))]  # head: micro-batches of single rows
    monkeypatch.undo()
    assert scored == [1, 1, 1, 1]  # pi_old and p_base at each step (hf generate returns no log-probs)
    real, calls = update_module.completion_logprobs, []

    def flaky(model, rollouts, *args):
        calls.append(len(rollouts))
        if len(calls) in (2, 4):  # the second micro-batch of the first two attempts: after a backward
            raise oom()
        return real(model, rollouts, *args)

    monkeypatch.setattr(update_module, "completion_logprobs", flaky)
    results = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=2, sampler="hf",
                                      log_z="head"))))
    monkeypatch.undo()
    assert calls[:6] == [4, 2, 2, 2, 1, 1]  # 4 + (2: OOM), 2 + (2: OOM), then six of 1
    assert [len(r.notes) for r in results] == [2, 0]  # said once, at the step it happened
    assert "--micro-batch-size 2" in results[0].notes[0] and "--micro-batch-size 1" in results[0].notes[1]
    # the gradient of a failed attempt is not kept: the step equals a run with micro-batches of 1 from the start
    for got, want in zip(untimed(r.metrics for r in results), untimed(reference)):
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6) for k in got)
    # the halved size is part of the run: checkpointed, and restored by --resume
    assert state(tmp_path / "run" / "checkpoint-1")["micro_batch_size"] == 1
    resumed = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=3, resume=True))
    assert resumed.state.micro_batch.value == 1


@pytest.mark.parametrize("sampler", ["hf", "static"])
def test_out_of_memory_while_sampling_halves_the_sampling_batch(tiny_model_dir, prompts_file, tmp_path,
                                                                 monkeypatch, sampler):
    reference = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "ref",
                                                       sample_batch_size=1, max_steps=2, sampler=sampler)))]
    real = SAMPLERS[sampler].sample

    def flaky(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None):
        if len(prompts) * samples_per_prompt > 2:
            raise oom()
        return real(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=uniforms)

    monkeypatch.setitem(SAMPLERS, sampler, replace(SAMPLERS[sampler], sample=flaky))
    results = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=2,
                                      sampler=sampler))))
    assert ["--sample-batch-size 3" in n or "--sample-batch-size 1" in n for n in results[0].notes] == [True, True]
    assert results[1].notes == ()
    assert untimed(r.metrics for r in results) == untimed(reference)  # a retry draws as a first attempt would


def test_out_of_memory_at_size_one_stops_with_settings_to_try(tiny_model_dir, prompts_file, tmp_path, capsys,
                                                              monkeypatch):
    def always(*args, **kwargs):
        raise oom()

    monkeypatch.setattr(scoring, "score", always)
    code, _, err = run_cli(capsys, cli_args(config(tiny_model_dir, prompts_file, tmp_path / "run")))
    assert code == 2
    message = one_error_line(err)
    assert "out of GPU memory while scoring even at 1 completion(s)" in message and "--max-new-tokens" in message


def test_out_of_memory_where_nothing_retries_is_one_line(tiny_model_dir, prompts_file, tmp_path, capsys,
                                                         monkeypatch):
    def step(self, *args, **kwargs):
        raise oom()

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    code, _, err = run_cli(capsys, cli_args(config(tiny_model_dir, prompts_file, tmp_path / "run")))
    assert code == 2 and "out of GPU memory outside the stages that retry" in one_error_line(err)


def test_a_policy_with_non_finite_probabilities_is_one_line(tiny_model_dir, prompts_file, tmp_path, capsys,
                                                           monkeypatch):
    # the real thing: the adapter's weights overflow, and the static sampler (the CPU default) meets NaN logits
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "first", max_steps=1))
    assert run.cfg.sampler == "static"
    for name, param in run.model.named_parameters():
        if "lora_B" in name:
            param.data.fill_(float("nan"))
    with pytest.raises(PowerflowError, match="probabilities are not finite at step 1"):
        next(train(run))

    def overflowed(*args, **kwargs):  # what torch.multinomial says when the adapter's weights have overflowed
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setitem(SAMPLERS, "hf", replace(SAMPLERS["hf"], sample=overflowed))
    args = cli_args(config(tiny_model_dir, prompts_file, tmp_path / "run")) + ["--sampler", "hf"]
    code, _, err = run_cli(capsys, args)
    assert code == 2 and "probabilities are not finite at step 1" in one_error_line(err) and "--lr" in err


def test_other_errors_are_not_retried(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("an unrelated bug")

    monkeypatch.setattr(scoring, "score", broken)
    with pytest.raises(RuntimeError, match="unrelated"):
        list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "run"))))
    assert calls == [1]


# --- signals


@pytest.fixture
def sigint(request):
    """SIGINT's handler as a process started from a terminal (default_int_handler) or in the background by a shell
    (SIG_IGN) has it, whichever way this test process was started; the handler it had is put back after."""
    before = signal.signal(signal.SIGINT, getattr(request, "param", signal.default_int_handler))
    yield signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_checkpoints_and_resumes_exactly(tiny_model_dir, prompts_file, tmp_path, capsys,
                                                                    signum, code, sigint):
    reference = config(tiny_model_dir, prompts_file, tmp_path / "straight", save_every=0)
    assert run_cli(capsys, cli_args(reference))[0] == 0
    # the signal arrives in the middle of step 2 (while psi is computed)
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "run", save_every=0,
                 format_penalty=psi_file(tmp_path, signal_at=[(int(signum), 2)]))
    got, _, err = run_cli(capsys, cli_args(cfg))
    assert got == code
    assert f"stopped by {signal.Signals(signum).name} after step 2" in err
    assert f"powerflow train --output {tmp_path / 'run'} --resume" in err and "Traceback" not in err
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / "adapter").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]

    assert run_cli(capsys, ["train", "--output", out, "--resume"])[0] == 0
    for name in ("adapter_model.safetensors", "z_head.safetensors"):
        assert same_tensors({name: load_file(out / "adapter" / name)},
                            {name: load_file(tmp_path / "straight" / "adapter" / name)})
    assert untimed(read_metrics(out / "metrics.jsonl")) == untimed(read_metrics(tmp_path / "straight" /
                                                                                "metrics.jsonl"))


def test_a_second_ctrl_c_stops_at_once(tiny_model_dir, prompts_file, tmp_path, capsys, sigint):
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "run", save_every=0,
                 format_penalty=psi_file(tmp_path, signal_at=[(int(signal.SIGINT), 2), (int(signal.SIGINT), 2)]))
    code, _, err = run_cli(capsys, cli_args(cfg))
    assert code == 130 and err.strip().endswith("interrupted") and "Traceback" not in err
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # step 2 was abandoned, not half-saved
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers  # the handlers of before the run


@pytest.mark.parametrize("sigint", [signal.SIG_IGN], indirect=True)
def test_a_signal_ignored_when_the_run_started_stays_ignored(tiny_model_dir, prompts_file, tmp_path, capsys, sigint):
    # a shell starts a background job with SIGINT ignored: Ctrl-C at the terminal is not for it, nor is a stray SIGINT
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "run", save_every=0,
                 format_penalty=psi_file(tmp_path, signal_at=[(int(signal.SIGINT), 2)]))
    code, _, err = run_cli(capsys, cli_args(cfg))
    assert code == 0 and "stopping" not in err
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "adapter").is_dir() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    # SIGTERM still stops it after the step
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "term", save_every=0,
                 format_penalty=psi_file(tmp_path, signal_at=[(int(signal.SIGTERM), 2)], name="term.py"))
    code, _, err = run_cli(capsys, cli_args(cfg))
    assert code == 143 and "stopped by SIGTERM after step 2" in err


# --- checkpoints on disk


def test_keep_checkpoints_prunes_the_oldest(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    list(train(setup(config(tiny_model_dir, prompts_file, out, max_steps=5, keep_checkpoints=2))))
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-4", "checkpoint-5"]


def test_resume_ignores_and_clears_half_written_or_half_deleted_checkpoints(tiny_model_dir, prompts_file,
                                                                             tmp_path):
    out = tmp_path / "run"
    steps = train(setup(config(tiny_model_dir, prompts_file, out)))
    for result in steps:
        if result.step == 2:
            break
    steps.close()
    for leftover in (".checkpoint-3.tmp", ".checkpoint-1.deleting", "checkpoint-3"):
        (out / leftover).mkdir()
        (out / leftover / "adapter_model.safetensors").write_bytes(b"cut short")
    run = setup(config(tiny_model_dir, prompts_file, out, resume=True))
    assert run.state.step == 2  # checkpoint-3 has no trainer_state.json: incomplete, never picked
    assert not (out / ".checkpoint-3.tmp").exists() and not (out / ".checkpoint-1.deleting").exists()


def test_resume_before_the_first_checkpoint_starts_over(tiny_model_dir, prompts_file, tmp_path):
    straight = tmp_path / "straight"
    list(train(setup(config(tiny_model_dir, prompts_file, straight, save_every=0, max_steps=2))))
    out = tmp_path / "run"
    steps = train(setup(config(tiny_model_dir, prompts_file, out, save_every=0, max_steps=2)))
    next(steps)
    steps.close()  # killed after step 1, before any checkpoint
    run = setup(config(tiny_model_dir, prompts_file, out, save_every=0, max_steps=2, resume=True))
    assert run.state.step == 0 and run.info.started_over and read_metrics(out / "metrics.jsonl") == []
    list(train(run))
    assert untimed(read_metrics(out / "metrics.jsonl")) == untimed(read_metrics(straight / "metrics.jsonl"))


def test_resume_refuses_a_finished_run_whose_checkpoints_were_deleted(tiny_model_dir, prompts_file, tmp_path,
                                                                     capsys):
    out = tmp_path / "run"
    list(train(setup(config(tiny_model_dir, prompts_file, out, max_steps=1))))
    ckpt.shutil.rmtree(out / "checkpoint-1")
    metrics = (out / "metrics.jsonl").read_bytes()
    code, _, err = run_cli(capsys, ["train", "--output", out, "--resume"])
    assert code == 2 and "has a final adapter but no checkpoint" in one_error_line(err)
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_a_kill_before_the_final_adapter_is_healed_by_resume(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    list(train(setup(config(tiny_model_dir, prompts_file, out, max_steps=2))))
    steps = train(setup(config(tiny_model_dir, prompts_file, out, max_steps=3, resume=True)))
    assert next(steps).step == 3
    steps.close()  # killed after checkpoint-3, before the generator's last line writes the final adapter
    assert not same_tensors({"a": load_file(out / "adapter" / "adapter_model.safetensors")},
                            {"a": load_file(out / "checkpoint-3" / "adapter_model.safetensors")})
    code, stdout, _ = run_cli(capsys, ["train", "--output", out, "--resume", "--max-steps", "3"])
    assert code == 0 and "nothing to do" in stdout
    assert same_tensors({"a": load_file(out / "adapter" / "adapter_model.safetensors")},
                        {"a": load_file(out / "checkpoint-3" / "adapter_model.safetensors")})


def test_nothing_written_is_pickled_and_resume_never_unpickles(tiny_model_dir, prompts_file, tmp_path,
                                                               monkeypatch):
    out = tmp_path / "run"
    list(train(setup(config(tiny_model_dir, prompts_file, out, max_steps=2))))
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".yaml", ".md"}, suffixes

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    run = setup(config(tiny_model_dir, prompts_file, out, max_steps=3, resume=True))
    saved = load_file(out / "checkpoint-2" / "optimizer.safetensors")
    moments = [t for state in run.optimizer.state_dict()["state"].values() for t in state.values()]
    assert len(moments) == len(saved) and all(any(torch.equal(m, s) for s in saved.values()) for m in moments)


def test_a_full_disk_is_found_before_training(tiny_model_dir, prompts_file, tmp_path, capsys, monkeypatch):
    usage = ckpt.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage._replace(free=100_000))
    code, _, err = run_cli(capsys, cli_args(config(tiny_model_dir, prompts_file, tmp_path / "run")))
    assert code == 2 and "not enough disk space" in one_error_line(err) and "--keep-checkpoints" in err
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_up_during_a_save_keeps_the_last_checkpoint(tiny_model_dir, prompts_file, tmp_path,
                                                                      capsys, monkeypatch):
    from safetensors import SafetensorError

    real = ckpt.save_state

    def fill_up(state, stem):
        if stem.parent.name == ".checkpoint-2.tmp":  # what safetensors raises when the disk is full
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(state, stem)

    monkeypatch.setattr(ckpt, "save_state", fill_up)
    code, _, err = run_cli(capsys, cli_args(config(tiny_model_dir, prompts_file, tmp_path / "run")))
    assert code == 2 and "checkpoint-2 was not written; the newest complete one is checkpoint-1" in one_error_line(err)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-1", "config.yaml", "metrics.jsonl"]


def test_a_signal_during_the_eval_before_training_stops_before_step_1(tiny_model_dir, prompts_file, tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"problem": "Name a color.", "answer": "1"}) + "\n")
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", eval_data=str(problems), eval_every=2,
                       eval_k=2))
    results = list(train(run, should_stop=lambda: True))  # as if Ctrl-C came while the base was being evaluated
    assert [r.step for r in results] == [0]
    assert [row["step"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0]
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "adapter").exists()
