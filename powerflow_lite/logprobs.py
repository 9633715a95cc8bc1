"""The log-prob kernel: per-token log-probs of completions, without a [N, L, vocab] float32 tensor.

    logps, features = completion_logprobs(model, rollouts)    # [N, L], [N, H] (with grad when it is enabled)
    base_logps, _ = score(model, rollouts, 64, adapter=False)  # the base: the same weights, adapter off
    at_temps = score_temperatures(model, rollouts, 64, (1.0, 0.5))  # [M, N, L] one decoder pass, M temperatures

The decoder runs once over prompt + completion; the LM head and log-softmax run
over chunks of positions, each checkpointed under grad, so peak memory holds
one chunk's logits. A prompt answered G times runs through the decoder once,
its KV cache copied to its G completions (not under grad with gradient
checkpointing, where Hugging Face drops a cache). Pure functions of a model and
`Rollouts`: the samplers, the step's scoring phase (scoring.py), the update,
the preview and the evaluations all read log-probs through them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .model import cache_keyword, eval_mode, hf_model, output_cache
from .samplers.rollouts import Rollouts

# float32 logits per chunk: 256 MiB on a GPU (few launches); 64 MiB on the CPU, where a chunk and its
# log-sum-exp both stay in the process's memory at its peak (docs/experiments/README.md, why the defaults)
LOGITS_BUDGET = {"cuda": 2**26, "cpu": 2**24}


def _hf_parts(model):
    """(decoder, lm_head, config) of a plain or PEFT-wrapped causal LM."""
    inner = hf_model(model)
    return inner.get_decoder(), inner.get_output_embeddings(), inner.config


def completion_logprobs(model, rollouts: Rollouts, chunk_positions: int | None = None,
                        temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """log p(y_t | q, y_<t) for every completion token [N, L] (0 on padding) and prompt features [N, H].

    Grad flows into the log-probs when it is enabled; the prompt features (masked mean of
    the final hidden states over the prompt) are always detached. With a `temperature`, the log-probs of
    the logits divided by it (what a sampler at that temperature drew from).
    """
    decoder, lm_head, config = _hf_parts(model)
    predicting, prompt_states, prompt_mask, inverse = _states(decoder, rollouts)
    # features: the masked mean of the final hidden states over each prompt, always detached
    prompt_states = prompt_states.detach().float().masked_fill(~prompt_mask, 0.0)  # [M, P, H]
    features = prompt_states.sum(1) / prompt_mask.sum(1).clamp(min=1)  # [M, H]
    if len(features) < len(rollouts):
        features = features[inverse]  # [N, H]

    mask = rollouts.completion_mask.bool()  # [N, L]
    token_logps = _chunked_logprobs(predicting[mask], rollouts.completion_ids[mask], lm_head, config,
                                    chunk_positions, temperature)  # [T]
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=predicting.device)
    return logps.masked_scatter(mask, token_logps), features


def _states(decoder, rollouts: Rollouts) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoder's states before each completion token [N, L, H], the prompt states and mask ([N or U, P, H],
    [N or U, P, 1]) and which of them each row has [N]: each distinct prompt decoded once when it can be."""
    key = torch.cat([rollouts.prompt_ids, rollouts.prompt_mask], dim=1)  # [N, 2P]: a prompt and its padding
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)  # [U, 2P], [N]
    if len(distinct) < len(rollouts) and _keeps_a_cache(decoder):
        return (*_decode_shared(decoder, rollouts, distinct, inverse), inverse)
    return (*_decode(decoder, rollouts), torch.arange(len(rollouts), device=rollouts.device))


def _decode(decoder, rollouts: Rollouts) -> tuple[Tensor, Tensor, Tensor]:
    """One pass over prompt + completion per row.  -> states before each completion token [N, L, H],
    prompt states [N, P, H], prompt mask [N, P, 1]"""
    prompt_len = rollouts.prompt_ids.shape[1]
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)  # [N, P+L]
    attention_mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1)  # [N, P+L]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state  # [N, P+L, H]
    return hidden[:, prompt_len - 1 : -1], hidden[:, :prompt_len], rollouts.prompt_mask.unsqueeze(-1).bool()


