"""Exact evaluation on problems small enough to enumerate every completion (examples/exact_alpha.py).

    problem = build_problem(model, [prompt_ids], max_new_tokens=3, vocab_size=8, alpha=2.0, stop_ids=())
    report = evaluate(model, problem)   # {"kl_alpha": ..., "length_policy": ..., ...}

With V tokens and completions of at most L there are at most V^L completions
per prompt, so the policy, the base and every target are compared without
sampling error: at fixed length (`stop_ids=()`, training with --ignore-eos) all
V^L sequences; with a stop id the sequences that end at their first stop plus
the ones cut at L, whose probabilities also sum to one. `evaluate` reports,
averaged over prompts, KL(pi || p_alpha), KL(pi || the LA-TB target) (p_alpha
tilted by exp(-lambda |y|), `solve_length_penalty`: docs/design.md section 3),
expected lengths and the inversion rate among the most likely sequences;
`minimize_kl` gives the floor the same LoRA family reaches when the exact KL
itself is minimised.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .logprobs import completion_logprobs
from .model import eval_mode, trainable_parameters
from .samplers.rollouts import Rollouts


@dataclass(frozen=True)
class Problem:
    """Every completion of every prompt, with the base's log-probs and the targets."""

    prompts: list[list[int]]
    completion_ids: Tensor  # [M, L] right-padded with pad_id
    completion_mask: Tensor  # [M, L]
    alpha: float
    pad_id: int
    base_logp: Tensor  # [Q, M] float64, log p_base(y|q)
    target_alpha: Tensor  # [Q, M] float64, log p_alpha(y|q)
    target_latb: Tensor  # [Q, M] float64, log of the LA-TB fixed point
    length_penalty: Tensor  # [Q] float64, lambda_q

    @property
    def lengths(self) -> Tensor:  # [M] float64
        return self.completion_mask.sum(-1).double()

    @property
    def fixed_length(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())


def enumerate_completions(vocab_size: int, max_new_tokens: int, stop_ids=(), pad_id: int = 0):
    """All completions: every V^L sequence without stop ids, else those ending at the first stop or at L.

    -> completion_ids [M, L], completion_mask [M, L]
    """
    stop = sorted(set(stop_ids))
    others = [t for t in range(vocab_size) if t not in stop]
    rows = []
    if not stop:
        rows = [list(seq) for seq in itertools.product(range(vocab_size), repeat=max_new_tokens)]
    else:
        for k in range(max_new_tokens):
            rows += [list(prefix) + [s] for prefix in itertools.product(others, repeat=k) for s in stop]
        rows += [list(seq) for seq in itertools.product(others, repeat=max_new_tokens)]
    ids = torch.full((len(rows), max_new_tokens), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max_new_tokens), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def sequence_logprobs(model, prompt_ids: list[int], completion_ids: Tensor, completion_mask: Tensor,
                      batch_size: int = 4096) -> Tensor:
    """log pi(y|q) of every completion [M] (float32; grad flows when enabled), adapter as it is set."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, completion_ids.shape[0], batch_size):
        ids = completion_ids[start:start + batch_size].to(device)
        n = ids.shape[0]
        prompt = torch.tensor(prompt_ids, device=device).expand(n, -1)
        rollouts = Rollouts(prompt, torch.ones_like(prompt), ids, completion_mask[start:start + batch_size].to(device),
                            torch.zeros(n, dtype=torch.long, device=device),
                            torch.zeros(n, dtype=torch.bool, device=device))
        logps, _ = completion_logprobs(model, rollouts)  # [n, L]
        parts.append(logps.sum(-1))
    return torch.cat(parts)


def problem_logprobs(model, problem: Problem) -> Tensor:
    """log pi(y|q) for every prompt and completion [Q, M] (float32; grad flows when enabled), adapter as set."""
    return torch.stack([sequence_logprobs(model, p, problem.completion_ids, problem.completion_mask)
                        for p in problem.prompts])


def all_logprobs(model, problem: Problem, adapter: bool = True) -> Tensor:
    """log pi(y|q) for every prompt and completion [Q, M] float64, no grad."""
    with torch.no_grad(), eval_mode(model, adapter=adapter):
        return problem_logprobs(model, problem).double().cpu()


def power_target(base_logp: Tensor, alpha: float) -> Tensor:
    """log p_alpha = alpha log p_base - log sum exp(alpha log p_base), over the last dimension."""
    scaled = alpha * base_logp.double()
    return scaled - scaled.logsumexp(-1, keepdim=True)


def solve_length_penalty(base_logp: Tensor, lengths: Tensor, alpha: float, tol: float = 1e-12) -> float:
    """The lambda with sum_y p_base(y)^alpha exp(-lambda |y|) = 1 (see the module docstring).  [M], [M] -> float"""
    scaled, lengths = alpha * base_logp.double(), lengths.double()

    def f(lam: float) -> float:
        return float((scaled - lam * lengths).logsumexp(0))

    low, high = -1.0, 1.0
    while f(low) < 0:
        low *= 2
    while f(high) > 0:
        high *= 2
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if f(mid) > 0 else (low, mid)
        if high - low < tol:
            break
    return 0.5 * (low + high)


def latb_target(base_logp: Tensor, lengths: Tensor, alpha: float) -> tuple[Tensor, float]:
    """log of p_base^alpha exp(-lambda |y|) (sums to one) and lambda.  [M] -> [M], float"""
    lam = solve_length_penalty(base_logp, lengths, alpha)
    log_target = alpha * base_logp.double() - lam * lengths.double()
    return log_target - log_target.logsumexp(0), lam  # the renormalisation only removes the solver's rounding


def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last dimension, from log-probabilities."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))  # 0 log 0 = 0, not nan
    return terms.sum(-1)


def empirical(problem: Problem, completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """The share of sampled completions [n, L'] (padded with the problem's pad id) that are each of the
    problem's enumerated completions: a distribution [M], to compare a sampler with the targets."""
    def keys(ids: Tensor, mask: Tensor) -> list[tuple]:
        padded = torch.nn.functional.pad(ids * mask, (0, problem.completion_ids.shape[1] - ids.shape[1]))
        return list(zip(map(tuple, padded.cpu().tolist()), mask.sum(-1).tolist()))  # tokens and length

    index = {key: i for i, key in enumerate(keys(problem.completion_ids, problem.completion_mask))}
    counts = torch.zeros(len(index), dtype=torch.float64)
    for key in keys(completion_ids, completion_mask):
        counts[index[key]] += 1
    return counts / counts.sum()


