"""`powerflow merge-adapter`: fold a LoRA adapter into the base weights, as a plain HF model directory.

    powerflow merge-adapter --model Qwen/Qwen2.5-0.5B-Instruct --adapter runs/x/adapter --output runs/x/merged

The result loads with `AutoModelForCausalLM.from_pretrained` and needs no PEFT. Its
README.md is the adapter's model card carried over, with Transformers' metadata.

Which base weights: by default the adapter is merged onto the *original*
(unquantized) weights, in their own dtype, as QLoRA merges usually are. The
adapter was trained against the NF4-quantized weights, so the merged model
differs from the trained policy by the base's quantisation error. `--base nf4`
instead dequantizes the NF4 weights first: the merged model then computes what
was trained (up to float rounding), at the cost of carrying that error into
full-precision weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors import SafetensorError

from .checkpoint import check_writable, refuse_to_replace, replace_dir
from .config import MergeConfig
from .errors import PowerflowError, first_line
from .model import check_adapter_dir, load_adapter, load_base_model, load_tokenizer, resolve_device
from .modelcard import TEMPLATE, merged_card, write_card


def merge_adapter(cfg: MergeConfig) -> Path:
    out = Path(cfg.output).expanduser()
    _check_output(out, cfg.overwrite)
    check_adapter_dir(cfg.adapter)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if cfg.base == "nf4":
        model = load_base_model(cfg.model, "nf4", device, cfg.trust_remote_code)
        model = model.dequantize()
    else:
        model = _load_original(cfg.model, device, cfg.trust_remote_code)
    merged = load_adapter(model, cfg.adapter).merge_and_unload()
    tmp = out.with_name("." + out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    adapter = Path(cfg.adapter).expanduser()
    write_card(tmp, merged_card(adapter, cfg.model, cfg.base, out))
    if (adapter / TEMPLATE).is_file():  # the chat template the adapter was trained with: the tokenizer's now
        shutil.copyfile(adapter / TEMPLATE, tmp / TEMPLATE)
    replace_dir(tmp, out)
    return out


def _load_original(name: str, device, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype="auto", use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise PowerflowError(f"could not load model {name!r}: {first_line(err)}") from None
    return model.to(device)


def _check_output(out: Path, overwrite: bool) -> None:
    refuse_to_replace(out, str(out), overwrite, ("config.json",), "a model directory")
    check_writable(out)
