"""How much GPU memory does each recipe in examples/recipes/ plan for? `powerflow train --dry-run` on all four.

    python examples/recipe_memory.py                  # seconds on a CPU: nothing is loaded or downloaded
    python examples/recipe_memory.py --prompt-tokens 512 --out DIR

The dry run reads the model's config.json, and this machine has neither the recipes' models in its Hugging Face
cache nor the network, so each config.json is written here by hand from its model card's published file, into a
temporary directory that stands in for the hub id. Each recipe is then resolved as `powerflow train --config
examples/recipes/NAME.yaml --model DIR --dry-run` resolves it (resolve_train_config, model_shape, plan_memory,
fixes: the functions the CLI calls) and planned for a GPU (bf16, NF4 under --quant auto, PagedAdamW8bit,
generate under --sampler auto) against 8, 12, 16 and 24 GiB cards, as the CLI does where there is no GPU.

Only the shapes matter to the plan: layers, widths, heads, vocabulary and whether the embeddings are tied. The
rope settings, max_position_embeddings and dtype are kept so that each file builds the model its card describes;
token ids and keys that change no tensor's shape are left out.

Written to OUT (default examples/results): recipe_memory.md and recipe_memory.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from powerflow_lite.config import TrainConfig
from powerflow_lite.config_files import resolve_train_config
from powerflow_lite.memory_plan import (
    CARDS_GIB,
    PROMPT_TOKENS,
    GiB,
    eval_rows,
    fixes,
    micro_batch_rows,
    model_config,
    model_shape,
    plan_memory,
    sampling_rows,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("math-base-alpha4", "math-instruct-alpha2", "creative-alpha0.5", "qlora-7b")

QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "attention_dropout": 0.0,
         "use_sliding_window": False, "rms_norm_eps": 1e-06, "torch_dtype": "bfloat16"}
CONFIGS = {
    # https://huggingface.co/Qwen/Qwen2.5-Math-1.5B/blob/main/config.json (Qwen2.5-Math: 4k context, rope_theta 1e4)
    "Qwen/Qwen2.5-Math-1.5B": {**QWEN2, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                               "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                               "tie_word_embeddings": True, "max_position_embeddings": 4096, "rope_theta": 10000.0},
    # https://huggingface.co/meta-llama/Llama-3.2-3B-Instruct/blob/main/config.json (gated; llama3 rope scaling)
    "meta-llama/Llama-3.2-3B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 3072,
        "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"},
    # https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json (32k context, rope_theta 1e6)
    "Qwen/Qwen2.5-0.5B-Instruct": {**QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                                   "tie_word_embeddings": True, "max_position_embeddings": 32768,
                                   "rope_theta": 1000000.0},
    # https://huggingface.co/Qwen/Qwen2.5-Math-7B/blob/main/config.json (untied LM head, a larger padded vocabulary)
    "Qwen/Qwen2.5-Math-7B": {**QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                             "tie_word_embeddings": False, "max_position_embeddings": 4096, "rope_theta": 10000.0},
}


def recipe_config(name: str, models: Path) -> tuple[str, TrainConfig]:
    """The recipe's hub id, and its config as `--config recipe --model DIR` resolves it, DIR a directory under
    `models` holding the model's config.json from CONFIGS."""
    recipe = ROOT / "examples" / "recipes" / f"{name}.yaml"
    hub_id = resolve_train_config(str(recipe), {}).model
    directory = models / hub_id.replace("/", "--")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIGS[hub_id], indent=2) + "\n")
    return hub_id, resolve_train_config(str(recipe), {"model": str(directory)})


def plan_recipe(name: str, models: Path, prompt_tokens: int) -> dict:
    """One recipe's dry run with its model read from `models`: the plan's parts and peak, and per card whether it
    fits, else the changes the dry run would suggest."""
    hub_id, cfg = recipe_config(name, models)
    shape = model_shape(cfg, model_config(cfg.model, cfg.trust_remote_code))
    plan = plan_memory(cfg, prompt_tokens, "cuda", shape=shape)
    cards = {}
    for size in CARDS_GIB:
        found = [] if plan.fits(size * GiB) else fixes(cfg, size * GiB, prompt_tokens, "cuda", shape)
        cards[f"{size} GiB"] = {"fits": plan.fits(size * GiB), "spare_gib": size - plan.total / GiB,
                                "fits_with": [{"flags": fix.flags, "peak_gib": fix.total / GiB} for fix in found]}
    return {"recipe": name, "model": hub_id, "config_json": CONFIGS[hub_id], "quant": plan.quant,
            "sampler": plan.sampler, "optimizer": plan.optimizer, "prompt_tokens": prompt_tokens,
            "max_new_tokens": cfg.max_new_tokens, "micro_batch_size": cfg.micro_batch_size,
            "micro_batch_rows": micro_batch_rows(cfg), "sample_batch_size": cfg.sample_batch_size,
            "sampling_rows": sampling_rows(cfg), "eval_rows": eval_rows(cfg) if cfg.eval_data else 0,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "parts": [{"name": p.name, "phase": p.phase, "bytes": p.bytes, "gib": p.bytes / GiB, "exact": p.exact,
                       "how": p.how} for p in plan.parts],
            "held_gib": plan.phase("held") / GiB, "phases_gib": {k: v / GiB for k, v in plan.phases.items()},
            "peak_phase": plan.peak_phase, "sampling_gib": plan.phase("sampling") / GiB,
            "update_gib": plan.update / GiB, "peak_bytes": plan.total, "peak_gib": plan.total / GiB, "cards": cards}


