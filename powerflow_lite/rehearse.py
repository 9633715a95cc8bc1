"""Rehearse a training step on a GPU without a GPU: the real code at a real model's shape, on the meta device.

    rehearsal = rehearse(cfg, config, prompt_tokens=256)   # seconds on a CPU: no weights, no arithmetic
    rehearsal.phases["update"].peak, rehearsal.phases["sampling"].flops

The model is built from its config.json on torch's meta device (shapes, dtypes, no memory) as it would be on a
GPU: bf16, NF4 `bnb.nn.Linear4bit` layers in place of the Linear ones under --quant nf4 (holding the bytes
bitsandbytes stores, and running its 4-bit matmul through the op's registered fake kernel), `prepare_base`, and
training's own `add_lora` with gradient checkpointing. Then the phases of one step run through the product's own
functions where they can:

* sampling: a prefill of the step's prompts and the decode step at the last position, with the cache at its final
  length (every completion runs to --max-new-tokens), and the next-token tensors of the sampler;
* scoring: `logprobs.score` with the adapter off, --micro-batch-size rows at a time;
* the update: `logprobs.completion_logprobs` with grad on one micro-batch, and its backward;
* the evaluation (with --eval-data) and the --alpha auto preview: sampling at their own batch sizes.

A dispatch mode counts the bytes of every tensor storage as it is created and freed (`LiveBytes`): a phase's peak
is measured, not estimated, for torch's tensors. It counts FLOPs too, by torch's own formulas
(torch.utils.flop_counter). On the meta device torch's scaled_dot_product_attention takes its math path, which
holds a [rows, heads, T, T] attention matrix; on a GPU it runs a fused kernel that does not. `cuda_attention`
sends it to the memory-efficient kernel's op (its meta kernel and backward are torch's), as CUDA does with a
padding mask. What the meta device
cannot run is said in `Rehearsal.not_rehearsed` and stays in the hand-written plan: the optimizer step (bitsandbytes'
paged 8-bit AdamW needs managed memory; its state is counted from the trainable parameters), the CUDA allocator
(block rounding, fragmentation) and the CUDA context, and any code behind `device.type == "cuda"`.

Where the code asks a tensor for a value (`.item()`, `bool(t)`, a boolean mask, `torch.unique`), the rehearsal
answers with the worst case for memory: masks are built, every completion token is scored, each prompt of a step
is answered by --samples-per-prompt rows.
"""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from .config import TrainConfig
from .errors import PowerflowError, first_line
from .estimate import PhaseCost
from .evaluate import eval_sources
from .log_z import LogZHead
from .logprobs import completion_logprobs, score
from .memory_parts import NESTED_BLOCK, NF4_BLOCK
from .memory_plan import eval_rows, micro_batch_rows, preview_rows, sampling_rows
from .model import Lora, add_lora, cache_keyword, eval_mode, hf_model, import_bitsandbytes, prepare_base
from .preview import AUTO_CANDIDATES
from .samplers import SAMPLERS, resolve_sampler
from .samplers.rollouts import Rollouts
from .samplers.static import draw

aten = torch.ops.aten
DTYPE = torch.bfloat16  # what model.compute_dtype picks on a GPU with bf16


@dataclass(frozen=True)
class PhaseRun:
    """One phase as rehearsed: its peak bytes above the weights, the FLOPs and bytes read of the whole phase in
    one step, how many calls make it up, and the error it raised, if any."""

    name: str
    peak: int  # peak bytes of live tensors above the weights (base, LoRA, log Z' head), over the phase
    flops: float  # the whole phase in one step (every call, every decode step)
    bytes_read: float  # weights and KV cache read from memory over the phase (decode: once per token)
    calls: int  # forward calls (sampling: batches; scoring and update: micro-batches)
    rows: int = 0  # completions a call takes
    decode_steps: int = 0  # tokens generated one after another per call (sampling only)
    error: str = ""  # what the code raised at this shape, if anything
    parts: dict = field(default_factory=dict)  # peaks within the phase (sampling: the prefill, the last token)
    prefill_flops: float = 0.0  # sampling: the FLOPs of its prefills (compute-bound), within `flops`


