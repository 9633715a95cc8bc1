"""The byte count of each part of a memory plan (memory_plan.py): the exact ones from how torch, bitsandbytes
and peft store their tensors, the estimates from what a decoder layer saves for its backward (calibrated on the
CPU against torch's allocator, docs/design.md section 15).

    weight_bytes(shape, "nf4", dtype_bytes=2)      # the base model as load_base_model keeps it on a GPU
    activation_bytes(shape, cfg, rows=8, prompt=256, dtype_bytes=2)

Every function takes sizes, not tensors. LLaMA-style decoder layers (q/k/v/o, gate/up/down) are assumed by the
activation estimate only; the exact parts hold for any architecture transformers builds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig
from .logprobs import LOGITS_BUDGET

LORA_BYTES = 4  # peft keeps adapter weights in float32 (autocast_adapter_dtype), on a bf16 or NF4 base alike
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes 4-bit blocksize; its double quant's blocksize for the absmax
EIGHT_BIT_MIN, EIGHT_BIT_BLOCK = 4096, 256  # bitsandbytes 8-bit optimizers: smaller tensors keep 32-bit state
# float32 copies of a logits chunk its backward holds: on the CPU the logits and their gradient (calibrated against
# the allocator, docs/design.md section 15); on a GPU also the bf16 head output and the softmax of the log-sum-exp's
# backward (the rehearsal's measure, examples/results/rehearsal.md)
LOGITS_COPIES = {"cpu": 2, "cuda": 4}
# which LoRA'd projections read the same input (LLaMA-style decoder layer): with a float32 base they share it
INPUT_OF = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "attn", "gate_proj": "h2", "up_proj": "h2",
            "down_proj": "mlp"}


@dataclass(frozen=True)
class Shape:
    """What the plan needs of the model, read off its meta-device copy."""

    config: object  # the text config
    quantizable: tuple[int, ...]  # numel of each Linear weight NF4 would quantize (all but the LM head)
    other_params: int  # numel of every other parameter (embeddings, LM head, norms, biases)
    buffer_bytes: int  # rotary tables and the like, in their own dtype
    lora: dict[str, tuple[int, ...]]  # adapted module name (q_proj) -> numel of its A and B in every layer
    head: tuple[int, ...]  # numel of each log Z' head tensor

    @property
    def layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden(self) -> int:
        return self.config.hidden_size

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden // self.heads

    @property
    def vocab(self) -> int:
        return self.config.vocab_size


# --- the exact parts


def nf4_bytes(numel: int) -> int:
    """One Linear weight as bitsandbytes stores it in NF4 with double quant: two weights a byte; per block of 64 an
    8-bit absmax; per 256 blocks a float32 absmax of those; a float32 offset, the 16-entry NF4 code and the
    256-entry code of the nested quantization (float32, a copy per weight)."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return (numel + 1) // 2 + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 + 16 * 4 + 256 * 4


def weight_bytes(shape: Shape, quant: str, dtype_bytes: int) -> int:
    """The base model: NF4 Linear weights, everything else (embeddings, LM head, norms, biases) in the compute
    dtype, buffers in their own."""
    linear = sum(shape.quantizable)
    if quant == "nf4":
        stored = sum(nf4_bytes(n) for n in shape.quantizable)
    else:
        stored = linear * dtype_bytes
    return stored + shape.other_params * dtype_bytes + shape.buffer_bytes


def adamw_bytes(numels: list[int], step_bytes: int) -> int:
    """torch AdamW: exp_avg and exp_avg_sq in float32 per weight, and a step count per tensor (a CPU tensor,
    so `step_bytes` is 0 when the weights are on a GPU)."""
    return sum(8 * n + step_bytes for n in numels)


def adamw8bit_bytes(numels: list[int]) -> int:
    """bitsandbytes (Paged)AdamW8bit: two uint8 states and two float32 absmax per block of 256 for a tensor of at
    least 4096 weights, two float32 states below that; plus its two 256-entry quantization maps, shared."""
    total = 0
    for n in numels:
        if n < EIGHT_BIT_MIN:
            total += 8 * n
        else:
            total += 2 * n + 2 * 4 * math.ceil(n / EIGHT_BIT_BLOCK)
    return total + (2 * 256 * 4 if any(n >= EIGHT_BIT_MIN for n in numels) else 0)


def kv_cache_bytes(shape: Shape, rows: int, length: int, dtype_bytes: int) -> int:
    """2 (keys and values) x layers x KV heads x head dim x cache length x rows x bytes; a sliding-window layer
    keeps at most its window."""
    window = getattr(shape.config, "sliding_window", None) or length
    types = getattr(shape.config, "layer_types", None) or ["full_attention"] * shape.layers
    positions = sum(min(window, length) if kind == "sliding_attention" else length for kind in types)
    return 2 * shape.kv_heads * shape.head_dim * positions * rows * dtype_bytes


# --- the estimates


def layer_activation_bytes(shape: Shape, r: int, dtype_bytes: int) -> int:
    """Bytes one decoder layer saves for backward, per token (LLaMA-style layer, attention by SDPA with a padding
    mask). Norms: the float32 input (4h each, two). Attention: q, and k, v repeated to every head (GQA under a mask),
    and its output (dtype), 4 bytes of log-sum-exp per head. MLP: gate, SiLU(gate) and up (dtype, 3 x intermediate).
    LoRA: every adapted projection saves its input as float32 (a copy of its own on a bf16 base; shared by the
    projections that read the same input on a float32 one) and the r-wide output of lora_A."""
    h, i, a, d = shape.hidden, shape.config.intermediate_size, shape.heads, shape.head_dim
    width = {"h": h, "h2": h, "attn": a * d, "mlp": i}
    adapted = [name for name in shape.lora if name in INPUT_OF]
    inputs = [INPUT_OF[name] for name in adapted]
    if dtype_bytes == LORA_BYTES:
        inputs = list(dict.fromkeys(inputs))
    lora = sum(LORA_BYTES * width[kind] for kind in inputs)
    lora += LORA_BYTES * r * len(adapted)
    return 2 * 4 * h + dtype_bytes * 4 * a * d + 4 * a + dtype_bytes * 3 * i + lora


