"""Will a training run fit on this GPU? Its peak accelerator memory by part, planned from config.json alone.

    plan = plan_memory(cfg, prompt_tokens=256)      # MemoryPlan: bytes per part, each exact or an estimate
    plan.total, plan.fits(24 * GiB), fixes(cfg, 24 * GiB, 256, "cuda", shape)

`powerflow train ... --dry-run` prints it. The model is built on the meta device from its config (shapes, no
memory) and wrapped by training's own `add_lora`, so the counts are the real model's; the sizes are in
memory_parts.py. The peak is what is held throughout (weights, LoRA, gradients, optimizer state) plus the largest
of the phases that come one after another: sampling, the update, the evaluation during training (with
--eval-data) and the preview of --alpha auto (before step 1). Left out: the prompt length, which config.json does
not know (`prompt_tokens`, default 256); the scoring pass, which saves no activations and so needs less than
the update; data parallel (each process plans as one); LoRA dropout's masks; allocator fragmentation beyond the
flat CUDA margin.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import PowerflowError, first_line
from .log_z import LogZHead
from .memory_parts import (
    LOGITS_COPIES,
    LORA_BYTES,
    Shape,
    activation_bytes,
    adamw8bit_bytes,
    adamw_bytes,
    decode_bytes,
    kv_cache_bytes,
    logits_bytes,
    recompute_bytes,
    weight_bytes,
)
from .model import add_lora
from .objectives import OBJECTIVES
from .preview import AUTO_CANDIDATES, ROWS_PER_CALL
from .record import eval_batch
from .samplers import SAMPLERS, resolve_sampler

GiB = 2**30
CARDS_GIB = (8, 12, 16, 24)  # the GPUs a user without one asks about
PROMPT_TOKENS = 256  # the prompt length assumed: config.json does not say
CUDA_CONTEXT = GiB // 2  # CUDA context, cuBLAS workspace and kernels, outside torch's allocator (an estimate)


@dataclass(frozen=True)
class Part:
    name: str
    phase: str  # held (all the time), or a phase: sampling, update, evaluation, preview; backward: within the update,
    # one such part at a time
    bytes: int
    exact: bool
    how: str  # the formula, with its numbers


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    device: str  # what the plan is for: cuda or cpu
    quant: str  # what --quant auto becomes there
    sampler: str
    optimizer: str
    prompt_tokens: int
    parts: tuple[Part, ...]

    def phase(self, name: str) -> int:
        return sum(part.bytes for part in self.parts if part.phase == name)

    @property
    def update(self) -> int:
        """The update's peak: what its forward keeps, and the larger of the logits' backward and a recomputed
        layer's (they come one after the other)."""
        return self.phase("update") + max((p.bytes for p in self.parts if p.phase == "backward"), default=0)

    @property
    def phases(self) -> dict[str, int]:
        """Each phase's bytes beyond what is held: sampling, update, and evaluation and preview when the run has
        them. They come one after another."""
        planned = {"sampling": self.phase("sampling"), "update": self.update}
        planned.update({name: self.phase(name) for name in ("evaluation", "preview")
                        if any(part.phase == name for part in self.parts)})
        return planned

    @property
    def peak_phase(self) -> str:
        """The phase that sets the peak."""
        return max(self.phases.items(), key=lambda item: item[1])[0]

    @property
    def total(self) -> int:
        """The peak: what is held throughout, plus the largest phase."""
        return self.phase("held") + max(self.phases.values())

    def fits(self, capacity: int) -> bool:
        return self.total <= capacity


# --- reading the model's shape without its weights