@dataclass(frozen=True)
class Rehearsal:
    model: str
    quant: str
    sampler: str
    prompt_tokens: int
    weights: int  # measured bytes of the base weights, LoRA and the log Z' head as built
    gradients: int  # measured bytes of the LoRA gradients after the update's backward
    phases: dict[str, PhaseRun]
    seconds: float  # how long the rehearsal took on this CPU
    not_rehearsed: tuple[str, ...] = field(default=())


NOT_REHEARSED = (
    "optimizer state and step: bitsandbytes' paged 8-bit AdamW needs CUDA managed memory (the plan counts its state "
    "from the trainable parameters, exactly)",
    "the CUDA context, cuBLAS workspace and the caching allocator's rounding and fragmentation (the plan's flat "
    "margin, an estimate until a card measures it)",
    "generate's own loop (--sampler hf): rehearsed as its prefill and last decode step with a cache of full length; "
    "the per-token tensors as generate makes them (float32 logits, softmax)",
)


# --- counting live bytes


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensor storages on the meta device, and their peak since `reset_peak`.

    Every op's new output storage (not a view of an existing one) is added when it is created and taken off when
    Python frees it (a weakref finalizer on the storage). Questions the meta device cannot answer get the answer
    that costs most memory: see the module docstring."""

    def __init__(self, rows_per_prompt: int = 1):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        self.rows_per_prompt = rows_per_prompt  # torch.unique of a step's prompts: each prompt this many times
        self.truth = False  # what bool(t) answers: False builds attention masks; the sampler's checks want True
        self.flops = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def reset_peak(self) -> int:
        self.peak = self.current
        return self.current

    @contextmanager
    def answering(self, truth: bool):
        saved, self.truth = self.truth, truth
        try:
            yield
        finally:
            self.truth = saved

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._answer(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
            self.flops += op_flops(func, args, kwargs, out)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                self.track(tensor)
        return out

    def _answer(self, func, args, kwargs):
        """The worst case for what meta cannot compute; None: run the op."""
        if func is aten._local_scalar_dense.default:
            value = args[0]
            if value.dtype == torch.bool:
                return self.truth
            return 0 if not value.dtype.is_floating_point else 0.0
        if func is aten.nonzero.default:  # every element is non-zero
            value = args[0]
            return torch.empty((value.numel(), value.dim()), dtype=torch.long, device=value.device)
        if func is aten.unique_dim.default:  # a step's prompts, each answered by rows_per_prompt rows
            value = args[0]
            rows = value.shape[0]
            distinct = max(1, math.ceil(rows / self.rows_per_prompt))
            return (torch.empty((distinct, *value.shape[1:]), dtype=value.dtype, device=value.device),
                    torch.empty((rows,), dtype=torch.long, device=value.device),
                    torch.empty((distinct,), dtype=torch.long, device=value.device))
        if func is aten.index.Tensor:  # x[mask] with a boolean mask: every position selected
            value, indices = args[0], args[1]
            if len(indices) == 1 and indices[0] is not None and indices[0].dtype == torch.bool:
                mask = indices[0]
                return torch.empty((mask.numel(), *value.shape[mask.dim():]), dtype=value.dtype, device=value.device)
        return None


@contextmanager
def cuda_attention():
    """torch.nn.functional.scaled_dot_product_attention as a GPU runs it with a padding mask (efficient_attention),
    for the duration. A function attribute rather than a mode: gradient checkpointing recomputes a layer inside the
    backward, where torch function modes are not active, and must save what the forward saved."""
    functional = torch.nn.functional
    saved = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = efficient_attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = saved


def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False):
    """The mask as an additive bias in the query's dtype, keys and values repeated to every head, then the
    memory-efficient kernel's op, which keeps a log-sum-exp per query for the backward, not the attention matrix."""
    if query.shape[1] != key.shape[1]:  # grouped-query attention: the kernel takes as many key heads as queries
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    bias = attn_mask
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask,
                                                                                              float("-inf"))
    if bias is not None:
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, bias, grad, dropout_p,
                                                                  is_causal, scale=scale)[0]


