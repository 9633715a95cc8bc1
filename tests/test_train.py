"""The training loop on a tiny model: what a step changes, what it must not, and exact resume."""

import json

import pytest
import torch
from helpers import config, untimed
from safetensors.torch import load_file

from powerflow_lite.config import TrainConfig
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.setup import lr_lambda, setup
from powerflow_lite.train import train


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_a_step_moves_lora_and_head_but_not_the_base(tiny_model_dir, prompts_file, tmp_path, quant):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "out", quant=quant, max_steps=1))
    frozen = {n: p.detach().clone() for n, p in run.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    head = [p.detach().clone() for p in run.head.parameters()]
    [result] = list(train(run))
    assert all(torch.equal(p, frozen[n]) for n, p in run.model.named_parameters() if not p.requires_grad)
    changed = [n for n, p in run.model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert any("lora_B" in n for n in changed)  # lora_A has no gradient until lora_B leaves 0
    assert any(not torch.equal(p, q) for p, q in zip(run.head.parameters(), head))
    assert result.metrics["step"] == 1 and result.metrics["grad_norm"] > 0


def test_first_step_log_z_starts_at_the_batch_mean(tiny_model_dir, prompts_file, tmp_path):
    """The head's bias is set so that the first batch's mean LA-TB residual is zero before any update."""
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=1, lr=1e-12, z_lr=1e-12))
    [result] = list(train(run))
    assert abs(result.metrics["residual_mean"]) < 1e-4
    # and log Z then equals alpha * base - policy per token, averaged per completion
    assert result.metrics["log_z_std"] == pytest.approx(0.0, abs=1e-6)


def test_inner_epochs_use_clipped_importance_weights(tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=2, inner_epochs=3, lr=0.05,
                       clip_eps=0.01))
    rows = [r.metrics for r in train(run)]
    # epoch 1 is on-policy (w = 1); later epochs see a moved policy, and with eps = 0.01 some weights clip
    assert any(row["clip_frac"] > 0 for row in rows)
    assert all(row["clip_frac"] <= 2 / 3 for row in rows)


def test_resume_ends_exactly_like_the_uninterrupted_run(tiny_model_dir, prompts_file, tmp_path):
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "straight", max_steps=4)
    list(train(setup(cfg)))

    interrupted = config(tiny_model_dir, prompts_file, tmp_path / "stopped", max_steps=4)
    steps = train(setup(interrupted))
    for result in steps:
        if result.step == 3:  # stop after a step that is not checkpointed: resume must redo it
            break
    steps.close()
    resumed = setup(config(tiny_model_dir, prompts_file, tmp_path / "stopped", max_steps=4, resume=True))
    assert resumed.state.step == 2
    list(train(resumed))

    for name in ("adapter_model.safetensors", "z_head.safetensors"):  # bit-identical tensors
        straight, stopped = (load_file(tmp_path / run / "adapter" / name) for run in ("straight", "stopped"))
        assert straight.keys() == stopped.keys()
        assert all(torch.equal(straight[key], stopped[key]) for key in straight)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    stopped = read_metrics(tmp_path / "stopped" / "metrics.jsonl")
    assert [r["step"] for r in stopped] == [1, 2, 3, 4]
    assert untimed(stopped) == untimed(straight)
    assert json.loads((tmp_path / "stopped" / "checkpoint-4" / "trainer_state.json").read_text())["step"] == 4


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_micro_batch_size_does_not_change_the_gradient(tiny_model_dir, prompts_file, tmp_path):
    """Accumulating over micro-batches equals one big batch: compare the LoRA gradients of one step."""
    grads = []
    for size in (1, 6):
        run = setup(config(tiny_model_dir, prompts_file, tmp_path / f"mb{size}", max_steps=1, micro_batch_size=size))
        run.optimizer.step = lambda: None  # keep the gradients for inspection
        list(train(run))
        grads.append(torch.cat([p.grad.flatten() for p in run.model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-4)


def test_learning_rate_schedule():
    cfg = TrainConfig(model="m", prompts="p", alpha=1.0, max_steps=10, warmup_steps=2, lr_schedule="cosine")
    factor = lr_lambda(cfg)
    assert [factor(0), factor(1)] == pytest.approx([1 / 3, 2 / 3])
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.5)  # halfway through the 8 decay steps
    linear = lr_lambda(TrainConfig(model="m", prompts="p", alpha=1.0, max_steps=10, warmup_steps=0,
                                   lr_schedule="linear"))
    assert linear(5) == pytest.approx(0.5)


def test_log_z_batch_trains_the_head_towards_the_estimate(tiny_model_dir, prompts_file, tmp_path):
    # With --z-init zero the estimate is detached, so the head can only move through its regression loss.
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "out", log_z="batch", z_init="zero", max_steps=3,
                       lr=1e-12, z_lr=1e-1))
    rows = [result.metrics for result in train(run)]
    log_z, gaps = [row["log_z_mean"] for row in rows], [row["log_z_gap"] for row in rows]
    # the estimate (mean per-token residual without log Z) is far below 0 for alpha = 2 on a random model: the head
    # starts at 0, far above it, and is then held near it (the head's gap to the estimate before each update shrinks;
    # its mean itself follows the estimates of the step's prompts, which differ from step to step)
    assert log_z[0] < 0 and gaps[0] > 1 and max(abs(gaps[1]), abs(gaps[2])) < 0.25 * gaps[0]
    assert run.state.z_initialized


