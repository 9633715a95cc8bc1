"""Model loading (NF4 and full precision), LoRA, the adapter-off context, tokenizer checks."""

import shutil

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM

from powerflow_lite import model as model_module
from powerflow_lite.errors import PowerflowError
from powerflow_lite.model import add_lora, eval_mode, load_base_model, load_tokenizer, parameter_count, resolve_device
from powerflow_lite.tiny import build_tokenizer

CPU = torch.device("cpu")
TEXT = "Hello  world,\n  two spaces\tand a tab."


def randomise_lora(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)


def test_adapter_off_scores_equal_a_plain_base_model(tiny_model_dir):
    policy = add_lora(load_base_model(str(tiny_model_dir), "none", CPU), r=4)
    randomise_lora(policy)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        with eval_mode(policy, adapter=False):
            base_logits = policy(ids).logits
            # nested (a power sampler scoring p_base while `--compare-base` samples the base): still off after
            # the inner switch, as eval_mode relies on PEFT's disable_adapter restoring the status it found
            with eval_mode(policy, adapter=False):
                inner_logits = policy(ids).logits
            after_inner_logits = policy(ids).logits
        with eval_mode(policy):
            policy_logits = policy(ids).logits
        expected = plain(ids).logits
    for logits in (base_logits, inner_logits, after_inner_logits):
        torch.testing.assert_close(logits, expected)
    assert (policy_logits - expected).abs().max() > 1e-3  # the adapter is really on again afterwards


def test_eval_mode_restores_train_mode_and_adapter_after_an_error(tiny_model_dir):
    policy = add_lora(load_base_model(str(tiny_model_dir), "none", CPU), r=4)
    randomise_lora(policy)
    policy.train()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), eval_mode(policy):
        before = policy(ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(policy, adapter=False):
            assert not policy.training
            raise RuntimeError("boom")
    assert policy.training
    with torch.no_grad(), eval_mode(policy):
        torch.testing.assert_close(policy(ids).logits, before)


def test_nf4_loads_4bit_layers_frozen_and_without_cpu_repacking(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), "nf4", CPU)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(layer.support_avx512bf16_for_cpu is False for layer in layers)
    assert not any(p.requires_grad for p in model.parameters())
    policy = add_lora(model, r=4)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # lora_A and lora_B on every linear layer, not the LM head


def test_lora_targets_can_be_listed(tiny_model_dir):
    policy = add_lora(load_base_model(str(tiny_model_dir), "none", CPU), r=4, targets="q_proj, v_proj")
    trainable = {n.split(".")[-4] for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "v_proj"}


def test_unknown_lora_target_is_a_clear_error(tiny_model_dir):
    with pytest.raises(PowerflowError, match="--lora-targets"):
        add_lora(load_base_model(str(tiny_model_dir), "none", CPU), targets="nonexistent_proj")


def test_tokenizer_round_trips_although_transformers_picks_another_class(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.decode(tokenizer(TEXT, add_special_tokens=False).input_ids) == TEXT
    assert tokenizer.padding_side == "left"


def test_missing_pad_token_falls_back_to_eos(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    loaded = load_tokenizer(str(model_dir))
    assert loaded.pad_token_id == loaded.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("case", ["missing", "no-config", "no-safetensors"])
def test_bad_model_directories(tmp_path, tiny_model_dir, case):
    path = tmp_path / "model"
    if case != "missing":
        shutil.copytree(tiny_model_dir, path)
        (path / ("config.json" if case == "no-config" else "model.safetensors")).unlink()
    expected = {"missing": "does not exist", "no-config": "no config.json", "no-safetensors": "safetensors"}[case]
    with pytest.raises(PowerflowError, match=expected):
        load_base_model(str(path), "none", CPU)


def test_unknown_quant_is_refused(tiny_model_dir):
    with pytest.raises(PowerflowError, match="--quant"):
        load_base_model(str(tiny_model_dir), "int3", CPU)


def test_devices():
    assert resolve_device("cpu") == CPU
    with pytest.raises(PowerflowError, match="not a device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(PowerflowError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_parameter_count_counts_4bit_weights_by_shape(tiny_model_dir):
    plain = load_base_model(str(tiny_model_dir), "none", CPU)
    packed = load_base_model(str(tiny_model_dir), "nf4", CPU)
    assert sum(p.numel() for p in packed.parameters()) < parameter_count(packed) == parameter_count(plain)


def test_nf4_where_it_cannot_run_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(model_module, "nf4_support", lambda device_type: (False, "no kernel for this CPU"))
    with pytest.raises(PowerflowError, match="--quant nf4 cannot run here: no kernel for this CPU; use --quant none"):
        load_base_model(str(tiny_model_dir), "nf4", CPU)


def test_base_dropout_is_off_so_train_mode_scores_equal_eval_mode(tmp_path):
    """With dropout in the base, log pi_theta (train mode) != log pi_old (eval mode) on the same sample."""
    from powerflow_lite.tiny import build_tiny_model

    tokenizer = build_tokenizer()
    noisy = build_tiny_model(len(tokenizer))
    noisy.config.attention_dropout = 0.3
    noisy.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    policy = add_lora(load_base_model(str(tmp_path / "model"), "none", CPU), r=4, dropout=0.0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    policy.train()
    with torch.no_grad():
        train_logits = policy(ids).logits
        with eval_mode(policy):
            eval_logits = policy(ids).logits
    torch.testing.assert_close(train_logits, eval_logits)
