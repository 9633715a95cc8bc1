"""A decode loop of our own: a static KV cache, sampling on the device, and the log-probs of what it sampled.

    rollouts = sample_static(model, tokenizer, [ids_q1, ids_q2], samples_per_prompt=4,
                             settings=SamplingSettings(max_new_tokens=128))
    rollouts.sampled_logps  # [N, L] log pi(y_t | q, y_<t) at temperature 1: no second pass for log pi_old

This is the eager (CPU-testable) half of the fast sampler of issue 5: the cache
is allocated once for prompt + completion, each step is one forward of one
token per row, the next token is drawn on the device (multinomial over the
tempered distribution), rows that emitted a stop id keep decoding pad tokens
(masked out), and the loop ends when every row has stopped. What it leaves for
the GPU half: capturing the decode step in a CUDA graph (the cache, the
position and the RNG state are already fixed-shape tensors for that), and
measuring it against `generate` with `powerflow bench`.

Not supported: top-p < 1 (sample_static raises, and `--sampler static` with
`--top-p` below 1 is refused at the command line; use `--sampler hf`).
"""

from __future__ import annotations

import torch

from .model import eval_mode
from .sampling import Rollouts, SamplingSettings, eos_token_ids, left_pad


def supports(settings: SamplingSettings) -> bool:
    return settings.top_p == 1.0


@torch.no_grad()
def sample_static(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
                  greedy: bool = False) -> Rollouts:
    """G completions per prompt (rows grouped by prompt), with the log-prob of every sampled token at temperature 1."""
    from transformers import StaticCache

    if not supports(settings):
        raise ValueError("sample_static does not implement top-p < 1")
    device = next(model.parameters()).device
    rows = [ids for ids in prompts for _ in range(samples_per_prompt)]
    prompt_ids, prompt_mask = left_pad(rows, tokenizer.pad_token_id, device)  # [N, P]
    N, P = prompt_ids.shape
    L = settings.max_new_tokens
    stop_ids = [] if settings.ignore_eos else sorted(set(eos_token_ids(model, tokenizer)) | set(settings.stop_ids))
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config

    cache = StaticCache(config=config, max_cache_len=P + L)
    attention = torch.cat([prompt_mask, torch.ones(N, L, dtype=prompt_mask.dtype, device=device)], dim=1)  # [N, P+L]
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)  # [N, P]: left padding does not shift positions
    next_position = prompt_mask.sum(-1, keepdim=True)  # [N, 1]
    tokens = torch.full((N, L), tokenizer.pad_token_id, dtype=torch.long, device=device)  # [N, L]
    logps = torch.zeros(N, L, dtype=torch.float32, device=device)  # [N, L]
    done = torch.zeros(N, dtype=torch.bool, device=device)  # [N]
    stopped = torch.zeros(N, dtype=torch.bool, device=device)  # [N] ended by a stop id (not by the length limit)
    lengths = torch.full((N,), L, dtype=torch.long, device=device)  # [N]

    with eval_mode(model):
        logits = model(input_ids=prompt_ids, attention_mask=attention[:, :P], position_ids=positions,
                       past_key_values=cache, cache_position=torch.arange(P, device=device),
                       use_cache=True).logits[:, -1]  # [N, V]
        for t in range(L):
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # [N, V] the policy at temperature 1
            scores = log_probs / settings.temperature if settings.temperature != 1.0 else log_probs
            if t < settings.min_new_tokens and len(stop_ids):
                scores = scores.index_fill(-1, stops, float("-inf"))
            if greedy:
                token = scores.argmax(-1)  # [N]
            else:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(-1)  # [N]
            token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
            tokens[:, t] = token
            logps[:, t] = torch.where(done, 0.0, log_probs.gather(-1, token[:, None]).squeeze(-1))
            if len(stop_ids):
                hit = ~done & torch.isin(token, stops)  # [N]
                lengths = torch.where(hit, t + 1, lengths)
                stopped |= hit
                done |= hit
            if bool(done.all()) or t + 1 == L:
                break
            logits = model(input_ids=token[:, None], attention_mask=attention[:, :P + t + 1],
                           position_ids=next_position + t, past_key_values=cache,
                           cache_position=torch.tensor([P + t], device=device), use_cache=True).logits[:, -1]

    width = int(lengths.max())
    completion_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()  # [N, L']
    completion_ids = tokens[:, :width].masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    group_ids = torch.arange(len(prompts), device=device).repeat_interleave(samples_per_prompt)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, group_ids, ~stopped,
                    sampled_logps=logps[:, :width] * completion_mask)
