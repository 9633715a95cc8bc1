"""`--sampler power-smc`: p_base^alpha at inference time by sequential Monte Carlo (Power-SMC, Azizi et al. 2026).

    settings = SamplingSettings(64, power=PowerSettings(alpha=4.0, particles=8))
    rollouts = sample_smc(model, tokenizer, prompts, 4, settings)   # 4 answers per prompt, 8 particles each
    rollouts.sampled_tokens, rollouts.ess, rollouts.resamples        # [N] per answer: cost, final ESS, resamplings

Each answer is one of N particles advanced together, one token at a time, from
the token-level power proposal q(v | y_<t) = p(v | y_<t)^alpha / Z(y_<t): the
base at temperature 1/alpha. Against the target p_base(y)^alpha the weight of a
step is p(v)^alpha / q(v) = Z(y_<t) = sum_v p(v | y_<t)^alpha, whatever token is
drawn; so it is applied before the draw, and when the effective sample size of
an answer's particles falls below --ess-threshold x N they are resampled
(systematic resampling, their cache rows reordered with them) and then draw.
A particle that has ended (EOS) keeps its weight and stays in the population (a
copy of it is ended too); its cache row leaves the decode batch. At
the end one particle is returned, chosen by its weight: as N grows its
distribution tends to p_base^alpha over whole sequences (a truncated answer
counts with its prefix's probability, as in the other power samplers).

Two options of the published method:
* --alpha-ramp-tokens R: the target of the first R tokens rises from p^1 to
  p^alpha (alpha_t linear in t), the proposal at temperature 1/alpha_t; a
  step's weight gains p(y_<t)^(alpha_t - alpha_(t-1)) for the prefix, and the
  final weights are those of p^alpha (a particle that ended before R catches
  up). It does not change the target.
* --proposal-temperature T: another proposal. Its draw is then weighed by
  p(v)^alpha_t / (q(v) Z), with Z still applied before the draw (an auxiliary
  particle filter): exact, but the weights vary more.

The loaded model is the base: the weights need p_base's probabilities, which an
adapter would change (an adapter is refused by the configs). Its cost per answer
is the tokens its particles drew, N times an answer's length, in one batched
decode; no prefix is recomputed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import eval_mode
from .power import by_answer
from .rollouts import Rollouts, SamplingSettings, group_ids_of, per_sample, stop_token_ids
from .static import draw, start_decode

COMPACT_FRACTION = 0.25  # drop the ended particles from the decode batch once they are this share of it


@torch.no_grad()
def sample_smc(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
               uniforms: Tensor | None = None) -> Rollouts:
    """G answers per prompt (rows grouped by prompt), each the survivor of its own N particles.  `uniforms` is not
    used (the draws and resamplings draw from torch's stream)."""
    if settings.top_p != 1.0 or settings.min_new_tokens:
        raise ValueError("sequential Monte Carlo needs the exact proposal: no top-p < 1, no min_new_tokens")
    return by_answer(_smc, model, tokenizer, prompts, samples_per_prompt, settings, settings.power.particles)


def ramp(t: int, alpha: float, tokens: int) -> float:
    """alpha_t, the exponent of the target of token t (from 0): rising linearly from 1 over the first `tokens`
    (alpha_(tokens-1) = alpha), then alpha (0 tokens: alpha from the first)."""
    return alpha if t + 1 >= tokens else 1.0 + (alpha - 1.0) * (t + 1) / tokens


def systematic(weights: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling of each row of `weights` [A, N] (normalised), with one uniform u [A] per row.
    -> [A, N] the ancestor of each new particle: particle i is copied about N w_i times, at least floor(N w_i),
    at most that plus one; a zero weight is never copied."""
    N = weights.shape[1]
    positions = (u[:, None] + torch.arange(N, dtype=weights.dtype, device=weights.device)) / N  # [A, N]
    cdf = weights.cumsum(-1)  # [A, N]
    cdf[:, -1] = 1.0  # rounding must not leave the last position without an ancestor
    return torch.searchsorted(cdf, positions, right=True).clamp_(max=N - 1)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """[A, N] log weights -> [A] (sum w)^2 / sum w^2, between 1 and N."""
    weights = torch.softmax(log_w, dim=-1)
    return 1.0 / weights.square().sum(-1)


def _smc(model, tokenizer, answers: list[list[int]], settings: SamplingSettings) -> Rollouts:
    """One answer for each prompt of `answers` (a prompt per answer): one of its N particles, chosen by weight."""
    population, log_w = particles(model, tokenizer, answers, settings)  # [A N] rows, [A, N]
    A, N = log_w.shape
    weights = torch.softmax(log_w, dim=-1)  # [A, N]
    chosen = torch.multinomial(weights, 1).squeeze(-1)  # [A]
    picked = population.select(torch.arange(A, device=chosen.device) * N + chosen)
    width = max(1, int(picked.lengths.max()))
    return Rollouts(picked.prompt_ids, picked.prompt_mask, picked.completion_ids[:, :width],
                    picked.completion_mask[:, :width], group_ids_of(A, 1, chosen.device), picked.truncated,
                    picked.sampled_logps[:, :width], picked.temperature,
                    sampled_tokens=picked.sampled_tokens, ess=effective_sample_size(log_w),
                    resamples=picked.resamples, ess_trace=picked.ess_trace)


@torch.no_grad()
def particles(model, tokenizer, answers: list[list[int]], settings: SamplingSettings) -> tuple[Rollouts, Tensor]:
    """N particles for each prompt of `answers` (a prompt per answer), advanced to the end.  -> every particle
    [A N] (rows grouped by answer; its answer's cost, resamplings and ESS trace on each) and their final log
    weights toward p_base^alpha [A, N] (float64): sum_i w_i f(y_i) / sum_i w_i estimates f's mean under it."""
    power, L = settings.power, settings.max_new_tokens
    N, alpha, A = power.particles, power.alpha, len(answers)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    decode, logits = start_decode(model, tokenizer, per_sample(answers, N), L)  # [A N, V], rows grouped by answer
    stops = torch.tensor(stop_token_ids(model, tokenizer, settings), dtype=torch.long, device=device)

    # Every answer's state, by particle (row r = answer r // N): what is returned.
    R = A * N
    tokens = torch.full((R, L), pad, dtype=torch.long, device=device)  # [R, L]
    logps = torch.zeros(R, L, dtype=torch.float32, device=device)  # [R, L] log p_base of each token drawn
    lengths = torch.full((R,), L, dtype=torch.long, device=device)  # [R]
    ended = torch.zeros(R, dtype=torch.bool, device=device)  # [R] by a stop id
    log_w = torch.zeros(A, N, dtype=torch.float64, device=device)  # [A, N] since the answer's last resampling
    log_p = torch.zeros(R, dtype=torch.float64, device=device)  # [R] log p_base(y_<t) of each particle
    cost = torch.zeros(A, dtype=torch.long, device=device)  # [A] tokens drawn by the answer's particles
    resamples = torch.zeros(A, dtype=torch.long, device=device)  # [A]
    trace = torch.zeros(A, L, dtype=torch.float32, device=device)  # [A, L] ESS at each step, before resampling
    # The decode batch: `cached` [n] the particles whose rows the cache holds, in cache order (every running
    # particle; an ended one until the next compaction), `logits` [n, V] their next token's.
    cached = torch.arange(R, device=device)  # [n]
    previous = ramp(0, alpha, power.ramp_tokens)  # the exponent of the last step's target

    with eval_mode(model):  # dropout off for every step
        for t in range(L):
            a_t = ramp(t, alpha, power.ramp_tokens)
            running = ~ended[cached]  # [n]
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # [n, V] p_base at temperature 1
            # the target moves from p^a_(t-1) to p^a_t: every prefix (an ended answer too) gains p(y_<t)^(a_t - a_(t-1))
            log_w += ((a_t - previous) * log_p).view(A, N)
            previous = a_t
            log_z = torch.logsumexp(a_t * log_probs.double(), dim=-1)  # [n] log sum_v p(v | y_<t)^a_t
            log_w.view(-1).index_add_(0, cached, torch.where(running, log_z, 0.0))

            # resample the answers still running whose particles have too few effective ones left
            open_ = ~ended.view(A, N).all(-1)  # [A]
            ess = effective_sample_size(log_w)  # [A]
            trace[:, t] = torch.where(open_, ess, 0.0).float()
            low = open_ & (ess < power.ess_threshold * N)  # [A]
            if bool(low.any()):
                ancestors = systematic(torch.softmax(log_w[low], -1), torch.rand(int(low.sum()), dtype=torch.float64,
                                                                                  device=device))  # [l, N]
                source = torch.arange(R, device=device).view(A, N)  # [A, N] the particle each one becomes
                source[low] = low.nonzero() * N + ancestors
                source = source.flatten()  # [R]
                tokens, logps, lengths, ended, log_p = (tokens[source], logps[source], lengths[source], ended[source],
                                                        log_p[source])
                log_w[low] = 0.0
                resamples[low] += 1
                # the cache keeps one row per running particle, its ancestor's (ended particles' rows leave it)
                slot = torch.full((R,), -1, dtype=torch.long, device=device)
                slot[cached] = torch.arange(len(cached), device=device)
                cached = (~ended).nonzero().squeeze(-1)  # [n']
                position = slot[source[cached]]  # [n'] a running particle's ancestor was running: it has a row
                decode.keep(position)
                logits, log_probs, log_z = logits[position], log_probs[position], log_z[position]
                running = torch.ones(len(cached), dtype=torch.bool, device=device)

            # draw from the proposal: p^a_t / Z, or the base at --proposal-temperature
            temperature = power.proposal_temperature or 1.0 / a_t
            log_q = torch.log_softmax(log_probs / temperature, dim=-1)  # [n, V]
            token = torch.where(running, draw(log_q.exp()), pad)  # [n]
            drawn_logp = torch.where(running, log_probs.gather(-1, token[:, None]).squeeze(-1), 0.0)  # [n]
            if power.proposal_temperature:  # not the power proposal: the draw's own weight, Z already applied
                residual = a_t * drawn_logp.double() - log_q.gather(-1, token[:, None]).squeeze(-1).double() - log_z
                log_w.view(-1).index_add_(0, cached, torch.where(running, residual, 0.0))
            tokens[cached, t] = token
            logps[cached, t] = drawn_logp
            log_p[cached] += drawn_logp.double()
            cost.index_add_(0, cached[running] // N, torch.ones_like(cached[running]))
            hit = running & torch.isin(token, stops)  # [n]
            ended[cached[hit]] = True
            lengths[cached[hit]] = t + 1
            running &= ~hit
            if not bool(running.any()) or t + 1 == L:
                break
            if int((~running).sum()) >= max(1, COMPACT_FRACTION * len(cached)):  # ended rows leave the batch
                keep = running.nonzero().squeeze(-1)  # [n'] positions in the batch still running
                decode.keep(keep)
                cached, token = cached[keep], token[keep]
            logits = decode.step(token, t)

    # the final weights are those of p_base^alpha (a particle that ended while the ramp rose catches up)
    log_w += ((alpha - previous) * log_p).view(A, N)
    width = max(1, int(lengths.max()))
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()  # [R, L']
    steps = int((trace > 0).sum(-1).max())  # the most steps an answer's particles took
    each = torch.arange(A, device=device).repeat_interleave(N)  # [R] the answer of each particle
    return Rollouts(decode.prompt_ids, decode.prompt_mask, tokens[:, :width].masked_fill(mask == 0, pad), mask,
                    each, ~ended, logps[:, :width] * mask,
                    torch.ones(R, device=device),  # not drawn at one temperature: resampled
                    sampled_tokens=cost[each], resamples=resamples[each], ess_trace=trace[each, :max(1, steps)]), log_w
