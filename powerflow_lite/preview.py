"""`powerflow preview`: what p_base^alpha looks like for each alpha, from the base's own samples, before training.

    powerflow preview --model M --prompts examples/prompts/math.jsonl --alphas 0.5,1,2,4,8
    table = preview(PreviewConfig(model=M, prompts=P))      # table["alphas"]["4"]["ess"], ["modal_share"], ...
    choice = choose_alpha(table)                             # what --alpha auto trains at, and why

p_alpha depends on the base model alone, so it can be looked at before any
training. For each prompt the base draws N completions from a mixture of
proposal temperatures (N/M at each of --temperatures), and every completion is
scored at every one of them, so its exact density under the mixture is known:
q(y) = sum_m (n_m / N) p_base(y)_{T_m}. One set of samples then serves every
alpha at once: self-normalised importance weights w_i ∝ p_base(y_i)^alpha / q(y_i)
(per prompt) turn the samples into estimates of what p_alpha's samples would be
like (Del Moral, Doucet and Jasra 2012 choose a tempered target's next exponent
by the same weights). The effective sample size (sum w)^2 / sum w^2 says how many
of the N samples an alpha's estimates rest on: near 1, the row is one sample's.

Estimated per alpha (means over prompts): length, the share cut at
--max-new-tokens, base log-prob per token, and, where completions state a final
answer, the weight on the most common answer (label-free: how much p_alpha agrees
with itself); with reference answers, p_alpha's avg@1 and maj@k; for creative
prompts, semantic diversity (the eval's embedder). Truncated completions count
with the probability of their prefix, as in the power samplers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .data import chat_stop_ids, encode_prompts, load_prompts, prompt_input
from .errors import PowerflowError
from .faults import BatchSize, halve_on_oom
from .logprobs import score_temperatures
from .model import context_length, load_base_model, load_tokenizer, resolve_device, resolve_quant
from .plot import plot_preview
from .samplers.resample import importance_weights
from .samplers.rollouts import SamplingSettings
from .samplers.static import sample_static
from .tasks import TASKS
from .tasks.math import parse_answer, same_answer
from .tasks.models import default_embedder_path, load_embedder

ROWS_PER_CALL = 256  # completions sampled together
SCORE_ROWS = 64  # completions scored together
MAJORITY_DRAWS = 1000  # k-sample draws per prompt that estimate maj@k
AUTO_ALPHAS = (1.0, 1.5, 2.0, 4.0, 8.0)  # the grid --alpha auto previews (1: the base, for reference)
AUTO_PROMPTS, AUTO_CANDIDATES = 24, 32  # and on what: small, since it runs before every --alpha auto run
# --alpha auto stops where a doubling of alpha adds less modal-answer share than this (a judgment, and what it
# chose: docs/design.md section 14, docs/experiments/README.md#which-alpha)
AUTO_GAIN = 0.05
MIN_ESS = 2.0  # an alpha whose mean effective sample size is below this rests on one sample per prompt


@dataclass(frozen=True)
class Samples:
    """N completions per prompt from the proposal mixture, with what every estimate needs.  [P, N] each."""

    log_p: Tensor  # log p_base(y), the whole completion (its prefix when truncated)
    log_q: Tensor  # log q(y), the mixture that drew it
    lengths: Tensor  # tokens
    truncated: Tensor  # bool: cut at max_new_tokens
    texts: list[list[str]]  # [P][N]


def mixture_log_q(log_q_each: Tensor, counts: list[int]) -> Tensor:
    """log-density of each completion under the proposal mixture: [M, ...] log q_m(y) of the M temperatures and
    how many of the N were drawn at each -> [...] log sum_m (n_m / N) q_m(y)."""
    shares = torch.tensor(counts, dtype=torch.float64) / sum(counts)  # [M]
    log_shares = shares.log().view(-1, *([1] * (log_q_each.dim() - 1)))
    return torch.logsumexp(log_q_each.double() + log_shares, dim=0)


def split_counts(candidates: int, temperatures: tuple[float, ...]) -> list[int]:
    """N completions shared out over the temperatures as evenly as possible, the first ones taking the rest."""
    base, rest = divmod(candidates, len(temperatures))
    return [base + (i < rest) for i in range(len(temperatures))]


@torch.no_grad()
def draw_samples(model, tokenizer, prompt_ids: list[list[int]], candidates: int, temperatures: tuple[float, ...],
                 settings: SamplingSettings, score_rows: int = SCORE_ROWS, notes: list[str] | None = None,
                 rows_per_call: int = ROWS_PER_CALL) -> Samples:
    """N completions per prompt, n_m at each temperature T_m, each scored at every temperature (the base model:
    a plain model, or a PEFT one with its adapter off), up to `rows_per_call` (whole prompts' n_m) sampled together;
    out of memory, a call samples and scores half as many, said in `notes`."""
    counts = split_counts(candidates, temperatures)
    scored_at = list(dict.fromkeys((*temperatures, 1.0)))  # the mixture's temperatures, and 1: p_base itself
    rows: list[list[tuple]] = [[] for _ in prompt_ids]  # per prompt: (log q_m [M], length, truncated, text)
    limit = min(rows_per_call, ROWS_PER_CALL)  # completions per call, halved out of memory
    notes = notes if notes is not None else []

    def call(first: int, count: int, temperature: float, completions: int) -> int:
        """Sample and score `completions` // count prompts from `first` on.  -> the prompts done"""
        chosen = prompt_ids[first:first + completions // count]
        rollouts = sample_static(model, tokenizer, chosen, count,
                                 SamplingSettings(settings.max_new_tokens, temperature=temperature,
                                                  ignore_eos=settings.ignore_eos, stop_ids=settings.stop_ids))
        mask = rollouts.completion_mask
        log_q_each = (score_temperatures(model, rollouts, min(score_rows, len(rollouts)), tuple(scored_at)).sum(-1)
                      .T.double().cpu())  # [R, M (+1)]
        texts = tokenizer.batch_decode(rollouts.completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id),
                                       skip_special_tokens=True)
        for row in range(len(rollouts)):
            rows[first + row // count].append((log_q_each[row], int(mask[row].sum()),
                                               bool(rollouts.truncated[row]), texts[row]))
        return len(chosen)

    for count, temperature in zip(counts, temperatures):
        start = max(1, limit // max(count, 1)) * count  # whole prompts' completions
        first, size = 0, BatchSize("", start)
        while count and first < len(prompt_ids):
            first += halve_on_oom(partial(call, first, count, temperature), size, (len(prompt_ids) - first) * count,
                                  count, "in the preview", "lower --candidates or --max-new-tokens", notes)
        if size.value < start:  # halved: the next temperature starts there
            limit = size.value
    log_q_each = torch.stack([torch.stack([r[0] for r in prompt]) for prompt in rows])  # [P, N, M (+1)]
    log_p = log_q_each[..., scored_at.index(1.0)]  # [P, N]
    return Samples(log_p, mixture_log_q(log_q_each[..., :len(temperatures)].movedim(-1, 0), counts),
                   torch.tensor([[r[1] for r in prompt] for prompt in rows], dtype=torch.float64),
                   torch.tensor([[r[2] for r in prompt] for prompt in rows]),
                   [[r[3] for r in prompt] for prompt in rows])


# --- what p_alpha's samples would be like, from the weighted samples


def cluster_answers(parsed: list[list]) -> list[int]:
    """Which distinct final answer each completion states (-1: none), equivalent forms as one (math-verify):
    first by the text of the answer, then the distinct texts compared symbolically."""
    representatives: list[list] = []  # one parse per cluster
    by_text: dict[str, int] = {}
    ids = []
    for answer in parsed:
        if not answer:
            ids.append(-1)
            continue
        text = str(answer[-1])
        if text not in by_text:
            by_text[text] = next((c for c, rep in enumerate(representatives) if same_answer(rep, answer)),
                                 len(representatives))
            if by_text[text] == len(representatives):
                representatives.append(answer)
        ids.append(by_text[text])
    return ids


def read_answers(samples: Samples, references: list[str] | None = None) -> tuple[Tensor, Tensor | None]:
    """[P, N] the answer cluster of each completion (-1: states none) and, with reference answers, [P, N] whether
    cluster c (index c) is right (False beyond the prompt's clusters)."""
    clusters, correct = [], []
    for p, texts in enumerate(samples.texts):
        parsed = [parse_answer(text, ended=not bool(cut)) for text, cut in zip(texts, samples.truncated[p])]
        ids = cluster_answers(parsed)
        clusters.append(ids)
        if references is not None:
            gold = parse_answer(references[p], reference=True)
            right = [False] * len(texts)
            for c in set(ids) - {-1}:
                right[c] = same_answer(gold, parsed[ids.index(c)])
            correct.append(right)
    return torch.tensor(clusters), (torch.tensor(correct) if references is not None else None)


def cluster_mass(weights: Tensor, clusters: Tensor) -> Tensor:
    """[P, N] weights, [P, N] cluster ids (-1: none) -> [P, N] the weight on each cluster c (column c)."""
    one_hot = torch.nn.functional.one_hot(clusters + 1, clusters.shape[1] + 1)[..., 1:].to(weights.dtype)  # [P,N,C]
    return torch.einsum("pn,pnc->pc", weights, one_hot)


def majority_accuracy(weights: Tensor, clusters: Tensor, correct: Tensor, k: int, draws: int = MAJORITY_DRAWS,
                      generator: torch.Generator | None = None) -> Tensor:
    """[P] the chance that the most common answer of k samples of the weighted completions is right (maj@k):
    `draws` sets of k drawn with replacement by weight; completions without an answer do not vote, ties go to
    the answer drawn first, a set where none votes counts as wrong (as tasks.math.majority_correct)."""
    P, N = clusters.shape
    result = torch.empty(P, dtype=torch.float64)
    position = torch.arange(k).view(1, k, 1)
    for p in range(P):
        picked = clusters[p][torch.multinomial(weights[p].float(), draws * k, replacement=True,
                                               generator=generator)].view(draws, k)  # [D, k]
        hot = torch.nn.functional.one_hot(picked + 1, N + 1)[..., 1:].bool()  # [D, k, C]
        counts = hot.sum(1)  # [D, C]
        first = torch.where(hot, position, k).amin(1)  # [D, C] where each answer was first drawn
        winner = (counts * (k + 1) - first).argmax(-1)  # [D]: most votes, then drawn first
        result[p] = (correct[p][winner] & (counts.amax(-1) > 0)).double().mean()
    return result


def weighted_diversity(weights: Tensor, embeddings: Tensor) -> float:
    """Semantic diversity (100 x (1 - cosine)) of two independent draws from the weighted completions, pairs of
    distinct completions only: sum_{i != j} w_i w_j d_ij / (1 - sum w_i^2).  [N], [N, D]"""
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    distance = 100.0 * (1.0 - unit @ unit.T)  # [N, N]
    distance.fill_diagonal_(0.0)
    weights = weights.double()
    distinct = 1.0 - weights.square().sum()
    return float(weights @ distance @ weights / distinct) if distinct > 1e-12 else math.nan


def estimates(samples: Samples, alpha: float, clusters: Tensor | None = None, correct: Tensor | None = None,
              embeddings: list[Tensor] | None = None, k: int = 8, examples: int = 2,
              generator: torch.Generator | None = None) -> dict:
    """What p_alpha's samples would be like, over the prompts: effective sample size (mean, and the lowest),
    length, truncated share, base log-prob per token; with `clusters` the weight on answers and on the modal
    one; with `correct` avg@1 and maj@k; with `embeddings` semantic diversity; and `examples` completions of
    the first prompt drawn by weight."""
    weights, ess = importance_weights(samples.log_p, samples.log_q, alpha)  # [P, N], [P]
    figures = {
        "ess": float(ess.mean()), "ess_min": float(ess.min()), "ess_per_prompt": ess.tolist(),
        "length_mean": float((weights * samples.lengths).sum(-1).mean()),
        "truncated_frac": float((weights * samples.truncated.double()).sum(-1).mean()),
        # pooled as powerflow eval pools it: expected log-prob over expected tokens
        "base_logp_per_token": float((weights * samples.log_p).sum() / (weights * samples.lengths).sum()),
    }
    if clusters is not None:
        mass = cluster_mass(weights, clusters)  # [P, C]
        figures["answered_share"] = float(mass.sum(-1).mean())
        figures["modal_share"] = float(mass.amax(-1).mean())
        figures["modal_share_per_prompt"] = mass.amax(-1).tolist()
    if correct is not None:
        right = (mass * correct.double()).sum(-1)  # [P]
        figures["avg_at_1"], figures["avg_at_1_per_prompt"] = float(right.mean()), right.tolist()
        figures["maj_at_k"] = float(majority_accuracy(weights, clusters, correct, k, generator=generator).mean())
    if embeddings is not None:
        diversity = [weighted_diversity(w, e) for w, e in zip(weights, embeddings)]
        finite = [d for d in diversity if math.isfinite(d)]
        figures["diversity"] = sum(finite) / len(finite) if finite else math.nan
    chosen = torch.multinomial(weights[0].float(), min(examples, int((weights[0] > 0).sum())), replacement=False,
                               generator=generator)
    figures["examples"] = [samples.texts[0][i] for i in chosen.tolist()]
    return figures


def choose_alpha(table: dict, per_doubling: float = AUTO_GAIN, min_ess: float = MIN_ESS) -> dict:
    """--alpha auto's label-free rule: among the sharpening alphas (> 1) whose estimates rest on at least
    `min_ess` samples per prompt, the smallest beyond which the modal-answer share stops rising: where going on
    to the next of them gains less than `per_doubling` of modal share per doubling of alpha (the largest, if it
    rises all the way). Sharpening helps while it makes p_alpha agree with itself; past that point it mostly
    narrows and shortens. -> {"alpha", "rule", "why"}; raises PowerflowError when the rule cannot apply."""
    rows = {float(a): row for a, row in table["alphas"].items()}
    if not any("modal_share" in row for row in rows.values()) or max(
            row.get("answered_share", 0.0) for row in rows.values()) == 0.0:
        raise PowerflowError("--alpha auto chooses alpha by how often p_alpha's samples agree on a final answer, "
                             "and no sample of these prompts states one: give --alpha (e.g. 0.5 for creative "
                             "writing)")
    trusted = sorted(a for a, row in rows.items() if a > 1 and row["ess"] >= min_ess)
    if not trusted:
        raise PowerflowError(f"--alpha auto: no sharpening alpha's estimate rests on {min_ess:g} or more samples per "
                             "prompt; raise the preview's candidates or give --alpha")
    modal = {a: rows[a]["modal_share"] for a in trusted}
    gains = {a: (modal[b] - modal[a]) / math.log2(b / a) for a, b in zip(trusted, trusted[1:])}
    alpha = next((a for a, gain in gains.items() if gain < per_doubling), trusted[-1])
    after = (f"{100 * gains[alpha]:+.1f} points per doubling after it" if alpha in gains
             else "still rising at the largest trusted alpha")
    return {"alpha": alpha,
            "rule": f"smallest alpha > 1 (with ESS >= {min_ess:g}) after which the modal-answer share gains less "
                    f"than {100 * per_doubling:g} points per doubling of alpha",
            "why": f"modal-answer share {modal[alpha]:.1%} at alpha {alpha:g}, {after}"}


# --- the command


def preview(cfg, notes: list[str] | None = None) -> dict:
    """The whole `powerflow preview`: load, draw, read, estimate.  -> the table (JSON-ready); a batch halved after
    running out of memory is said in `notes`."""
    device = resolve_device(cfg.device)
    rows = load_prompts(cfg.prompts, cfg.prompt_field, cfg.split, cfg.answer_field)
    rows_used = rows[:cfg.limit] if cfg.limit else rows
    lines = rows.lines_of(rows_used)
    references = [row.get("answer") for row in rows_used]
    references = references if all(references) else None  # answers for every row, or none are used
    chosen = TASKS.get(cfg.task)  # None: auto
    if chosen is not None and not chosen.states_answers:
        references = None
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    prompt_ids = encode_prompts(tokenizer, [prompt_input(row) for row in rows_used], cfg.chat_template,
                                cfg.system_prompt, cfg.max_new_tokens, context_length(cfg.model, cfg.trust_remote_code),
                                cfg.prompts, lines)
    needs_embedder = chosen is not None and chosen.uses_embedder
    if needs_embedder:  # a missing embedder fails before the model loads
        cfg.embedder or default_embedder_path()
    quant, _ = resolve_quant(cfg.quant, device)
    model = load_base_model(cfg.model, quant, device, cfg.trust_remote_code)
    settings = SamplingSettings(cfg.max_new_tokens, stop_ids=tuple(chat_stop_ids(tokenizer, cfg.chat_template)))
    return preview_model(model, tokenizer, prompt_ids, cfg.alpha_grid, cfg.candidates, cfg.temperature_grid,
                         settings, seed=cfg.seed, references=references, task=cfg.task, k=cfg.k,
                         embedder=lambda: _embedder(cfg.embedder, device, required=needs_embedder),
                         meta={"model": cfg.model, "prompts_file": cfg.prompts, "quant": quant},
                         score_rows=cfg.batch_size, notes=notes)


def preview_model(model, tokenizer, prompt_ids: list[list[int]], alphas: tuple[float, ...], candidates: int,
                  temperatures: tuple[float, ...], settings: SamplingSettings, seed: int = 0,
                  references: list[str] | None = None, task: str = "auto", k: int = 8, embedder=None,
                  meta: dict | None = None, score_rows: int = SCORE_ROWS, notes: list[str] | None = None,
                  rows_per_call: int = ROWS_PER_CALL) -> dict:
    """The preview of a loaded base model on tokenized prompts (training's --alpha auto calls this too). Its
    random draws are its own: the caller's random state is left as it was."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples = draw_samples(model, tokenizer, prompt_ids, candidates, temperatures, settings, score_rows, notes,
                               rows_per_call)
    drawn = time.perf_counter() - started
    clusters = correct = None
    if task == "auto" or TASKS[task].states_answers:
        clusters, correct = read_answers(samples, references)
        if task == "auto":  # the first task that states answers when these samples do (most, or with references)
            stated = references is not None or float((clusters >= 0).double().mean()) >= 0.5
            task = next(name for name, each in TASKS.items() if each.states_answers == stated)
    measured = TASKS[task]
    embed = embedder() if embedder is not None and measured.uses_embedder else None  # None: not installed
    embeddings = [embed(texts) for texts in samples.texts] if embed is not None else None
    generator = torch.Generator().manual_seed(seed)
    table = {alpha: estimates(samples, alpha, clusters if measured.states_answers else None, correct, embeddings, k,
                              generator=generator) for alpha in alphas}
    return {**(meta or {}), "task": task, "prompts": len(prompt_ids), "candidates": candidates,
            "temperatures": list(temperatures), "k": k, "max_new_tokens": settings.max_new_tokens,
            "with_answers": correct is not None, "seconds_sampling": drawn,
            "seconds": time.perf_counter() - started, "alphas": {f"{a:g}": row for a, row in table.items()}}


def _embedder(path: str, device, required: bool):
    """The eval's sentence embedder; when the task was only guessed, None if it is not installed."""
    try:
        return load_embedder(path, device)
    except PowerflowError:
        if required:
            raise
        return None


def write_preview(table: dict, json_path: str = "", plot_path: str = "") -> list[str]:
    """The table as JSON and its plot, where asked (both files new: checked by PreviewConfig)."""
    written = []
    if json_path:
        with open(json_path, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(table, indent=1) + "\n")
        written.append(json_path)
    if plot_path:
        plot_preview(table, plot_path)
        written.append(plot_path)
    return written
