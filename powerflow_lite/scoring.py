"""Per-token log-probs of completions, without a batch x length x vocab float32 tensor.

The decoder runs once over prompt + completion; the LM head and the
log-softmax then run over chunks of completion positions. With grad, each chunk
is checkpointed, so only its hidden states are kept for backward and its logits
are recomputed there: peak memory holds one chunk's logits, never all of them.

    logps, features = completion_logprobs(model, rollouts)            # [N, L], [N, H]
    with eval_mode(model, adapter=False), torch.no_grad():
        base_logps, _ = completion_logprobs(model, rollouts)          # the base, same weights
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .model import eval_mode
from .sampling import Rollouts

LOGITS_BUDGET = 2**26  # float32 logits per chunk (256 MiB): 441 positions for a 151,936-token vocabulary


def _hf_parts(model):
    """(decoder, lm_head, config) of a plain or PEFT-wrapped causal LM."""
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hf_model.get_decoder(), hf_model.get_output_embeddings(), hf_model.config


def completion_logprobs(model, rollouts: Rollouts, chunk_positions: int | None = None) -> tuple[Tensor, Tensor]:
    """log p(y_t | q, y_<t) for every completion token [N, L] (0 on padding) and prompt features [N, H].

    Grad flows into the log-probs when it is enabled; the prompt features (masked mean of
    the final hidden states over the prompt) are always detached.
    """
    decoder, lm_head, config = _hf_parts(model)
    prompt_len = rollouts.prompt_ids.shape[1]
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)  # [N, P+L]
    attention_mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1)  # [N, P+L]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state  # [N, P+L, H]

    prompt_mask = rollouts.prompt_mask.unsqueeze(-1).bool()  # [N, P, 1]
    prompt_states = hidden[:, :prompt_len].detach().float().masked_fill(~prompt_mask, 0.0)  # [N, P, H]
    features = prompt_states.sum(1) / prompt_mask.sum(1).clamp(min=1)  # [N, H]

    predicting = hidden[:, prompt_len - 1 : -1]  # [N, L, H]: the state before each completion token
    mask = rollouts.completion_mask.bool()  # [N, L]
    token_logps = _chunked_logprobs(predicting[mask], rollouts.completion_ids[mask], lm_head, config,
                                    chunk_positions)  # [T]
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    return logps.masked_scatter(mask, token_logps), features


def _chunked_logprobs(hidden: Tensor, targets: Tensor, lm_head, config, chunk_positions: int | None) -> Tensor:
    """hidden [T, H], targets [T] -> log-softmax(lm_head(hidden))[targets] [T], one chunk at a time."""
    chunk = chunk_positions or max(1, LOGITS_BUDGET // lm_head.weight.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start:start + chunk], targets[start:start + chunk], lm_head, config)
        if torch.is_grad_enabled() and hidden.requires_grad:
            parts.append(checkpoint(_logprob_chunk, *args, use_reentrant=False))
        else:
            parts.append(_logprob_chunk(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _logprob_chunk(hidden: Tensor, targets: Tensor, lm_head, config) -> Tensor:
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
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


@torch.no_grad()
def score(model, rollouts: Rollouts, batch_size: int, adapter: bool = True) -> tuple[Tensor, Tensor]:
    """No-grad log-probs [N, L] and prompt features [N, H] in batches, adapter on (pi) or off (p_base)."""
    logps, features = [], []
    with eval_mode(model, adapter=adapter):
        for start in range(0, len(rollouts), batch_size):
            batch_logps, batch_features = completion_logprobs(model, rollouts.select(slice(start, start + batch_size)))
            logps.append(batch_logps)
            features.append(batch_features)
    return torch.cat(logps), torch.cat(features)