def _decode_shared(decoder, rollouts: Rollouts, distinct: Tensor, inverse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each distinct prompt once, its cache copied to its rows, then the completions.  -> as _decode, but the
    prompt states and mask are those of the U distinct prompts [U, P, H], [U, P, 1]"""
    prompt_len = rollouts.prompt_ids.shape[1]
    ids, mask = distinct[:, :prompt_len], distinct[:, prompt_len:]  # [U, P]
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True)
    cache = output_cache(out)
    cache.reorder_cache(inverse)  # U prompts -> N rows (index_select: gradients flow back to the U)
    attention_mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1)  # [N, P+L]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, prompt_len:]  # [N, L]
    completion = decoder(input_ids=rollouts.completion_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{cache_keyword(decoder): cache}).last_hidden_state  # [N, L, H]
    prompt_hidden = out.last_hidden_state  # [U, P, H]
    predicting = torch.cat([prompt_hidden[inverse, -1:], completion[:, :-1]], dim=1)  # [N, L, H]
    return predicting, prompt_hidden, mask.unsqueeze(-1).bool()


def _keeps_a_cache(decoder) -> bool:
    """False where Hugging Face would drop the cache: checkpointed layers in training mode, under grad."""
    if not (torch.is_grad_enabled() and decoder.training):
        return True
    return not any(getattr(module, "gradient_checkpointing", False) for module in decoder.modules())


def _chunked_logprobs(hidden: Tensor, targets: Tensor, lm_head, config, chunk_positions: int | None,
                      temperature: float = 1.0) -> Tensor:
    """hidden [T, H], targets [T] -> log-softmax(lm_head(hidden))[targets] [T], one chunk at a time."""
    budget = LOGITS_BUDGET.get(hidden.device.type, LOGITS_BUDGET["cuda"])
    chunk = chunk_positions or max(1, budget // lm_head.weight.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start:start + chunk], targets[start:start + chunk], lm_head, config, temperature)
        if torch.is_grad_enabled() and hidden.requires_grad:
            parts.append(checkpoint(_logprob_chunk, *args, use_reentrant=False))
        else:
            parts.append(_logprob_chunk(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _logprob_chunk(hidden: Tensor, targets: Tensor, lm_head, config, temperature: float = 1.0) -> Tensor:
    logits = _logits(hidden, lm_head, config)  # [C, V]
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _logits(hidden: Tensor, lm_head, config) -> Tensor:
    """The model's float32 logits [C, V] of states [C, H], with its own final scalings."""
    logits = lm_head(hidden).float()  # [C, V]
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:  # Gemma 2/3
        logits = torch.tanh(logits / softcap) * softcap
    scaling = getattr(config, "logits_scaling", None)
    if scaling:  # Granite
        logits = logits / scaling
    multiplier = getattr(config, "logit_scale", None)
    if multiplier:  # Cohere
        logits = logits * multiplier
    return logits


@torch.no_grad()
def score_temperatures(model, rollouts: Rollouts, batch_size: int, temperatures: tuple[float, ...],
                       adapter: bool = False) -> Tensor:
    """[M, N, L] log-probs of every completion token at each of M temperatures (0 on padding), from one decoder
    pass per batch: the logits of a chunk of positions are divided by each temperature in turn."""
    decoder, lm_head, config = _hf_parts(model)
    budget = LOGITS_BUDGET.get(rollouts.device.type, LOGITS_BUDGET["cuda"])
    parts = []
    with eval_mode(model, adapter=adapter):
        for start in range(0, len(rollouts), batch_size):
            batch = rollouts.select(slice(start, start + batch_size))
            mask = batch.completion_mask.bool()  # [n, L]
            predicting = _states(decoder, batch)[0]
            hidden, targets = predicting[mask], batch.completion_ids[mask]  # [T, H], [T]
            chunk = max(1, budget // lm_head.weight.shape[0])
            columns = []
            for first in range(0, len(hidden), chunk):
                logits = _logits(hidden[first:first + chunk], lm_head, config)  # [C, V]
                chosen = logits.gather(-1, targets[first:first + chunk, None]).squeeze(-1)  # [C]
                columns.append(torch.stack([chosen / t - (logits / t).logsumexp(-1) for t in temperatures]))
            token_logps = torch.cat(columns, dim=1) if columns else hidden.new_zeros(len(temperatures), 0)
            out = torch.zeros((len(temperatures), *mask.shape), dtype=torch.float32, device=mask.device)
            out[:, mask] = token_logps.float()
            parts.append(out)
    return torch.cat(parts, dim=1)


@torch.no_grad()
def score(model, rollouts: Rollouts, batch_size: int, adapter: bool = True,
          temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """No-grad log-probs [N, L] and prompt features [N, H] in batches, adapter on (pi) or off (p_base); with a
    `temperature`, those of the logits divided by it."""
    logps, features = [], []
    with eval_mode(model, adapter=adapter):
        for start in range(0, len(rollouts), batch_size):
            batch_logps, batch_features = completion_logprobs(model, rollouts.select(slice(start, start + batch_size)),
                                                              temperature=temperature)
            logps.append(batch_logps)
            features.append(batch_features)
    return torch.cat(logps), torch.cat(features)


def score_behaviour(model, rollouts: Rollouts, old: Tensor, size: int) -> Tensor:
    """[N, L] log-probs of the distribution each row was drawn from: from the sampler when it returns them, else
    `old` (temperature 1) with the rows sampled at another temperature scored at theirs."""
    if rollouts.behaviour_logps is not None:
        return rollouts.behaviour_logps
    temperatures = rollouts.temperatures()
    behaviour = old
    for temperature in temperatures.unique().tolist():
        if temperature != 1.0:
            rows = (temperatures == temperature).nonzero().squeeze(-1)
            behaviour = behaviour.index_copy(0, rows, score(model, rollouts.select(rows), size, adapter=True,
                                                            temperature=temperature)[0])
    return behaviour
