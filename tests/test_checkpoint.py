"""The output directory: refusing to clobber, finding the latest checkpoint, exact save/resume, final adapter."""

from __future__ import annotations

import json

import pytest
import torch

from powerflow_lite import checkpoint
from powerflow_lite.checkpoint import (
    check_output_dir,
    create_output_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_final_adapter,
    truncate_metrics,
)
from powerflow_lite.errors import PowerflowError
from powerflow_lite.faults import BatchSize
from powerflow_lite.log_z import LogZHead
from powerflow_lite.model import add_lora, load_base_model
from powerflow_lite.state import MICRO_BATCH, SAMPLE_BATCH, TrainState

CPU = torch.device("cpu")
INPUT_IDS = torch.tensor([[5, 17, 30, 42, 8, 61]])  # [1, L]
CHECKPOINT_FILES = {"adapter_model.safetensors", "adapter_config.json", "z_head.safetensors",
                    "optimizer.safetensors", "optimizer.json", "scheduler.json", "trainer_state.json"}


def snapshot(directory):
    """{relative path: bytes} of every file below `directory`, to show nothing was touched."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- check_output_dir + create_output_dir


def prepare_output_dir(output, resume, overwrite):
    """What training does: check first (before loading anything), create once every input is valid."""
    out = check_output_dir(output, resume=resume, overwrite=overwrite)
    create_output_dir(out, resume=resume, overwrite=overwrite)
    return out


def test_check_alone_writes_nothing(tmp_path):
    run = tmp_path / "run"
    (run / "old").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    before = snapshot(tmp_path)
    assert check_output_dir(str(tmp_path / "new" / "run"), resume=False, overwrite=False) == tmp_path / "new" / "run"
    assert check_output_dir(str(run), resume=False, overwrite=True) == run
    assert not (tmp_path / "new").exists() and snapshot(tmp_path) == before


def test_unwritable_parent_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    # root ignores permission bits, so the check's answer is simulated
    monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: False)
    with pytest.raises(PowerflowError, match="not writable"):
        check_output_dir(str(tmp_path / "run"), resume=False, overwrite=False)
    assert not (tmp_path / "run").exists()


def test_prepare_creates_a_new_directory(tmp_path):
    out = prepare_output_dir(str(tmp_path / "a" / "run"), resume=False, overwrite=False)
    assert out == tmp_path / "a" / "run"
    assert out.is_dir() and not any(out.iterdir())  # the write probe is cleaned up


def test_prepare_refuses_existing_run_without_flags(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    with pytest.raises(PowerflowError, match="--resume") as err:
        prepare_output_dir(str(tmp_path), resume=False, overwrite=False)
    assert "--overwrite" in str(err.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("marker", ["config.yaml", "metrics.jsonl"])
def test_overwrite_deletes_a_run_directory(tmp_path, marker):
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / marker).write_text("x")
    (run / "checkpoint-3" / "trainer_state.json").write_text("{}")
    out = prepare_output_dir(str(run), resume=False, overwrite=True)
    assert out.is_dir() and list(out.iterdir()) == []


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.yaml").write_text("nested markers do not count")
    before = snapshot(tmp_path)
    with pytest.raises(PowerflowError, match="nothing was deleted"):
        prepare_output_dir(str(tmp_path), resume=False, overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("make_empty", [False, True])
def test_resume_refuses_a_missing_or_empty_directory(tmp_path, make_empty):
    run = tmp_path / "run"
    if make_empty:
        run.mkdir()
    with pytest.raises(PowerflowError, match="--resume"):
        prepare_output_dir(str(run), resume=True, overwrite=False)


def test_resume_keeps_an_existing_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    assert prepare_output_dir(str(tmp_path), resume=True, overwrite=False) == tmp_path
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- latest_checkpoint, truncate_metrics


def test_latest_checkpoint_picks_highest_complete_step(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 9):  # 10 > 9 numerically although "10" < "9" as strings
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20").mkdir()  # no trainer_state.json: interrupted, incomplete
    (tmp_path / ".checkpoint-30.tmp").mkdir()  # a save in progress
    (tmp_path / ".checkpoint-30.tmp" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_truncate_metrics_keeps_rows_up_to_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}, {"step": 3, "loss": 0.3}, {"step": 4, "loss": 0.2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


# ---------------------------------------------------------------- save / load


def build(model_dir, seed):
    """LoRA policy, head, AdamW and LambdaLR; `seed` makes the fresh LoRA A and head weights differ."""
    torch.manual_seed(seed)
    model = add_lora(load_base_model(str(model_dir), "none", CPU), r=4, gradient_checkpointing=False)
    head = LogZHead(model.config.hidden_size, width=16)
    lora = [p for p in model.parameters() if p.requires_grad]
    # Two groups with different learning rates, as in training (the head has its own --z-lr).
    optimizer = torch.optim.AdamW([{"params": lora, "lr": 1e-3}, {"params": list(head.parameters()), "lr": 1e-2}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, head, optimizer, scheduler


def train_one_step(model, head, optimizer, scheduler):
    features = torch.randn(2, model.config.hidden_size)  # [B, H]
    loss = model(input_ids=INPUT_IDS).logits.pow(2).mean() + head(features).sub(1.0).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture
def trained(tiny_model_dir):
    parts = build(tiny_model_dir, seed=0)
    train_one_step(*parts)
    return parts


def test_checkpoint_round_trip_is_exact(tmp_path, tiny_model_dir, trained):
    model, head, optimizer, scheduler = trained
    state = TrainState(step=7, seed=3, fresh_steps=5, bad_steps_in_row=1, z_initialized=True,
                       micro_batch=BatchSize(MICRO_BATCH, 4), sample_batch=BatchSize(SAMPLE_BATCH, 2))
    path = save_checkpoint(tmp_path, model, head, optimizer, scheduler, state)
    assert path == tmp_path / "checkpoint-7"
    assert CHECKPOINT_FILES <= {p.name for p in path.iterdir()} <= CHECKPOINT_FILES | {"README.md"}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-7"]  # the temporary dir was renamed away

    model2, head2, optimizer2, scheduler2 = build(tiny_model_dir, seed=1)
    # The fresh parts differ, so the equalities below are only true if loading restored them.
    assert not all(torch.equal(a, b) for a, b in zip(lora_weights(model).values(), lora_weights(model2).values()))
    assert scheduler2.get_last_lr() != scheduler.get_last_lr()
    assert optimizer2.state_dict()["state"] == {}

    assert load_checkpoint(path, model2, head2, optimizer2, scheduler2) == state  # the live state, whole

    saved, loaded = lora_weights(model), lora_weights(model2)
    assert saved.keys() == loaded.keys() and len(saved) > 0
    for name in saved:
        assert torch.equal(saved[name], loaded[name]), name
    for (name, a), b in zip(head.state_dict().items(), head2.state_dict().values()):
        assert torch.equal(a, b), name

    saved_opt, loaded_opt = optimizer.state_dict(), optimizer2.state_dict()
    assert saved_opt["state"].keys() == loaded_opt["state"].keys() and len(saved_opt["state"]) > 0
    for index, entry in saved_opt["state"].items():
        for key, value in entry.items():  # step, exp_avg, exp_avg_sq
            assert torch.equal(value, loaded_opt["state"][index][key]), (index, key)
    assert loaded_opt["param_groups"] == saved_opt["param_groups"]
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert scheduler2.last_epoch == scheduler.last_epoch


def test_load_checkpoint_refuses_an_incomplete_directory(tmp_path, trained):
    model, head, optimizer, scheduler = trained
    state = TrainState(step=3)
    path = save_checkpoint(tmp_path, model, head, optimizer, scheduler, state)
    (path / "trainer_state.json").unlink()  # as if the save had been interrupted before its last file
    with pytest.raises(PowerflowError, match="not a complete checkpoint"):
        load_checkpoint(path, model, head, optimizer, scheduler)


def test_final_adapter_loads_with_peft(tmp_path, tiny_model_dir, trained):
    from peft import PeftModel

    model, head, _, _ = trained
    adapter = save_final_adapter(tmp_path, model, head)
    assert adapter == tmp_path / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "z_head.safetensors"} <= {
        p.name for p in adapter.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

    fresh_base = load_base_model(str(tiny_model_dir), "none", CPU)
    with torch.no_grad():
        base_logits = fresh_base(input_ids=INPUT_IDS).logits
        reloaded = PeftModel.from_pretrained(fresh_base, adapter).eval()
        expected = model.eval()(input_ids=INPUT_IDS).logits
        assert not torch.allclose(expected, base_logits)  # the step moved the adapter away from the base
        torch.testing.assert_close(reloaded(input_ids=INPUT_IDS).logits, expected, atol=0, rtol=0)