def model_config(name: str, trust_remote_code: bool = False):
    """The model's config from a local directory's config.json, or from the Hugging Face cache for a hub id:
    never a download."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PowerflowError(f"model directory {name!r} has no config.json: is it a Hugging Face model directory?")
        directory = path
    elif path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise PowerflowError(f"model path {name!r} does not exist (give a model directory or a hub id)")
    else:
        directory = _cached_config_dir(name)
    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise PowerflowError(f"could not read the config of {name!r}: {first_line(err)}") from None


def _cached_config_dir(name: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as err:  # HFValidationError: not a hub id either
        raise PowerflowError(f"--model {name!r} is neither a model directory nor a hub id: {first_line(err)}") from None
    if not isinstance(cached, str):
        raise PowerflowError(f"--dry-run reads config.json without downloading anything, and {name!r} has none in the "
                             f"Hugging Face cache: give a local model directory, or fetch the config once "
                             f"(hf download {name} config.json)")
    return Path(cached).parent


def model_shape(cfg: TrainConfig, config) -> Shape:
    """Build the model on the meta device (shapes only) and add LoRA with training's own `add_lora`."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PowerflowError(f"cannot build {cfg.model!r} from its config.json: {first_line(err)}") from None
    model.requires_grad_(False)
    output = model.get_output_embeddings()
    linears = [m.weight for m in model.modules() if type(m) is torch.nn.Linear and m is not output]
    quantized = {id(weight) for weight in linears}
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    hidden = config.get_text_config().hidden_size
    peft_model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                          gradient_checkpointing=False)
    lora: dict[str, list[int]] = {}
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            lora.setdefault(name.split(".lora_")[0].rsplit(".", 1)[-1], []).append(param.numel())
    with torch.device("meta"):
        head = LogZHead(hidden, cfg.z_hidden)
    return Shape(config.get_text_config(), tuple(w.numel() for w in linears), other, buffers,
                 {k: tuple(v) for k, v in lora.items()}, tuple(p.numel() for p in head.parameters()))


# --- the plan


def sampling_rows(cfg: TrainConfig) -> int:
    """Completions per sampling call: a step's, split at --explore-temperature into two calls, at most
    --sample-batch-size."""
    G, explored = cfg.samples_per_prompt, cfg.explored_per_prompt
    rows = cfg.prompts_per_step * max(G - explored, explored)
    return min(rows, cfg.sample_batch_size) if cfg.sample_batch_size else rows


def eval_rows(cfg: TrainConfig) -> int:
    """Completions an evaluation during training samples together on a GPU (record.eval_batch)."""
    return eval_batch(cfg, cfg.sample_batch_size, "cuda")


def preview_rows(cfg: TrainConfig) -> int:
    """Completions the preview of --alpha auto samples together: --sample-batch-size (at most preview.ROWS_PER_CALL),
    else ROWS_PER_CALL."""
    return min(cfg.sample_batch_size or ROWS_PER_CALL, ROWS_PER_CALL)