def op_flops(func, args, kwargs, out) -> int:
    """An op's FLOPs by torch's formulas (torch.utils.flop_counter), and bitsandbytes' 4-bit matmul's: 2 per
    multiply-add of the input [..., K] with the [N, K] weight."""
    formula = flop_registry.get(func._overloadpacket)
    if formula is not None:
        return formula(*args, **kwargs, out_val=out)
    if str(func._overloadpacket) == "bitsandbytes.gemm_4bit":
        inputs, shape = args[0], args[2]
        return 2 * (inputs.numel() // inputs.shape[-1]) * shape[0] * shape[1]
    return 0


# --- the model, as it would be on a GPU


def nf4_layer(linear: torch.nn.Linear, dtype: torch.dtype = DTYPE):
    """A `bnb.nn.Linear4bit` on meta holding what bitsandbytes stores for `linear` in NF4 with double quantization
    (memory_parts.nf4_bytes): packed weights, 8-bit absmax per block of 64, its float32 absmax per 256 blocks, the
    offset and both codes. Its forward is bitsandbytes' own (`matmul_4bit`, the gemm_4bit op)."""
    bnb = import_bitsandbytes()
    from bitsandbytes.functional import QuantState  # after import_bitsandbytes, which quiets its import
    out_features, in_features = linear.weight.shape
    n, meta = out_features * in_features, torch.device("meta")
    blocks = math.ceil(n / NF4_BLOCK)
    nested = QuantState(absmax=torch.empty(math.ceil(blocks / NESTED_BLOCK), dtype=torch.float32, device=meta),
                        code=torch.empty(256, dtype=torch.float32, device=meta), blocksize=NESTED_BLOCK,
                        dtype=torch.float32)
    state = QuantState(absmax=torch.empty(blocks, dtype=torch.uint8, device=meta),
                       shape=torch.Size([out_features, in_features]),
                       code=torch.empty(16, dtype=torch.float32, device=meta), blocksize=NF4_BLOCK, quant_type="nf4",
                       dtype=dtype, offset=torch.empty((), dtype=torch.float32, device=meta), state2=nested)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=linear.bias is not None, compute_dtype=dtype,
                              quant_type="nf4", device=meta)
    layer.weight = bnb.nn.Params4bit(torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=meta), requires_grad=False,
                                     quant_state=state, blocksize=NF4_BLOCK, quant_type="nf4", bnb_quantized=True,
                                     module=layer)
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer


def build_model(config, quant: str, name: str, lora: Lora | None, gradient_checkpointing: bool = True,
                trust_remote_code: bool = False):
    """The model as setup (or a command's load_policy) builds it on a GPU, on the meta device: the base in bf16
    (NF4 Linear layers under --quant nf4), prepare_base, then add_lora when there is an adapter."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPE, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PowerflowError(f"cannot build {name!r} from its config.json: {first_line(err)}") from None
    if quant == "nf4":  # what transformers' bitsandbytes integration does: every Linear but the LM head
        output = model.get_output_embeddings()
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear and child is not output:
                    setattr(module, child_name, nf4_layer(child))
    prepare_base(model)
    if lora is None:
        return model
    return add_lora(model, lora.r, lora.alpha, lora.dropout, lora.targets, gradient_checkpointing)


def storage_bytes(tensors) -> int:
    seen = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


# --- the phases


def meta_rollouts(rows: int, prompt: int, length: int, per_prompt: int) -> Rollouts:
    """`rows` completions of `length` tokens after prompts of `prompt` tokens, `per_prompt` rows a prompt."""
    meta = torch.device("meta")
    group_ids = torch.arange(rows, device=meta) // per_prompt
    return Rollouts(torch.zeros(rows, prompt, dtype=torch.long, device=meta),
                    torch.ones(rows, prompt, dtype=torch.long, device=meta),
                    torch.zeros(rows, length, dtype=torch.long, device=meta),
                    torch.ones(rows, length, dtype=torch.long, device=meta), group_ids,
                    torch.ones(rows, dtype=torch.bool, device=meta))


def _sampling_call(model, tracker: LiveBytes, sampler: str, rows: int, per_prompt: int, prompt: int, length: int,
                   weights: int) -> tuple[int, int, float, float, float]:
    """One sampling call: prefill, then the last decode step with the cache at its full length, and the sampler's
    next-token tensors.  -> (peak bytes above the start in the prefill, and in the last decode step; FLOPs of the
    whole call, and of its prefill; bytes its decode steps read: the `weights` and the cache, once per token)"""
    from transformers import DynamicCache, StaticCache

    drawing = SAMPLERS[sampler]
    config = hf_model(model).config
    meta = torch.device("meta")
    prefill_rows = min(rows, math.ceil(rows / per_prompt)) if drawing.prefills_once else rows
    start, flops = tracker.reset_peak(), tracker.flops
    with torch.no_grad(), eval_mode(model):
        cache = StaticCache(config=config, max_cache_len=prompt + length) if drawing.static_cache else DynamicCache(
            config=config)
        ids = torch.zeros(prefill_rows, prompt, dtype=torch.long, device=meta)
        mask = torch.ones_like(ids)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                       **{cache_keyword(model): cache}, cache_position=torch.arange(prompt, device=meta),
                       use_cache=True, logits_to_keep=1).logits[:, -1]  # [U, V]
        if prefill_rows < rows:  # each prompt's cache rows copied to its completions (once it holds the prompts)
            with tracker.answering(True):
                cache.reorder_cache(torch.arange(rows, device=meta) // per_prompt)
            logits = logits.repeat_interleave(per_prompt, dim=0)[:rows]
        _next_token(tracker, logits, sampler)
        del logits
        prefill_flops, prefill_peak = tracker.flops - flops, tracker.peak - start
        if not drawing.static_cache:  # generate's cache, grown to its last length (the growing is not counted: a
            for layer in range(len(cache.layers)):  # token at a time, each layer's step a small copy)
                keys = cache.layers[layer].keys
                grown = keys.new_empty((*keys.shape[:2], length - 1, keys.shape[-1]))
                cache.update(grown, grown.clone(), layer)
            del grown
        tracker.reset_peak()
        position = prompt + length - 1  # the last token: the largest attention, the cache at its fullest
        flops = tracker.flops
        logits = model(input_ids=torch.zeros(rows, 1, dtype=torch.long, device=meta),
                       attention_mask=torch.ones(rows, position + 1, dtype=torch.long, device=meta),
                       position_ids=torch.full((rows, 1), position, device=meta), **{cache_keyword(model): cache},
                       cache_position=torch.tensor([position], device=meta), use_cache=True).logits[:, -1]
        _next_token(tracker, logits, sampler)
        decode_flops = tracker.flops - flops
        cache_bytes = sum(storage_bytes([layer.keys, layer.values]) for layer in cache.layers)
        del logits, cache
    # each decode step costs at most what the last one does (attention over a shorter cache with generate's)
    return (prefill_peak, tracker.peak - start, prefill_flops + (length - 1) * decode_flops, prefill_flops,
            (length - 1) * (weights + cache_bytes))


def _next_token(tracker: LiveBytes, logits: torch.Tensor, sampler: str) -> None:
    """The sampler's per-token tensors over the vocabulary: static's (samplers/static.py, its own `draw`), else
    generate's float32 copy and softmax, and the draw."""
    if sampler == "static":
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        with tracker.answering(True):  # draw checks that the probabilities are finite
            draw(torch.softmax(log_probs, dim=-1), torch.zeros(len(logits), dtype=torch.float64, device=logits.device))
    else:
        probs = torch.softmax(logits.float(), dim=-1)
        torch.multinomial(probs, 1)