def test_log_z_batch_needs_several_samples_per_prompt(tiny_model_dir, prompts_file, tmp_path):
    with pytest.raises(PowerflowError, match="--log-z batch"):
        config(tiny_model_dir, prompts_file, tmp_path / "out", log_z="batch", samples_per_prompt=1)


@pytest.mark.parametrize("log_z", ["head", "hybrid"])
def test_log_z_gap_is_the_head_lag_that_hybrid_removes(tiny_model_dir, prompts_file, tmp_path, log_z):
    # latb with equal groups and one inner epoch on fresh samples (static sampler: pi_old is pi exactly): the mean
    # residual over a step is mean_q (log Z'(q) - estimate(q)). In head mode that is the head's lag, log_z_gap; in
    # hybrid mode the head is first shifted onto the estimates' mean, so the residual mean is 0.
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "out", log_z=log_z, max_steps=3, lr=3e-2,
                       sampler="static"))
    rows = [result.metrics for result in train(run)]
    gaps = [row["log_z_gap"] for row in rows]
    assert abs(gaps[0]) < 1e-4  # step 1: the head started at the first batch's estimate
    assert max(abs(g) for g in gaps[1:]) > 1e-3  # the policy moved: the head lags behind the new batches
    for row in rows:
        expected = 0.0 if log_z == "hybrid" else row["log_z_gap"]
        assert row["residual_mean"] == pytest.approx(expected, abs=1e-4)
        assert row["log_z_batch_mean"] < 0


def test_the_truncation_penalty_is_subtracted_from_psi_of_cut_completions(tiny_model_dir, prompts_file, tmp_path):
    # no format penalty, so psi(y) = -0.5 for a completion cut at --max-new-tokens and 0 for one that ended:
    # psi_mean = -0.5 x truncated_frac, while format_frac (the format penalty's verdict) stays 1
    rows = [r.metrics for r in train(setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=2,
                                                  truncation_penalty=0.5)))]
    for row in rows:
        assert 0 < row["truncated_frac"]
        assert row["psi_mean"] == pytest.approx(-0.5 * row["truncated_frac"], abs=1e-7)
        assert row["format_frac"] == 1.0


def test_the_truncation_penalty_teaches_the_policy_to_end(tmp_path):
    # a 5-letter model (the exact study's) ends about a third of its 3-token completions: a large penalty on the
    # cut ones makes ending likelier, while without it the policy has no reason to
    from powerflow_lite.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "model", hidden_size=32, num_layers=2, chat_template=False, alphabet="abcde",
                             logit_scale=4.0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("abc", "edd")))
    settings = dict(max_steps=20, max_new_tokens=3, samples_per_prompt=8, lr=1e-2, chat_template="none")
    plain, penalised = ([r.metrics["truncated_frac"] for r in
                         train(setup(config(model, prompts, tmp_path / name, truncation_penalty=p, **settings)))]
                        for name, p in (("plain", 0.0), ("penalised", 2.0)))
    assert plain[0] == penalised[0] and 0 < plain[0] < 1  # the same first step: the penalty changes what is learnt
    # the last 8 steps: about 0.75 of the completions cut without the penalty, under 0.25 with it
    assert sum(penalised[-8:]) / 8 < sum(plain[-8:]) / 8 - 0.3