def micro_batch_rows(cfg: TrainConfig) -> int:
    """Completions per forward/backward: --micro-batch-size rounded down to whole groups when the objective or the
    batch log Z' compares a prompt's completions (update.micro_batches), at least one group."""
    group = cfg.micro_batch_group
    return min(cfg.prompts_per_step * cfg.samples_per_prompt, max(1, cfg.micro_batch_size // group) * group)


def plan_memory(cfg: TrainConfig, prompt_tokens: int = PROMPT_TOKENS, device: str = "cuda", config=None,
                shape: Shape | None = None) -> MemoryPlan:
    """The plan of `cfg` on `device` ("cuda": bf16, NF4 under --quant auto, 8-bit paged AdamW, generate under
    --sampler auto; "cpu": float32, full precision, AdamW, the static sampler), from config.json only."""
    if shape is None:
        shape = model_shape(cfg, config if config is not None else model_config(cfg.model, cfg.trust_remote_code))
    b = 2 if device == "cuda" else 4  # bf16 (or fp16) on a GPU, float32 on the CPU (model.compute_dtype)
    quant = cfg.quant if cfg.quant != "auto" else ("nf4" if device == "cuda" else "none")
    sampler = resolve_sampler(cfg.sampler, torch.device(device), cfg.top_p)[0]
    eight_bit = device == "cuda"
    trained = [n for numels in shape.lora.values() for n in numels]
    if OBJECTIVES[cfg.objective].uses_log_z:  # else the head gets no gradient, and Adam no state for it
        trained += list(shape.head)
    lora = sum(n for numels in shape.lora.values() for n in numels)
    P, L = prompt_tokens, cfg.max_new_tokens
    rows, mb = sampling_rows(cfg), micro_batch_rows(cfg)
    activations, how = activation_bytes(shape, cfg, mb, P, b)
    logits, chunk = logits_bytes(shape, mb, L, device)
    optimizer = adamw8bit_bytes(trained) if eight_bit else adamw_bytes(trained, 4 if device == "cpu" else 0)
    quantized, others = sum(shape.quantizable), shape.other_params
    parts = [
        Part(f"base weights ({quant})", "held", weight_bytes(shape, quant, b), True,
             f"{_m(quantized)} x 0.5 B + state, {_m(others)} x {b} B" if quant == "nf4"
             else f"{_m(quantized + others)} x {b} B"),
        Part(f"LoRA (r={cfg.lora_r})", "held", lora * LORA_BYTES, True, f"{_m(lora)} x 4 B, {len(shape.lora)} kinds"),
        Part("log Z' head", "held", sum(shape.head) * 4, True, f"{_m(sum(shape.head))} x 4 B"),
        Part("gradients", "held", sum(trained) * 4, True, f"{_m(sum(trained))} x 4 B"),
        Part("optimizer state", "held", optimizer, True,
             f"{_m(sum(trained))} x 2 x 1 B + absmax" if eight_bit else f"{_m(sum(trained))} x 2 x 4 B"),
        *_sampling_parts("sampling", shape, sampler, rows, cfg.samples_per_prompt, P, L, b),
        Part("activations kept", "update", activations, False, how),
        Part("logits", "backward", LOGITS_COPIES[device] * logits, False,
             f"{LOGITS_COPIES[device]} x {chunk:,} positions x {shape.vocab:,} x 4 B"),
    ]
    if cfg.gradient_checkpointing:
        recomputed, recomputed_how = recompute_bytes(shape, cfg, mb, P, b)
        parts.append(Part("recomputed layer", "backward", recomputed, False, recomputed_how))
    if cfg.eval_data:  # temperature 1 from the policy, whatever the training sampler: a prompt's k rows
        parts += _sampling_parts("evaluation", shape, sampler, eval_rows(cfg), cfg.eval_k, P, L, b)
    if cfg.alpha == "auto":  # the base model's samples, by the static sampler, before step 1
        parts += _sampling_parts("preview", shape, "static", preview_rows(cfg), AUTO_CANDIDATES, P, L, b)
    if device == "cuda":
        parts.append(Part("CUDA context", "held", CUDA_CONTEXT, False, "flat: context, kernels, cuBLAS"))
    return MemoryPlan(cfg.model, device, quant, sampler, "PagedAdamW8bit" if eight_bit else "AdamW", P, tuple(parts))


def _sampling_parts(phase: str, shape: Shape, sampler: str, rows: int, per_prompt: int, prompt: int, length: int,
                    b: int) -> list[Part]:
    """A sampling call's KV cache and workspace: `rows` completions, `per_prompt` of each prompt."""
    drawing = SAMPLERS[sampler]  # a prompt of a call prefilled once, or every row
    prefill_rows = min(rows, math.ceil(rows / per_prompt) + (1 if rows % per_prompt else 0)) if drawing.prefills_once \
        else rows
    workspace, how = decode_bytes(shape, rows, prefill_rows, prompt + length, prompt, drawing.next_token_bytes, b,
                                  drawing.static_cache)
    title = "" if phase == "sampling" else f" ({phase})"
    return [Part(f"KV cache{title}", phase, kv_cache_bytes(shape, rows, prompt + length, b), drawing.static_cache,
                 f"2 x {shape.layers} x {shape.kv_heads} x {shape.head_dim} x {prompt + length} x {rows} rows x {b} B"),
            Part(f"sampling workspace{title}", phase, workspace, False, how)]


def _m(count: int) -> str:
    """A count of weights in millions."""
    return f"{count / 1e6:,.2f} M"


# --- does it fit, and what would make it


@dataclass(frozen=True)
class Fix:
    change: dict  # TrainConfig fields -> values
    total: int  # the peak planned with the change

    @property
    def flags(self) -> str:
        return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in self.change.items())


def target(device: str) -> tuple[str, list[tuple[str, int]]]:
    """What to plan for under --device, and the memory to compare with: (cuda or cpu, [(label, bytes)]). A GPU
    here: its total memory; none: the GPUs a user would buy (8 to 24 GiB); --device cpu: this machine's RAM."""
    if device == "cpu":
        return "cpu", [("this machine's RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))]
    if torch.cuda.is_available():
        index = 0 if device == "auto" else torch.device(device).index or 0
        _, total = torch.cuda.mem_get_info(index)
        return "cuda", [(f"{torch.cuda.get_device_name(index)} (cuda:{index})", total)]
    return "cuda", [(f"{size} GiB GPU", size * GiB) for size in CARDS_GIB]


def halvings(n: int, floor: int = 1) -> list[int]:
    """n/2, n/4, ... down to `floor`."""
    values = []
    while n // 2 >= floor:
        n //= 2
        values.append(n)
    return values


def levers(cfg: TrainConfig, plan: MemoryPlan) -> list[list[dict]]:
    """The changes that lower the peak without changing what is learnt, gentlest first within each; shorter
    completions last, since they change the task."""
    options = []
    if plan.quant == "none":
        options.append([{"quant": "nf4"}])
    if not cfg.gradient_checkpointing:
        options.append([{"gradient_checkpointing": True}])
    rows = micro_batch_rows(cfg)
    smaller = [n for n in halvings(cfg.micro_batch_size) if micro_batch_rows(replace(cfg, micro_batch_size=n)) < rows]
    options.append([{"micro_batch_size": n} for n in smaller])
    sampled = [sampling_rows(cfg), *([eval_rows(cfg)] if cfg.eval_data else []),
               *([preview_rows(cfg)] if cfg.alpha == "auto" else [])]  # every call --sample-batch-size caps
    options.append([{"sample_batch_size": n} for n in halvings(max(sampled))])
    options.append([{"max_new_tokens": n} for n in halvings(cfg.max_new_tokens, max(16, cfg.min_new_tokens))])
    return [option for option in options if option]


def fixes(cfg: TrainConfig, capacity: int, prompt_tokens: int, device: str, shape: Shape) -> list[Fix]:
    """Changes that bring the peak within `capacity`, each checked by planning again: every lever that does it
    alone, at its gentlest setting that does; else the levers together, each as far as needed, in order."""
    plan = plan_memory(cfg, prompt_tokens, device, shape=shape)
    if plan.fits(capacity):
        return []
    alone = [fix for option in levers(cfg, plan) if (fix := _first_fit(cfg, option, {}, capacity, prompt_tokens,
                                                                         device, shape))]
    if alone:
        return alone
    change: dict = {}
    for option in levers(cfg, plan):
        if fix := _first_fit(cfg, option, change, capacity, prompt_tokens, device, shape):
            return [fix]
        change = {**change, **option[-1]}  # not enough alone: this lever at its strongest, and the next one
    return []


def _first_fit(cfg: TrainConfig, option: list[dict], base: dict, capacity: int, prompt_tokens: int, device: str,
               shape: Shape) -> Fix | None:
    for setting in option:
        change = {**base, **setting}
        try:
            total = plan_memory(replace(cfg, **change), prompt_tokens, device, shape=shape).total
        except PowerflowError:  # a setting this config refuses (e.g. below --min-new-tokens)
            continue
        if total <= capacity:
            return Fix(change, total)
    return None