def card_cell(card: dict) -> str:
    if card["fits"]:
        return f"fits ({card['spare_gib']:.2f} to spare)"
    if not card["fits_with"]:
        return "no"
    return "no; with " + ", or ".join(f"`{fix['flags']}` ({fix['peak_gib']:.2f})" for fix in card["fits_with"])


def rounded(row: dict) -> str:
    """Why the micro-batch is not --micro-batch-size: latb with --log-z batch compares a prompt's completions,
    so a micro-batch holds whole groups of --samples-per-prompt (update.micro_batches)."""
    if row["micro_batch_rows"] == row["micro_batch_size"]:
        return ""
    return " (whole groups of --samples-per-prompt: latb's batch log Z' compares a prompt's completions)"


def markdown(rows: list[dict], prompt_tokens: int) -> str:
    lines = [
        "# Planned peak GPU memory of the recipes",
        "",
        "Plans, not measurements: `powerflow train --dry-run` for each recipe in `examples/recipes/`, from its "
        "model's config.json written by hand from the model card (`examples/recipe_memory.py`). Nothing was "
        "measured on a GPU. The exact parts (weights, LoRA, log Z' head, gradients, optimizer state) are exact "
        "only if those configs are right. The activations, logits, sampling workspace and KV cache are estimates "
        "by formula (exact for the static sampler's cache only; the recipes sample with `generate` on a GPU, "
        "whose cache grows to the same size); [rehearsal.md](rehearsal.md) sets each phase they make up beside "
        "the bytes the step's own code allocates at these shapes on torch's meta device. The CUDA context is a "
        "flat margin that no rehearsal measures.",
        "",
        "    python examples/recipe_memory.py",
        "    # the same plan, one recipe, with the model's config.json at hand:",
        "    powerflow train --config examples/recipes/math-base-alpha4.yaml --dry-run",
        "",
        f"On a GPU in bf16, prompts of {prompt_tokens} tokens (`--prompt-tokens`, the default). GiB = 2^30 bytes; "
        "a card of N GiB is taken to have all N free.",
        "",
        "The peak is what is held throughout plus the largest phase; the phases come one after another. A card's "
        "cell is the dry run's verdict: fits, with the GiB to spare, or the changes it suggests, with the peak "
        "each plans.",
        "",
        "| recipe | model | peak GiB | held GiB | phases GiB (the largest in bold) | "
        + " | ".join(f"{s} GiB" for s in CARDS_GIB) + " |",
        "|---|---|---|---|---|" + "---|" * len(CARDS_GIB),
    ]
    for row in rows:
        cells = [card_cell(row["cards"][f"{s} GiB"]) for s in CARDS_GIB]
        phases = ", ".join(f"**{name} {gib:.2f}**" if name == row["peak_phase"] else f"{name} {gib:.2f}"
                           for name, gib in row["phases_gib"].items())
        lines.append(f"| {row['recipe']} | {row['model']} | {row['peak_gib']:.2f} | {row['held_gib']:.2f} | "
                     f"{phases} | " + " | ".join(cells) + " |")
    for row in rows:
        lines += ["", f"## {row['recipe']}: {row['model']}", "",
                  f"--quant {row['quant']}, {row['sampler']} sampler, {row['optimizer']}; --max-new-tokens "
                  f"{row['max_new_tokens']}; --micro-batch-size {row['micro_batch_size']}: "
                  f"{row['micro_batch_rows']} completions per forward/backward{rounded(row)}; "
                  f"{row['sampling_rows']} completions per sampling call"
                  + (f", {row['eval_rows']} per call of the evaluation" if row["eval_rows"] else "")
                  + "; gradient checkpointing "
                  f"{'on' if row['gradient_checkpointing'] else 'off'}.", "",
                  "| part | phase | GiB | | how |", "|---|---|---|---|---|"]
        for part in row["parts"]:
            lines.append(f"| {part['name']} | {part['phase']} | {part['gib']:.3f} | "
                         f"{'exact' if part['exact'] else 'estimate'} | {part['how']} |")
        lines.append(f"| **peak** | | **{row['peak_gib']:.2f}** | | held + the largest phase ({row['peak_phase']}); "
                     "the update's is its parts + the larger backward part |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models:
        rows = [plan_recipe(name, Path(models), args.prompt_tokens) for name in RECIPES]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "recipe_memory.md").write_text(markdown(rows, args.prompt_tokens))
    for row in rows:
        print(f"{row['recipe']:22} {row['model']:34} peak {row['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
