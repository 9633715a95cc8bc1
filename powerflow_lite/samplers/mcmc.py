"""`--sampler power-mcmc`: p_base^alpha at inference time by block-wise Metropolis-Hastings (Karan & Du, 2025).

    settings = SamplingSettings(64, power=PowerSettings(alpha=4.0, mcmc_steps=10))
    rollouts = sample_mcmc(model, tokenizer, prompts, 4, settings)   # 4 chains, so 4 answers, per prompt

An answer grows in blocks (--block-tokens, default max_new_tokens / 16). Each
block is first drawn from the proposal q (the loaded model at the proposal
temperature, default 1/alpha); then, --mcmc-steps times, a position t of the
answer so far is chosen uniformly, everything after it is drawn again from q
(up to the end of the block, or EOS), and the new answer y' replaces y with
probability min(1, p_base(y')^alpha q(y_t: | y_<t) |y| / (p_base(y)^alpha q(y'_t: | y_<t) |y'|)),
log-probs summed over the two suffixes, p_base scored with the adapter off; |y| / |y'| is the chance of
choosing t from y' over from y (they differ when EOS ends one of them early). An
answer that has ended (EOS) after a block is returned. Its cost, the tokens
drawn for it, is reported per answer.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .power import base_logps, proposal
from .rollouts import Rollouts, SamplingSettings, group_ids_of, left_pad, per_sample, stop_token_ids
from .static import sample_static


class _Chain:
    """One answer being built: its tokens and, per token, log q (the proposal), log p_base and log pi."""

    def __init__(self, prompt: list[int]):
        self.prompt, self.tokens, self.log_q, self.log_base, self.log_pi = prompt, [], [], [], []
        self.cost = 0  # tokens drawn for it so far

    def replace_from(self, start: int, tokens: list[int], log_q: list[float], log_base: list[float],
                     log_pi: list[float]) -> None:
        self.tokens, self.log_q = self.tokens[:start] + tokens, self.log_q[:start] + log_q
        self.log_base, self.log_pi = self.log_base[:start] + log_base, self.log_pi[:start] + log_pi


@torch.no_grad()
def sample_mcmc(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
                uniforms: Tensor | None = None) -> Rollouts:
    """G answers per prompt (rows grouped by prompt), one Metropolis-Hastings chain each.  `uniforms` is not used
    (the proposals, restart positions and acceptances draw from torch's stream)."""
    if settings.top_p != 1.0 or settings.min_new_tokens:
        raise ValueError("Metropolis-Hastings needs the exact proposal: no top-p < 1, no min_new_tokens")
    power, L = settings.power, settings.max_new_tokens
    block = power.block_tokens or max(1, L // 16)
    stops = set(stop_token_ids(model, tokenizer, settings))
    chains = [_Chain(prompt) for prompt in per_sample(prompts, samples_per_prompt)]
    ended = [False] * len(chains)
    for end in range(block, L + block, block):
        end = min(end, L)
        playing = [c for c, chain in enumerate(chains) if not ended[c]]
        if not playing:
            break
        _extend(model, tokenizer, settings, [chains[c] for c in playing], end)
        for _ in range(power.mcmc_steps):
            starts = [int(torch.randint(len(chains[c].tokens), ())) for c in playing]  # uniform restart positions
            _propose(model, tokenizer, settings, [chains[c] for c in playing], starts, end)
        for c in playing:
            ended[c] = bool(chains[c].tokens) and chains[c].tokens[-1] in stops
    return _rollouts(chains, ended, tokenizer.pad_token_id, next(model.parameters()).device, len(prompts),
                     samples_per_prompt)


def _draw(model, tokenizer, settings: SamplingSettings, prefixes: list[list[int]], limits: list[int]):
    """A proposal for each prefix, at most its limit of tokens: per row its tokens and their log q, log p_base,
    log pi (lists)."""
    drawn = sample_static(model, tokenizer, prefixes, 1, replace(proposal(settings), max_new_tokens=max(limits)),
                          limits=torch.tensor(limits))
    base = base_logps(model, drawn)
    out = []
    for row in range(len(prefixes)):
        n = int(drawn.completion_mask[row].sum())
        out.append((drawn.completion_ids[row, :n].tolist(), drawn.behaviour_logps[row, :n].tolist(),
                    base[row, :n].tolist(), drawn.sampled_logps[row, :n].tolist()))
    return out


def _extend(model, tokenizer, settings: SamplingSettings, chains: list[_Chain], end: int) -> None:
    """Each chain grown from its current length up to `end` tokens by the proposal."""
    drawn = _draw(model, tokenizer, settings, [chain.prompt + chain.tokens for chain in chains],
                  [end - len(chain.tokens) for chain in chains])
    for chain, (tokens, log_q, log_base, log_pi) in zip(chains, drawn):
        chain.cost += len(tokens)
        chain.replace_from(len(chain.tokens), tokens, log_q, log_base, log_pi)


def _propose(model, tokenizer, settings: SamplingSettings, chains: list[_Chain], starts: list[int], end: int) -> None:
    """One Metropolis-Hastings step of every chain: redraw its suffix after `start`, up to the block's `end` (or
    EOS), and keep the new answer with the acceptance probability. Every answer of the block is an answer that
    ended before `end` or a prefix of `end` tokens, and so is every proposal: the chain stays in that space."""
    alpha = settings.power.alpha
    drawn = _draw(model, tokenizer, settings, [chain.prompt + chain.tokens[:start] for chain, start in
                                               zip(chains, starts)],
                  [end - start for start in starts])
    for chain, start, (tokens, log_q, log_base, log_pi) in zip(chains, starts, drawn):
        chain.cost += len(tokens)
        log_ratio = log_acceptance(alpha, log_base, chain.log_base[start:], log_q, chain.log_q[start:],
                                   new_length=start + len(tokens), old_length=len(chain.tokens))
        if math.log(float(torch.rand(()))) < log_ratio:  # log(u) < log r: accepted with probability min(1, r)
            chain.replace_from(start, tokens, log_q, log_base, log_pi)


def log_acceptance(alpha: float, new_base: list[float], old_base: list[float], new_q: list[float],
                   old_q: list[float], new_length: int, old_length: int) -> float:
    """log r = alpha (log p_base(new suffix) - log p_base(old suffix)) + log q(old suffix) - log q(new suffix)
    + log |old answer| - log |new answer|: each suffix's log-probs summed given the shared prefix, and the
    restart position drawn uniformly from the answer it restarts (the acceptance probability is min(1, r))."""
    return (alpha * (sum(new_base) - sum(old_base)) + sum(old_q) - sum(new_q)
            + math.log(old_length) - math.log(new_length))


def _rollouts(chains: list[_Chain], ended: list[bool], pad_id: int, device, prompts: int, G: int) -> Rollouts:
    prompt_ids, prompt_mask = left_pad([chain.prompt for chain in chains], pad_id, device)
    width = max(1, max(len(chain.tokens) for chain in chains))
    ids = torch.full((len(chains), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chains), width), dtype=torch.long)
    log_pi = torch.zeros((len(chains), width))
    for row, chain in enumerate(chains):
        n = len(chain.tokens)
        ids[row, :n] = torch.tensor(chain.tokens, dtype=torch.long)
        mask[row, :n] = 1
        log_pi[row, :n] = torch.tensor(chain.log_pi)
    return Rollouts(prompt_ids, prompt_mask, ids.to(device), mask.to(device), group_ids_of(prompts, G, device),
                    torch.tensor([not done for done in ended], device=device), log_pi.to(device),
                    torch.ones(len(chains), device=device),
                    sampled_tokens=torch.tensor([chain.cost for chain in chains], device=device))
