"""`powerflow bench`: Hugging Face `generate` and our static-cache sampler side by side, same weights and prompts.

    powerflow bench --shape qwen2.5-1.5b --batch 64 --prompt-len 128 --new-tokens 256     # on a GPU
    powerflow bench --shape tiny --device cpu --batch 4 --new-tokens 16 --json            # anywhere

A random-weight model of a Qwen2.5 shape is built in code (no download), or
--model is used, and loaded as training loads it, with a live LoRA (its B
non-zero). Both samplers draw --batch completions of exactly --new-tokens
(EOS ignored) from the same prompts after an untimed warm-up: tokens/s, ms per
decode step, peak GPU memory, and ours / HF. Then, unless --no-train-step, one
LA-TB training step through the trainer: its sample / score / update seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from .config import BenchConfig, TrainConfig
from .model import add_lora, load_base_model, load_tokenizer, resolve_device, resolve_quant
from .samplers import SAMPLERS
from .samplers.rollouts import SamplingSettings
from .setup import setup
from .tiny import build_tokenizer
from .train import train

SHAPES = {  # hidden, intermediate, layers, attention heads, key/value heads, vocabulary
    "tiny": (64, 128, 2, 4, 2, 103),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064),
}
BENCHED = {"hf generate": SAMPLERS["hf"].sample, "powerflow static": SAMPLERS["static"].sample}


def write_random_model(shape: str, path: Path, device: str) -> None:
    """A Qwen2.5-shaped model with random weights (bf16 on CUDA) and the tiny character tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[shape]
    config = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=shape != "qwen2.5-7b",
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    build_tokenizer().save_pretrained(path)


def run_bench(cfg: BenchConfig) -> dict:
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cfg.model or str(Path(tmp) / "model")
        if not cfg.model:
            write_random_model(cfg.shape, Path(model_dir), device.type)
        tokenizer = load_tokenizer(model_dir, cfg.trust_remote_code)
        model = add_lora(load_base_model(model_dir, cfg.quant, device, cfg.trust_remote_code), cfg.lora_r,
                         cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, gradient_checkpointing=False).eval()
        report = compare_samplers(cfg, model, tokenizer, device)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if cfg.train_step:
            report["train_step"] = time_train_step(cfg, model_dir, Path(tmp))
    return report


def compare_samplers(cfg: BenchConfig, model, tokenizer, device: torch.device) -> dict:
    """Both samplers on the same model, prompts and seed: tokens/s, ms per decode step, peak GPU memory."""
    torch.manual_seed(cfg.seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter is not zero: time the samplers with one that changes the logits
            torch.nn.init.normal_(param, std=1e-3)
    first_id = max(tokenizer.all_special_ids) + 1  # random prompts of ordinary tokens
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = torch.randint(first_id, min(vocab, len(tokenizer)), (cfg.batch, cfg.prompt_len)).tolist()
    settings = SamplingSettings(cfg.new_tokens, ignore_eos=True)
    results = {}
    for name, sampler in BENCHED.items():
        sampler(model, tokenizer, prompts[:1], 1, SamplingSettings(2, ignore_eos=True))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(cfg.seed)
        started = time.perf_counter()
        rollouts = sampler(model, tokenizer, prompts, 1, settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        tokens = int(rollouts.completion_mask.sum())
        results[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                         "ms_per_step": 1000 * seconds / cfg.new_tokens,
                         "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
                         if device.type == "cuda" else None}
    hf, ours = results["hf generate"], results["powerflow static"]
    return {"model": cfg.model or cfg.shape, "device": str(device), "quant": resolve_quant(cfg.quant, device)[0],
            "batch": cfg.batch,
            "prompt_len": cfg.prompt_len, "new_tokens": cfg.new_tokens, "lora_r": cfg.lora_r,
            "torch": torch.__version__, "results": results, "speedup": ours["tokens_per_s"] / hf["tokens_per_s"]}


def write_letter_prompts(path: Path, count: int, length: int) -> Path:
    """`count` prompts of `length` letters (one token each with the tiny tokenizer), each starting elsewhere."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    path.write_text("".join(json.dumps({"prompt": (letters[i % 26:] + letters * length)[:length]}) + "\n"
                            for i in range(count)))
    return path


def time_train_step(cfg: BenchConfig, model_dir: str, tmp: Path) -> dict:
    """One LA-TB step through the trainer (static sampler): --batch completions of --new-tokens, 8 per prompt."""
    G = min(8, cfg.batch)
    prompts = write_letter_prompts(tmp / "prompts.jsonl", max(1, cfg.batch // G), cfg.prompt_len)
    run = setup(TrainConfig(model=model_dir, alpha=4.0, prompts=str(prompts), output=str(tmp / "run"),
                            quant=cfg.quant, device=cfg.device, max_steps=1, chat_template="none",
                            prompts_per_step=max(1, cfg.batch // G), samples_per_prompt=G,
                            max_new_tokens=cfg.new_tokens, ignore_eos=True, lora_r=cfg.lora_r,
                            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets,
                            gradient_checkpointing=cfg.gradient_checkpointing, trust_remote_code=cfg.trust_remote_code,
                            sampler="static", warmup_steps=0, save_every=0, show_every=0, seed=cfg.seed))
    [result] = list(train(run))
    keys = ("time_sample", "time_score", "time_update", "peak_gpu_mem_gib")
    step = {key: result.metrics[key] for key in keys if key in result.metrics}
    step["seconds"] = sum(result.metrics[key] for key in keys[:3])
    step["completions"] = run.cfg.prompts_per_step * G
    return step
