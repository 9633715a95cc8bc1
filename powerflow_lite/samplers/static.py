"""`--sampler static`: our own decode loop over a static KV cache, returning log pi_old with the samples.

    rollouts = sample_static(model, tokenizer, [ids_q1, ids_q2], samples_per_prompt=4,
                             settings=SamplingSettings(max_new_tokens=128))
    rollouts.sampled_logps  # [N, L] log pi(y_t | q, y_<t) at temperature 1: no second pass for log pi_old

Why it is cheaper than `generate` for the trainer's batches (every prompt
answered G times, completions of very different lengths):

1. each distinct prompt is prefilled once and its cache rows copied to its G
   completions, and only the last position's logits are computed;
2. with `compact` (the CPU default) rows that have stopped leave the batch once
   they are a quarter of it, so a batch does not pay for its longest row;
3. a token is drawn by inverting the cumulative distribution (float64) with one
   uniform number per row: exact ancestral samples, and a row's draws can be
   fixed in advance (`uniforms`), whatever batch or rank samples it.

No nucleus sampling (top-p < 1 is refused). Measured against `generate`: `powerflow bench`, and
examples/cpu_paths.py on the CPU (docs/experiments/README.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import cache_keyword, eval_mode, hf_model
from .rollouts import Rollouts, SamplingSettings, group_ids_of, left_pad, per_sample, stop_token_ids

# drop stopped rows once they are this share of the batch: each drop copies the cache
# (docs/experiments/README.md, why the defaults)
COMPACT_FRACTION = 0.25


def draw(probs: Tensor, u: Tensor | None = None) -> Tensor:
    """One token per row from the categorical distributions `probs` [n, V] (rows may be unnormalised).  -> [n]

    The token is the first whose cumulative probability exceeds u * total, for one uniform u per row (`u` [n]
    float64, drawn here when not given);
    a zero-probability token has no width and is never drawn. float64 keeps the tail of a large
    vocabulary representable next to a cumulative sum near 1.
    """
    cdf = probs.double().cumsum(-1)  # [n, V]
    total = cdf[:, -1:]  # [n, 1]
    if not bool(torch.isfinite(total).all() and (total > 0).all() and (probs >= 0).all()):
        # torch.multinomial's words, which the trainer recognises
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if u is None:
        u = torch.rand(probs.shape[0], dtype=torch.float64, device=probs.device)
    u = u[:, None] * total  # [n, 1]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_static(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
                  greedy: bool = False, compact: bool | None = None, uniforms: Tensor | None = None,
                  limits: Tensor | None = None) -> Rollouts:
    """G completions per prompt (rows grouped by prompt), with the log-prob of every sampled token at temperature 1.

    `compact` (default: on the CPU only) drops stopped rows from the decode batch, see the module docstring.
    `uniforms` [N, max_new_tokens] float64: the uniform number that draws each row's t-th token (default: drawn
    from torch's stream now), so that a row's completion does not depend on the rows sampled beside it
    (seeds.py: R ranks sample what one process does). `limits` [N]: a length limit of each row's own, at most
    max_new_tokens (a row that reaches it is cut there, as at max_new_tokens).
    """
    if settings.top_p != 1.0:
        raise ValueError("sample_static does not implement top-p < 1")
    device = next(model.parameters()).device
    compact = device.type == "cpu" if compact is None else compact
    L = settings.max_new_tokens
    decode, logits = start_decode(model, tokenizer, per_sample(prompts, samples_per_prompt), L)
    prompt_ids, prompt_mask = decode.prompt_ids, decode.prompt_mask  # [N, P]
    N = prompt_ids.shape[0]
    if uniforms is None:
        uniforms = torch.rand(N, L, dtype=torch.float64, device=device)
    limits = None if limits is None else limits.to(device)
    stop_ids = stop_token_ids(model, tokenizer, settings)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)

    tokens = torch.full((N, L), tokenizer.pad_token_id, dtype=torch.long, device=device)  # [N, L]
    logps = torch.zeros(N, L, dtype=torch.float32, device=device)  # [N, L]
    # at another temperature, the log-probs of the distribution the tokens are drawn from (the behaviour policy)
    behaviour = None if settings.temperature == 1.0 else torch.zeros(N, L, dtype=torch.float32, device=device)
    stopped = torch.zeros(N, dtype=torch.bool, device=device)  # [N] ended by a stop id (not by the length limit)
    lengths = torch.full((N,), L, dtype=torch.long, device=device)  # [N]
    # The decode batch: `batch` [n] holds the output rows still in it, in cache order.
    batch = torch.arange(N, device=device)  # [n]
    done = torch.zeros(N, dtype=torch.bool, device=device)  # [n] stopped, still in the batch (decoding pads)

    with eval_mode(model):
        for t in range(L):
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # [n, V] the policy at temperature 1
            tempered = log_probs if behaviour is None else torch.log_softmax(log_probs / settings.temperature, -1)
            scores = tempered
            if t < settings.min_new_tokens and len(stop_ids):
                scores = scores.index_fill(-1, stops, float("-inf"))
            token = scores.argmax(-1) if greedy else draw(torch.softmax(scores, dim=-1), uniforms[batch, t])  # [n]
            token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
            tokens[batch, t] = token
            logps[batch, t] = torch.where(done, 0.0, log_probs.gather(-1, token[:, None]).squeeze(-1))
            if behaviour is not None:
                behaviour[batch, t] = torch.where(done, 0.0, tempered.gather(-1, token[:, None]).squeeze(-1))
            if len(stop_ids):
                hit = ~done & torch.isin(token, stops)  # [n]
                lengths[batch[hit]] = t + 1
                stopped[batch[hit]] = True
                done |= hit
            if limits is not None:  # rows at a limit of their own: cut there, as at the length limit
                cut = ~done & (limits[batch] <= t + 1)
                lengths[batch[cut]] = t + 1
                done |= cut
            if bool(done.all()) or t + 1 == L:
                break
            if compact and int(done.sum()) >= max(1, COMPACT_FRACTION * len(batch)):
                keep = (~done).nonzero().squeeze(-1)  # [n'] positions in the batch still decoding
                decode.keep(keep)
                batch, token, done = batch[keep], token[keep], done[keep]
            logits = decode.step(token, t)

    width = int(lengths.max())
    completion_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()  # [N, L']
    completion_ids = tokens[:, :width].masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    group_ids = group_ids_of(len(prompts), samples_per_prompt, device)
    sampled_logps = logps[:, :width] * completion_mask
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, group_ids, ~stopped,
                    sampled_logps=sampled_logps, temperature=torch.full((N,), settings.temperature, device=device),
                    behaviour_logps=sampled_logps if behaviour is None else behaviour[:, :width] * completion_mask)


class Decode:
    """A batch of rows decoded together on a static KV cache allocated whole (prompt + max_new_tokens): the
    sampler's state that is not its own choice of tokens. Each distinct prompt is prefilled once, its cache rows
    copied to the rows that answer it; `keep` reorders (or drops, or repeats) the rows in the cache."""

    def __init__(self, model, tokenizer, rows: list[list[int]], max_new_tokens: int):
        from transformers import StaticCache

        device = next(model.parameters()).device
        distinct = list(dict.fromkeys(tuple(ids) for ids in rows))  # each prompt once, in order of first use
        position = {ids: i for i, ids in enumerate(distinct)}
        self.expand = torch.tensor([position[tuple(ids)] for ids in rows], device=device)  # [N] row -> prompt
        self.unique_ids, self.unique_mask = left_pad([list(ids) for ids in distinct], tokenizer.pad_token_id,
                                                     device)  # [U, P]
        self.prompt_ids, self.prompt_mask = self.unique_ids[self.expand], self.unique_mask[self.expand]  # [N, P]
        N, self.P = self.prompt_ids.shape
        self.model, self.device, self.cache_arg = model, device, cache_keyword(model)
        self.cache = StaticCache(config=hf_model(model).config, max_cache_len=self.P + max_new_tokens)
        self.attention = torch.cat([self.prompt_mask, torch.ones(N, max_new_tokens, dtype=self.prompt_mask.dtype,
                                                                 device=device)], dim=1)  # [n, P+L]
        self.next_position = self.prompt_mask.sum(-1, keepdim=True)  # [n, 1]: left padding does not shift positions

    def prefill(self) -> Tensor:
        """The prompts through the model once.  -> [N, V] the logits of each row's first token."""
        with eval_mode(self.model):
            logits = self.model(input_ids=self.unique_ids, attention_mask=self.unique_mask,
                                position_ids=(self.unique_mask.cumsum(-1) - 1).clamp_min(0),
                                **{self.cache_arg: self.cache}, cache_position=torch.arange(self.P, device=self.device),
                                use_cache=True, logits_to_keep=1).logits[:, -1]  # [U, V]
        self.cache.reorder_cache(self.expand)  # the distinct prompts' cache rows -> one per row
        return logits[self.expand]

    def step(self, token: Tensor, t: int) -> Tensor:
        """token [n], the t-th of each row in the batch, through the model (the caller holds it in eval mode, as
        `with eval_mode(model)`: not switched per token).  -> [n, V] the next token's logits."""
        P = self.P
        return self.model(input_ids=token[:, None], attention_mask=self.attention[:, :P + t + 1],
                          position_ids=self.next_position + t, **{self.cache_arg: self.cache},
                          cache_position=torch.tensor([P + t], device=self.device), use_cache=True).logits[:, -1]

    def keep(self, index: Tensor) -> None:
        """The batch becomes rows `index` [n'] of the current one (in the cache too)."""
        self.cache.reorder_cache(index)
        self.attention, self.next_position = self.attention[index], self.next_position[index]


def start_decode(model, tokenizer, rows: list[list[int]], max_new_tokens: int) -> tuple[Decode, Tensor]:
    """A `Decode` of `rows` (token id lists) and the logits of their first tokens [N, V]."""
    decode = Decode(model, tokenizer, rows, max_new_tokens)
    return decode, decode.prefill()