def rehearse(cfg: TrainConfig, config, prompt_tokens: int) -> Rehearsal:
    """One training step of `cfg` as it would run on a GPU, at the shape of `config` (the model's config.json)."""
    started = time.perf_counter()
    quant = cfg.quant if cfg.quant != "auto" else "nf4"
    sampler = resolve_sampler(cfg.sampler, torch.device("cuda"), cfg.top_p)[0]
    P, L, G = prompt_tokens, cfg.max_new_tokens, cfg.samples_per_prompt
    tracker = LiveBytes(rows_per_prompt=G)
    phases: dict[str, PhaseRun] = {}
    with tracker, cuda_attention():
        model = build_model(config, quant, cfg.model, Lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                                           cfg.lora_targets), cfg.gradient_checkpointing,
                            cfg.trust_remote_code)
        head_bytes = 4 * _head_numel(cfg, config)
        for tensor in [*model.parameters(), *model.buffers()]:
            tracker.track(tensor)
        weights = tracker.current + head_bytes
        tracker.current += head_bytes  # the log Z' head: float32, held, never on the model's path
        step_rows = cfg.prompts_per_step * G
        rows = sampling_rows(cfg)
        phases["sampling"] = _sampling_phase("sampling", model, tracker, sampler, rows, G, P, L,
                                             math.ceil(step_rows / rows), weights)
        micro = micro_batch_rows(cfg)
        phases["scoring"] = _phase("scoring", tracker, lambda: _score(model, P, L, micro, G),
                                   calls=math.ceil(step_rows / micro) * (1 if SAMPLERS[sampler].returns_logps else 2),
                                   rows=micro)
        phases["update"] = _phase("update", tracker, lambda: _update(model, P, L, micro, G),
                                  calls=math.ceil(step_rows / micro) * cfg.inner_epochs, rows=micro)
        gradients = storage_bytes([p.grad for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        if cfg.eval_data:
            rows = eval_rows(cfg)
            phases["evaluation"] = _sampling_phase("evaluation", model, tracker, sampler, rows, cfg.eval_k, P, L, 1,
                                                   weights)
        if cfg.alpha == "auto":
            phases["preview"] = _sampling_phase("preview", model, tracker, "static", preview_rows(cfg),
                                                AUTO_CANDIDATES, P, L, 1, weights)
    for name, run in phases.items():
        phases[name] = replace(run, bytes_read=run.bytes_read or _weight_reads(weights, run))
    return Rehearsal(cfg.model, quant, sampler, P, weights, gradients, phases, time.perf_counter() - started,
                     NOT_REHEARSED)


def _weight_reads(weight_bytes: int, run: PhaseRun) -> float:
    """Bytes a compute-bound phase reads: the weights once per forward call (thrice in an update: its forward,
    the recomputation and the backward)."""
    return weight_bytes * run.calls * (3 if run.name == "update" else 1)


def _head_numel(cfg: TrainConfig, config) -> int:
    with torch.device("meta"):
        head = LogZHead(config.get_text_config().hidden_size, cfg.z_hidden)
    return sum(p.numel() for p in head.parameters())


def _sampling_phase(name: str, model, tracker: LiveBytes, sampler: str, rows: int, per_prompt: int, prompt: int,
                    length: int, calls: int, weights: int) -> PhaseRun:
    try:
        prefill, last, flops, prefill_flops, bytes_read = _sampling_call(model, tracker, sampler, rows, per_prompt,
                                                                         prompt, length, weights)
    except Exception as err:  # noqa: BLE001 - the rehearsal reports what the code raised at this shape
        return PhaseRun(name, 0, 0.0, 0.0, calls, rows, length, f"{type(err).__name__}: {first_line(err)}")
    return PhaseRun(name, max(prefill, last), flops * calls, bytes_read * calls, calls, rows, length,
                    parts={"prefill": prefill, "last token": last}, prefill_flops=prefill_flops * calls)


def _phase(name: str, tracker: LiveBytes, body, calls: int, rows: int) -> PhaseRun:
    start, flops = tracker.reset_peak(), tracker.flops
    try:
        body()
    except Exception as err:  # noqa: BLE001 - the rehearsal reports what the code raised at this shape
        return PhaseRun(name, 0, 0.0, 0.0, calls, rows, 0, f"{type(err).__name__}: {first_line(err)}")
    return PhaseRun(name, tracker.peak - start, (tracker.flops - flops) * calls, 0.0, calls, rows)


def _score(model, prompt: int, length: int, rows: int, per_prompt: int) -> None:
    """One scoring micro-batch with the adapter off, by the kernel the step uses."""
    score(model, meta_rollouts(rows, prompt, length, per_prompt), rows, adapter=False)


def _update(model, prompt: int, length: int, rows: int, per_prompt: int) -> None:
    """One micro-batch of the update: log pi with grad (gradient checkpointing as configured), and its backward."""
    model.train()
    try:
        logps, _ = completion_logprobs(model, meta_rollouts(rows, prompt, length, per_prompt))
        logps.sum().backward()  # the objectives' own tensors are [rows, length]: nothing beside the logits
    finally:
        model.eval()


# --- beside the plan, and how long it would take


@dataclass(frozen=True)
class Compared:
    phase: str
    planned: int | None  # the plan's bytes for the phase (None: not a phase of the plan)
    rehearsed: int
    flops: float
    error: str

    @property
    def difference(self) -> float | None:
        """(planned - rehearsed) / rehearsed: positive where the plan is the larger."""
        if self.planned is None or not self.rehearsed:
            return None
        return (self.planned - self.rehearsed) / self.rehearsed


def compare(plan, rehearsal: Rehearsal) -> list[Compared]:
    """Each rehearsed phase beside the plan's figure for it: the bytes above the weights. The update's gradients
    come to life in its backward, so the rehearsal counts them in the update and the plan (which holds them
    throughout) adds them there for the comparison. Scoring is no phase of the plan: it saves no activations, and
    the plan takes it to need less than the update."""
    gradients = sum(part.bytes for part in plan.parts if part.name == "gradients")
    rows = []
    for name, run in rehearsal.phases.items():
        planned = plan.phases.get(name)
        if name == "update" and planned is not None:
            planned += gradients
        rows.append(Compared(name, planned, run.peak, run.flops, run.error))
    return rows


def planned_weights(plan) -> int:
    """The plan's base weights, LoRA and log Z' head: what the rehearsal builds."""
    return sum(part.bytes for part in plan.parts if part.phase == "held" and part.exact
               and part.name.split(" ")[0] in ("base", "LoRA", "log"))


def step_costs(rehearsal: Rehearsal) -> list[PhaseCost]:
    """One training step's rehearsed FLOPs and bytes as phases for the time estimate (estimate.py): the sampling
    split into its compute-bound prefill and its bandwidth-bound decode, the scoring, the update."""
    phases = rehearsal.phases
    sampling = phases["sampling"]
    return [PhaseCost("prefill", sampling.prefill_flops, rehearsal.weights * sampling.calls),
            PhaseCost("decode", sampling.flops - sampling.prefill_flops, sampling.bytes_read,
                      max(1, sampling.decode_steps)),
            *(PhaseCost(name, phases[name].flops, phases[name].bytes_read) for name in ("scoring", "update"))]


def evaluation_costs(rehearsal: Rehearsal, completions: int, passes: int, micro: int) -> list[PhaseCost]:
    """One whole evaluation of `completions` samples: the rehearsed sampling call as many times as they take, and
    `passes` scoring passes over them (log pi unless the sampler returns it; the base's from step 1 on),
    `micro` completions a call at the rehearsed scoring's FLOPs per completion."""
    evaluation, scoring = rehearsal.phases["evaluation"], rehearsal.phases["scoring"]
    calls = math.ceil(completions / evaluation.rows) if evaluation.rows else 1
    per_completion = scoring.flops / (scoring.calls * scoring.rows) if scoring.rows else 0.0
    return [PhaseCost("eval prefill", evaluation.prefill_flops * calls, rehearsal.weights * calls),
            PhaseCost("eval decode", (evaluation.flops - evaluation.prefill_flops) * calls,
                      evaluation.bytes_read * calls, max(1, evaluation.decode_steps) * calls),
            PhaseCost("eval scoring", per_completion * completions * passes,
                      rehearsal.weights * passes * math.ceil(completions / micro))]


def costs(rehearsal: Rehearsal, cfg: TrainConfig | None = None) -> list[PhaseCost]:
    """A step's phases, and with `cfg`'s evaluation (--eval-data) one evaluation of --eval-limit x --eval-k
    samples of each set (one sampling call when --eval-limit is 0: the data's size is not known here) spread over
    --eval-every steps."""
    found = step_costs(rehearsal)
    if cfg is None or "evaluation" not in rehearsal.phases or not cfg.eval_every:
        return found
    sets = len(eval_sources(cfg.eval_data))  # --eval-data's sets, each evaluated at every evaluation
    completions = sets * (cfg.eval_limit * cfg.eval_k or rehearsal.phases["evaluation"].rows)
    passes = 1 + (not SAMPLERS[rehearsal.sampler].returns_logps)  # the base's, and log pi unless sampled with it
    whole = evaluation_costs(rehearsal, completions, passes, micro_batch_rows(cfg))
    return found + [replace(cost, flops=cost.flops / cfg.eval_every, bytes=cost.bytes / cfg.eval_every)
                    for cost in whole]


# --- a command that only samples: powerflow sample, eval and preview


@dataclass(frozen=True)
class InferenceRehearsal:
    model: str
    quant: str
    sampler: str
    prompt_tokens: int
    rows: int  # completions sampled together
    weights: int  # the base, and the adapter's LoRA if any
    sampling: PhaseRun
    scoring: PhaseRun
    seconds: float

    @property
    def peak(self) -> int:
        """Above the weights: the larger of a sampling call and its scoring."""
        return max(self.sampling.peak, self.scoring.peak)


def rehearse_inference(name: str, config, quant: str, sampler: str, rows: int, per_prompt: int, prompt_tokens: int,
                       max_new_tokens: int, score_rows: int, lora: Lora | None = None,
                       trust_remote_code: bool = False) -> InferenceRehearsal:
    """One sampling call of `rows` completions (`per_prompt` of each prompt) and their scoring `score_rows` at a
    time, as `powerflow sample`, `eval` or `preview` runs them on a GPU, on the meta device."""
    started = time.perf_counter()
    per_prompt = max(1, min(per_prompt, rows))
    tracker = LiveBytes(rows_per_prompt=per_prompt)
    with tracker, cuda_attention():
        model = build_model(config, quant, name, lora, gradient_checkpointing=False,
                            trust_remote_code=trust_remote_code)
        for tensor in [*model.parameters(), *model.buffers()]:
            tracker.track(tensor)
        weights = tracker.current
        sampling = _sampling_phase("sampling", model, tracker, sampler, rows, per_prompt, prompt_tokens,
                                   max_new_tokens, 1, weights)
        scored = min(score_rows, rows)
        scoring = _phase("scoring", tracker, lambda: _score(model, prompt_tokens, max_new_tokens, scored, per_prompt),
                         calls=math.ceil(rows / scored), rows=scored)
    return InferenceRehearsal(name, quant, sampler, prompt_tokens, rows, weights, sampling, scoring,
                              time.perf_counter() - started)