def total_variation(p: Tensor, q: Tensor) -> float:
    """Half the L1 distance of two distributions over the same completions [M]."""
    return 0.5 * float((p - q).abs().sum())


def expected_length(log_p: Tensor, lengths: Tensor) -> Tensor:
    return (log_p.exp() * lengths).sum(-1)


def inversion_rate(log_pi: Tensor, log_target: Tensor, top: int = 32) -> float:
    """Among the `top` most likely sequences under the target, the fraction of pairs pi orders the other way."""
    order = log_target.argsort(descending=True)[:top]
    t, p = log_target[order], log_pi[order]
    above = t[:, None] > t[None, :]  # pairs (i, j) the target ranks i over j, ties left out
    inverted = above & (p[:, None] < p[None, :])
    return float(inverted.sum()) / max(1, int(above.sum()))


def build_problem(model, prompts: list[list[int]], max_new_tokens: int, vocab_size: int, alpha: float,
                  stop_ids=(), pad_id: int = 0) -> Problem:
    """Enumerate the completions and compute the base log-probs (adapter off) and both targets."""
    ids, mask = enumerate_completions(vocab_size, max_new_tokens, stop_ids, pad_id)
    partial = Problem(prompts, ids, mask, alpha, pad_id, *(torch.empty(0),) * 4)
    base = all_logprobs(model, partial, adapter=False)  # [Q, M]
    lengths = partial.lengths
    targets = [latb_target(row, lengths, alpha) for row in base]
    return Problem(prompts, ids, mask, alpha, pad_id, base, power_target(base, alpha),
                   torch.stack([t for t, _ in targets]), torch.tensor([lam for _, lam in targets], dtype=torch.float64))


def evaluate(model, problem: Problem, policy_logp: Tensor | None = None) -> dict[str, float]:
    """Exact KLs, expected lengths and the inversion rate of the policy (adapter on), averaged over prompts."""
    pi = all_logprobs(model, problem, adapter=True) if policy_logp is None else policy_logp  # [Q, M]
    lengths = problem.lengths
    return {
        "kl_alpha": kl(pi, problem.target_alpha).mean().item(),
        "kl_latb": kl(pi, problem.target_latb).mean().item(),
        "kl_base_alpha": kl(problem.base_logp, problem.target_alpha).mean().item(),
        "kl_base_latb": kl(problem.base_logp, problem.target_latb).mean().item(),
        "length_policy": expected_length(pi, lengths).mean().item(),
        "length_base": expected_length(problem.base_logp, lengths).mean().item(),
        "length_alpha": expected_length(problem.target_alpha, lengths).mean().item(),
        "length_latb": expected_length(problem.target_latb, lengths).mean().item(),
        "inversion_rate": sum(inversion_rate(p, t) for p, t in zip(pi, problem.target_alpha)) / len(pi),
        "mass_check": (pi.exp().sum(-1) - 1).abs().max().item(),  # ~0: the enumeration covers every completion
    }


def minimize_kl(model, problem: Problem, target: str = "alpha", steps: int = 400, lr: float = 1e-2,
                prompts_per_step: int = 0, eval_every: int = 20, seed: int = 0) -> list[float]:
    """Minimise the exact mean KL(pi || target) over the model's trainable (LoRA) weights with Adam.

    Returns the KL before every step (the first is the start); the smallest is the floor of the LoRA family.
    With `prompts_per_step` (for problems of many prompts) each step descends the exact KL of that many
    prompts drawn at random, an unbiased gradient of the mean, and the curve holds the mean over all
    prompts, computed every `eval_every` steps and after the last.
    """
    log_target = problem.target_alpha if target == "alpha" else problem.target_latb
    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params, lr=lr)
    device = next(model.parameters()).device
    log_target = log_target.to(device=device, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps):
        rows = (torch.randperm(len(problem.prompts), generator=generator)[:prompts_per_step].tolist()
                if prompts_per_step else range(len(problem.prompts)))
        if prompts_per_step and step % eval_every == 0:
            curve.append(kl(all_logprobs(model, problem).to(device), log_target).mean().item())
        optimizer.zero_grad(set_to_none=True)
        with eval_mode(model, adapter=True), torch.enable_grad():
            subset = dataclasses.replace(problem, prompts=[problem.prompts[i] for i in rows])
            loss = kl(problem_logprobs(model, subset), log_target[list(rows)]).mean()  # [Q', M] -> mean
        loss.backward()
        optimizer.step()
        if not prompts_per_step:
            curve.append(loss.item())
    if prompts_per_step:
        curve.append(kl(all_logprobs(model, problem).to(device), log_target).mean().item())
    return curve


def fraction_attained(start: float, end: float, floor: float) -> float:
    """(start - end) / (start - floor): 1 means the run reached what the LoRA family can reach."""
    gap = start - floor
    return (start - end) / gap if gap > 0 else math.nan
