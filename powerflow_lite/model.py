"""Load the base model once (NF4 4-bit or full precision), add LoRA, switch the adapter off.

There is one copy of the weights. The policy is base + LoRA; the base score
`log p_base(y|q)` is the same module inside `eval_mode(model, adapter=False)`,
which turns the adapter off and restores it (and train mode) in `finally`.

    from powerflow_lite.model import load_base_model, add_lora, eval_mode
    model = add_lora(load_base_model("Qwen/Qwen2.5-0.5B-Instruct", quant="nf4", device=torch.device("cuda")))
    with eval_mode(model, adapter=False):
        ...  # base scores

NF4 on the CPU: bitsandbytes >= 0.46 runs 4-bit matmuls on the CPU, so the
4-bit path is tested in CI. Two CPU details: the compute dtype is float32 there
(bfloat16 matmuls without hardware support are ~20x slower), and on CPUs with
AVX512-BF16 bitsandbytes repacks `Linear4bit` weights in place on the first
eval-mode forward, which later breaks autograd; we switch that repacking off.
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .errors import PowerflowError, first_line

ROUND_TRIP_TEXT = "Hello world, 1 + 2 = 3.\n  Done."


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when present, else cpu; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PowerflowError(f"--device {name!r} is not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PowerflowError(f"--device {name} asked for, but torch sees no CUDA GPU here (torch {torch.__version__})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PowerflowError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise PowerflowError(f"--device {name}: only cpu and cuda are supported")
    return device


def compute_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU that has it, float32 on the CPU (see module docstring)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_quant(quant: str, device: torch.device) -> tuple[str, str]:
    """`auto` -> nf4 on a GPU where bitsandbytes runs it, else none (full precision); and why, in words.

    On the CPU bitsandbytes computes NF4 by dequantizing each weight for every matmul: full precision is
    faster there (docs/results.md, Speed on the CPU) and a 135M-1.5B model fits in RAM anyway. `--quant nf4` still
    runs it.
    """
    if quant != "auto":
        return quant, "as asked"
    if device.type != "cuda":
        return "none", ("auto: full precision on the CPU, where bitsandbytes emulates 4-bit more slowly "
                        "(--quant nf4 to train the 4-bit path here)")
    ok, reason = nf4_support(str(device))
    if ok:
        return "nf4", "auto: 4-bit NF4 on the GPU (the base takes a quarter of the memory)"
    return "none", f"auto: full precision, since NF4 cannot run here ({reason})"


def check_model_source(name: str) -> None:
    """A local directory must exist and hold safetensors weights; anything else is treated as a hub id."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise PowerflowError(f"model path {name!r} does not exist "
                             "(give a model directory or a hub id like Qwen/Qwen2.5-0.5B)")
    if not (path / "config.json").is_file():
        raise PowerflowError(f"model directory {name!r} has no config.json: is it a Hugging Face model directory?")
    if not any(path.glob("*.safetensors")):
        raise PowerflowError(
            f"model directory {name!r} has no *.safetensors weights (powerflow-lite loads safetensors only)"
        )


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The model's tokenizer with a pad token, checked to round-trip text.

    transformers 5 may rebuild a custom `tokenizer.json` as the model type's own
    tokenizer class and lose spaces; when the round trip fails we load
    `tokenizer.json` as it is.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise PowerflowError(f"could not load a tokenizer from {name!r}: {first_line(err)}") from None
    if not _round_trips(tokenizer) and Path(name, "tokenizer.json").is_file():
        fallback = PreTrainedTokenizerFast.from_pretrained(name)
        if _round_trips(fallback):
            tokenizer = fallback
    if not tokenizer(ROUND_TRIP_TEXT, add_special_tokens=False).input_ids:
        raise PowerflowError(f"the tokenizer of {name!r} turns text into no tokens: are its tokenizer files missing?")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise PowerflowError(f"the tokenizer of {name!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _round_trips(tokenizer) -> bool:
    ids = tokenizer(ROUND_TRIP_TEXT, add_special_tokens=False).input_ids
    return tokenizer.decode(ids, skip_special_tokens=True).strip() == ROUND_TRIP_TEXT.strip()


def import_bitsandbytes():
    """bitsandbytes, imported without its CPU kernel-hub notice. On a CPU with AVX512-BF16 its import tries to fetch a
    matmul kernel from the Hugging Face hub and logs "Failed to load CPU gemm_4bit_forward ..." when it may not
    (offline, or the repository untrusted). That path is the one _disable_cpu_weight_repacking turns off, so the
    notice says nothing a user can act on; other bitsandbytes errors still show."""
    import logging

    hub_notice = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = hub_notice.level
    hub_notice.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        hub_notice.setLevel(level)
    return bitsandbytes


@functools.cache
def nf4_support(device: str) -> tuple[bool, str]:
    """Can bitsandbytes run an NF4 matmul on `device` ("cpu", "cuda", "cuda:1")? From a real 4-bit forward."""
    try:
        bnb = import_bitsandbytes()
    except Exception as err:  # an import failure of a compiled package can be any error
        return False, f"bitsandbytes is not importable ({first_line(err)})"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return False, "no CUDA GPU"
    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
        layer.support_avx512bf16_for_cpu = False
        out = layer(torch.ones(2, 64, device=device))
        if not torch.isfinite(out).all():
            return False, "a 4-bit test matmul returned non-finite values"
    except Exception as err:  # bitsandbytes raises many types on unsupported hardware
        version = getattr(bnb, "__version__", "?")
        return False, f"bitsandbytes {version} cannot run NF4 on {device}: {first_line(err)}"
    return True, f"bitsandbytes {bnb.__version__} NF4 works on {device}"


def context_length(name: str, trust_remote_code: bool = False) -> int | None:
    """The model's context (max_position_embeddings) from its config alone: prompts are checked before weights load."""
    from transformers import AutoConfig

    check_model_source(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise PowerflowError(f"could not load model {name!r}: {first_line(err)}") from None
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def load_base_model(name: str, quant: str, device: torch.device, trust_remote_code: bool = False):
    """The frozen base model: `quant="nf4"` (double quant), `"none"` (bf16 on GPU, fp32 on CPU) or `"auto"`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_model_source(name)
    quant, _ = resolve_quant(quant, device)
    dtype = compute_dtype(device)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True)
    if quant == "nf4":
        ok, reason = nf4_support(str(device))
        if not ok:
            raise PowerflowError(f"--quant nf4 cannot run here: {reason}; use --quant none")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    elif quant != "none":
        raise PowerflowError(f"--quant {quant!r} is not one of auto, nf4, none")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise PowerflowError(f"could not load model {name!r}: {first_line(err)}") from None
    if quant == "none":
        model = model.to(device)
    return prepare_base(model)


def prepare_base(model):
    """What every base model gets once loaded (rehearse.py builds one without weights and calls this too): no CPU
    repacking of 4-bit weights, no dropout, frozen."""
    _disable_cpu_weight_repacking(model)
    disable_dropout(model)
    model.requires_grad_(False)
    return model


def disable_dropout(model) -> None:
    """No dropout in the base model (as TRL does): log pi_theta in train mode must equal log pi_old in eval mode,
    or the importance weight is not 1 on fresh samples and the residual is noisy. LoRA dropout, added later, stays."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _disable_cpu_weight_repacking(model) -> None:
    try:
        bnb = import_bitsandbytes()
    except Exception:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def add_lora(model, r: int = 16, lora_alpha: int = 32, dropout: float = 0.0, targets: str = "all-linear",
             gradient_checkpointing: bool = True):
    """Wrap the base in a fresh PEFT LoRA adapter (all linear layers but the LM head by default)."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise PowerflowError(f"--lora-targets {targets!r}: {first_line(err)}") from None


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (named `activation_checkpointing_enable` from transformers 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """A PEFT adapter directory (it has adapter_config.json), checked before any model is loaded."""
    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise PowerflowError(f"{str(adapter_dir)!r} is not an adapter directory (no adapter_config.json)")
    return path


@dataclass(frozen=True)
class Lora:
    """The adapter to add: training's (--lora-*), or a saved one's (adapter_config.json)."""

    r: int
    alpha: float
    dropout: float
    targets: str  # all-linear, or module names comma-separated


def adapter_lora(directory: str | Path) -> Lora:
    """The LoRA of a saved PEFT adapter, from its adapter_config.json (its rank, scaling numerator and target
    modules; no dropout)."""
    config = json.loads((check_adapter_dir(directory) / "adapter_config.json").read_text())
    targets = config.get("target_modules") or "all-linear"
    return Lora(config["r"], config.get("lora_alpha", config["r"]), 0.0,
                targets if isinstance(targets, str) else ",".join(sorted(targets)))


def load_policy(cfg, device: torch.device):
    """The model a `sample` or `eval` config names: its base at --quant, with --adapter on when given."""
    model = load_base_model(cfg.model, cfg.quant, device, cfg.trust_remote_code)
    return load_adapter(model, cfg.adapter) if cfg.adapter else model


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False):
    """Attach a saved PEFT adapter to a loaded base model."""
    from peft import PeftModel

    adapter_dir = check_adapter_dir(adapter_dir)
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as err:
        raise PowerflowError(
            f"adapter {str(adapter_dir)!r} does not fit this model (was it trained on another base?): "
            f"{first_line(err)}"
        ) from None


@contextmanager
def eval_mode(model, adapter: bool = True):
    """Eval mode, and with `adapter=False` the LoRA layers off: the frozen base on the same weights.

    Both are restored in `finally`, so an exception while scoring never leaves the
    policy without its adapter or out of train mode.
    """
    was_training = model.training
    if was_training:  # switching modes walks every module: worth skipping when there is nothing to switch
        model.eval()
    try:
        if adapter or not hasattr(model, "disable_adapter"):
            yield model
        else:
            with model.disable_adapter():
                yield model
    finally:
        if was_training:
            model.train()


def hf_model(model):
    """The Hugging Face model inside a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.cache
def _cache_keyword(forward_owner: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_keyword(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.2x, `past_key_values` before."""
    return _cache_keyword(type(hf_model(model)))


def output_cache(output):
    """The KV cache a forward returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def parameter_count(model) -> int:
    """Number of weights, counting a 4-bit matrix by its logical shape (it is stored packed, two per byte)."""
    total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        total += quant_state.shape.numel() if quant_state is not None else param.numel()
    return total