def activation_bytes(shape: Shape, cfg: TrainConfig, rows: int, prompt: int, dtype_bytes: int) -> tuple[int, str]:
    """What one micro-batch's forward keeps for its backward: (bytes, the formula). With gradient checkpointing,
    every layer's input (the layers themselves are recomputed one at a time: `recompute_bytes`); without, all that
    every layer saves, a prompt answered by several rows of the micro-batch decoded once and its keys and values
    copied to each row. Both: the boolean attention mask, the final norm's float32 input and the states before each
    completion token."""
    n, L, layers, h = rows, cfg.max_new_tokens, shape.layers, shape.hidden
    tokens = n * (prompt + L)
    shared = n * (prompt + L) ** 2 + n * L * (4 * h + dtype_bytes * h)
    if cfg.gradient_checkpointing:
        return (layers * tokens * dtype_bytes * h + shared,
                f"layer inputs: {layers} x {n} x {prompt + L} tokens x {dtype_bytes * h:,} B")
    per_layer = layer_activation_bytes(shape, cfg.lora_r, dtype_bytes)
    G = cfg.samples_per_prompt
    prompts = min(n, math.ceil(n / G) + (1 if n % G else 0))
    decoded = prompts * prompt + n * L
    copied = n * prompt * layers * 2 * dtype_bytes * (shape.heads + shape.kv_heads) * shape.head_dim
    return (layers * decoded * per_layer + copied + shared,
            f"{layers} x {decoded:,} tokens x {per_layer:,} B + prompt KV")


def recompute_bytes(shape: Shape, cfg: TrainConfig, rows: int, prompt: int, dtype_bytes: int) -> tuple[int, str]:
    """With gradient checkpointing, the layer being recomputed in the backward: all it saves, the gradients of its
    input and output, and the float32 gradient of its widest adapted input, live while that LoRA's backward runs
    (measured against the rehearsal, examples/results/rehearsal.md)."""
    tokens = rows * (prompt + cfg.max_new_tokens)
    width = {"h": shape.hidden, "h2": shape.hidden, "attn": shape.heads * shape.head_dim,
             "mlp": shape.config.intermediate_size}
    widest = max((width[INPUT_OF[name]] for name in shape.lora if name in INPUT_OF), default=0)
    per_layer = (layer_activation_bytes(shape, cfg.lora_r, dtype_bytes) + 2 * dtype_bytes * shape.hidden
                 + LORA_BYTES * widest)
    return tokens * per_layer, f"one layer: {tokens:,} tokens x {per_layer:,} B"


def logits_bytes(shape: Shape, rows: int, length: int, device: str) -> tuple[int, int]:
    """The largest logits tensor of scoring and the update: one chunk of the micro-batch's completion positions
    (logprobs.LOGITS_BUDGET), float32.  -> (bytes, positions in the chunk)"""
    chunk = min(rows * length, max(1, LOGITS_BUDGET[device] // shape.vocab))
    return chunk * shape.vocab * 4, chunk


def decode_bytes(shape: Shape, rows: int, prefill_rows: int, length: int, prompt: int, next_token_bytes: int,
                 dtype_bytes: int, static_cache: bool) -> tuple[int, str]:
    """The sampler's workspace beside its cache at full length (kv_cache_bytes), the larger of two moments
    (measured against the rehearsal, examples/results/rehearsal.md):

    * the prefill: per prompt token the MLP's gate, up and their product (3 x intermediate, dtype) and, where LoRA
      adapts the MLP, two float32 tensors as wide (its output and the sum before the cast back); with a growing
      cache (`static_cache` False: generate) the cache then holds the prompt only, not its full length;
    * a decode step: the next-token tensors over the vocabulary (the logits, a float32 copy and the sampler's own
      `next_token_bytes` per entry: Sampler.next_token_bytes), and with a growing cache one layer's keys and values
      copied as they grow. Attention repeats no keys for a single query token (transformers packs the query into
      the key heads instead)."""
    b, i = dtype_bytes, shape.config.intermediate_size
    lora_mlp = any(name in shape.lora for name in ("gate_proj", "up_proj", "down_proj"))
    per_token = (3 * b + (2 * LORA_BYTES if lora_mlp else 0)) * i
    prefill = prefill_rows * prompt * per_token
    copy = 4 if b != 4 else 0  # .float() of float32 logits is the same tensor
    per_entry = b + copy + next_token_bytes
    decode = rows * shape.vocab * per_entry
    if static_cache:
        return max((prefill, f"prefill MLP: {prefill_rows} x {prompt} tokens x {per_token:,} B"),
                   (decode, f"next token: {rows} x {shape.vocab:,} x {per_entry} B"))
    full, prompt_only = kv_cache_bytes(shape, rows, length, b), kv_cache_bytes(shape, prefill_rows, prompt, b)
    layer = full // shape.layers
    return max((prefill + prompt_only - full, f"prefill MLP: {prefill_rows} x {prompt} tokens x {per_token:,} B, "
                                              "beside the prompt's cache only"),
               (decode + layer, f"next token: {rows} x {shape.vocab:,} x {per_entry} B, and a layer's cache grown"),
               (0, ""))
