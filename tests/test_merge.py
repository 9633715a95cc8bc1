"""merge-adapter: the merged directory is a plain HF model that computes what base + LoRA computed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from powerflow_lite.config import MergeConfig
from powerflow_lite.errors import PowerflowError
from powerflow_lite.merge import merge_adapter
from powerflow_lite.model import add_lora, load_base_model
from powerflow_lite.tiny import write_tiny_model

CPU = torch.device("cpu")
INPUT_IDS = torch.tensor([[5, 17, 30, 42, 8, 61, 3, 77]])  # [1, L]
Q_PROJ = "model.layers.0.self_attn.q_proj"


def make_adapter(model_dir, adapter_dir):
    """A saved LoRA adapter with non-zero B (PEFT starts B at 0, which would make the merge a no-op)."""
    torch.manual_seed(0)
    model = add_lora(load_base_model(str(model_dir), "none", CPU), r=4, gradient_checkpointing=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model.save_pretrained(adapter_dir)
    return model.eval()


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """(adapter dir, logits of base + LoRA on INPUT_IDS)."""
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    model = make_adapter(tiny_model_dir, path)
    with torch.no_grad():
        return path, model(input_ids=INPUT_IDS).logits


def logits_of(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_merge_onto_original_matches_peft(tmp_path, tiny_model_dir, adapter):
    adapter_dir, peft_logits = adapter
    out = merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(adapter_dir), output=str(tmp_path / "m")))
    assert out == tmp_path / "m"

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not (tmp_path / ".m.tmp").exists()

    base_logits = logits_of(tiny_model_dir)
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)  # the adapter changes the output
    torch.testing.assert_close(logits_of(out), peft_logits, atol=1e-5, rtol=1e-5)


def test_merged_weight_is_w_plus_scaled_ba(tmp_path, tiny_model_dir, adapter):
    adapter_dir, _ = adapter
    out = merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(adapter_dir), output=str(tmp_path / "m")))

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    w = base[f"{Q_PROJ}.weight"]  # [out, in]
    a = lora[f"base_model.model.{Q_PROJ}.lora_A.weight"]  # [r, in]
    b = lora[f"base_model.model.{Q_PROJ}.lora_B.weight"]  # [out, r]
    expected = w + (b @ a) * (config["lora_alpha"] / config["r"])  # alpha 32 / r 4 = scale 8
    merged = load_file(str(out / "model.safetensors"))[f"{Q_PROJ}.weight"]
    torch.testing.assert_close(merged, expected, atol=1e-6, rtol=1e-6)


def test_merge_onto_nf4_dequantized_base(tmp_path, tiny_model_dir, adapter):
    adapter_dir, _ = adapter
    kwargs = dict(model=str(tiny_model_dir), adapter=str(adapter_dir))
    nf4 = merge_adapter(MergeConfig(**kwargs, output=str(tmp_path / "nf4"), base="nf4"))
    original = merge_adapter(MergeConfig(**kwargs, output=str(tmp_path / "original")))

    assert "quantization_config" not in json.loads((nf4 / "config.json").read_text())
    assert torch.isfinite(logits_of(nf4)).all()
    # The two merges share the LoRA delta, so they differ by the base's NF4 quantisation error alone:
    # non-zero, and at most half the widest NF4 level gap (~0.30) times the block absmax <= max |W|.
    w = load_file(str(tiny_model_dir / "model.safetensors"))[f"{Q_PROJ}.weight"]
    error = load_file(str(nf4 / "model.safetensors"))[f"{Q_PROJ}.weight"] - \
        load_file(str(original / "model.safetensors"))[f"{Q_PROJ}.weight"]
    assert error.abs().max() > 0
    assert error.abs().max() <= 0.16 * w.abs().max()


def test_existing_output_refused_without_overwrite(tmp_path, tiny_model_dir, adapter):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"old weights")
    before = snapshot(out)
    with pytest.raises(PowerflowError, match="--overwrite"):
        merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(adapter[0]), output=str(out)))
    assert snapshot(out) == before


def test_overwrite_replaces_a_model_directory(tmp_path, tiny_model_dir, adapter):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "stale.bin").write_bytes(b"from an older merge")
    merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(adapter[0]), output=str(out), overwrite=True))
    assert not (out / "stale.bin").exists()
    torch.testing.assert_close(logits_of(out), adapter[1], atol=1e-5, rtol=1e-5)


def test_overwrite_refuses_a_directory_without_config_json(tmp_path, tiny_model_dir, adapter):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    before = snapshot(out)
    with pytest.raises(PowerflowError, match="nothing was deleted"):
        merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(adapter[0]), output=str(out),
                                  overwrite=True))
    assert snapshot(out) == before


def test_adapter_without_adapter_config_refused(tmp_path, tiny_model_dir):
    not_adapter = tmp_path / "not_adapter"
    not_adapter.mkdir()
    (not_adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(PowerflowError, match="adapter_config.json"):
        merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(not_adapter), output=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


def test_adapter_from_another_base_refused(tmp_path, tiny_model_dir):
    small = write_tiny_model(tmp_path / "small", hidden_size=32)
    make_adapter(small, tmp_path / "small_adapter")
    with pytest.raises(PowerflowError, match="another base"):
        merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "small_adapter"),
                                  output=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.tmp").exists()
