"""Are `powerflow preview`'s estimates right? Against p_alpha computed exactly, on problems small enough to enumerate.

    python examples/preview_exact.py            # about 6 minutes on 2 CPU cores
    python examples/preview_exact.py --report   # re-render the table from the JSON

A tiny random Qwen2 over 8 tokens (the digits 0-4, EOS and two other special tokens) answers 4 prompts with at
most 3 tokens, so every completion can be listed and p_alpha computed exactly: once stopping at EOS (lengths
differ; at alpha >= 2 p_alpha puts most of its weight on the empty answer) and once at fixed length (EOS ignored;
every completion is a number, so the modal-answer share is the figure to watch). The preview's own sampling and
weighting (`powerflow_lite.preview`: N completions per prompt from its default mixture, temperatures 1 and
1/alpha for each alpha)
estimates, for each alpha, the mean length, the share cut at the limit, the base log-prob per token and the
weight on the most common answer (completions read as numbers by math-verify, "012" and "12" one answer). The
table gives the absolute error of each against the exact value, the mean over SEEDS independent previews
(± the standard deviation over those seeds), against N.

Beside it, the same estimates from sequential Monte Carlo (`--sampler power-smc`'s particles with their final
weights), which serve one alpha each: N/5 particles for each of the 5 alphas, so about the preview's N
completions in all. Does a particle set's weighting beat the preview's reweighting of one shared sample?

Writes OUT (default examples/results): preview_exact.md and preview_exact.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_exact import machine  # noqa: E402 - where it ran

from powerflow_lite import exact
from powerflow_lite.config import matched_temperatures
from powerflow_lite.metrics import mean, std
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.preview import Samples, cluster_answers, draw_samples, estimates
from powerflow_lite.samplers.rollouts import PowerSettings, SamplingSettings, eos_token_ids
from powerflow_lite.samplers.smc import particles
from powerflow_lite.tasks.math import parse_answer
from powerflow_lite.tiny import write_tiny_model

ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0)
CANDIDATES = (4, 8, 16, 32, 64, 128, 256)
TEMPERATURES = matched_temperatures(ALPHAS)  # the preview's default: 2, 1, 1/2, 1/4, 1/8
SEEDS = range(10)
PROMPTS = ("012", "340", "1", "4321")
MAX_NEW_TOKENS, ALPHABET, LOGIT_SCALE = 3, "01234", 4.0
REGIMES = ("eos", "fixed")
FIGURES = ("length_mean", "truncated_frac", "base_logp_per_token", "modal_share")


def enumerable_problem(directory: Path, regime: str = "eos"):
    """The model, its tokenizer, the prompts' ids, the stop ids and every completion with the base's exact
    log-probs."""
    if not (directory / "config.json").is_file():
        write_tiny_model(directory, hidden_size=32, num_layers=2, chat_template=False, alphabet=ALPHABET,
                         logit_scale=LOGIT_SCALE)
    model, tokenizer = load_base_model(str(directory), "none", torch.device("cpu")), load_tokenizer(str(directory))
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    stop_ids = tuple(eos_token_ids(model, tokenizer)) if regime == "eos" else ()
    problem = exact.build_problem(model, prompt_ids, MAX_NEW_TOKENS, len(tokenizer), 1.0, stop_ids,
                                  tokenizer.pad_token_id)
    return model, tokenizer, prompt_ids, stop_ids, problem


def exact_figures(problem: exact.Problem, tokenizer, stop_ids: tuple[int, ...], alpha: float) -> dict:
    """The preview's figures under p_alpha itself, summed over every completion."""
    ids, mask = problem.completion_ids, problem.completion_mask
    lengths = mask.sum(-1).double()  # [M]
    last = ids.gather(1, (mask.sum(-1, keepdim=True) - 1).clamp(min=0)).squeeze(-1)
    truncated = (lengths == MAX_NEW_TOKENS) & ~torch.isin(last, torch.tensor(stop_ids))  # [M]
    texts = tokenizer.batch_decode(ids.masked_fill(mask == 0, tokenizer.pad_token_id), skip_special_tokens=True)
    clusters = torch.tensor(cluster_answers([parse_answer(t, ended=not bool(c)) for t, c in zip(texts, truncated)]))
    p_alpha = exact.power_target(problem.base_logp, alpha).exp()  # [Q, M]
    modal = [max(float(row[clusters == c].sum()) for c in set(clusters.tolist()) - {-1}) for row in p_alpha]
    return {"length_mean": float((p_alpha @ lengths).mean()),
            "truncated_frac": float((p_alpha @ truncated.double()).mean()),
            "base_logp_per_token": float((p_alpha * problem.base_logp).sum() / (p_alpha @ lengths).sum()),
            "modal_share": mean(modal)}


def preview_figures(model, tokenizer, prompt_ids, stop_ids, candidates: int, seed: int) -> dict:
    """alpha -> the preview's estimates from one set of N samples per prompt."""
    torch.manual_seed(seed)
    settings = SamplingSettings(MAX_NEW_TOKENS, ignore_eos=not stop_ids, stop_ids=stop_ids)
    samples = draw_samples(model, tokenizer, prompt_ids, candidates, TEMPERATURES, settings)
    clusters = torch.tensor([cluster_answers([parse_answer(t, ended=not bool(c)) for t, c in zip(texts, cut)])
                             for texts, cut in zip(samples.texts, samples.truncated)])
    tokens = float(samples.lengths.sum(-1).mean())  # drawn per prompt, shared by every alpha
    return {alpha: {**estimates(samples, alpha, clusters, generator=torch.Generator().manual_seed(seed)),
                    "tokens": tokens} for alpha in ALPHAS}


def smc_figures(model, tokenizer, prompt_ids, stop_ids, candidates: int, seed: int) -> dict:
    """alpha -> the same estimates from sequential Monte Carlo: N / len(ALPHAS) particles per prompt for that
    alpha, weighted by their final weights (log q is set so that p_base^alpha / q is that weight), and the
    tokens they drew per prompt."""
    torch.manual_seed(seed)
    n = max(1, candidates // len(ALPHAS))
    figures = {}
    for alpha in ALPHAS:
        settings = SamplingSettings(MAX_NEW_TOKENS, ignore_eos=not stop_ids, stop_ids=stop_ids,
                                    power=PowerSettings(alpha, particles=n))
        population, log_w = particles(model, tokenizer, prompt_ids, settings)  # [P n] rows, [P, n]
        mask = population.completion_mask
        log_p = (population.sampled_logps * mask).sum(-1).double().view(len(prompt_ids), n)  # [P, n]
        texts = tokenizer.batch_decode(population.completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id),
                                       skip_special_tokens=True)
        samples = Samples(log_p, alpha * log_p - log_w, mask.sum(-1).double().view(len(prompt_ids), n),
                          population.truncated.view(len(prompt_ids), n),
                          [texts[p * n:(p + 1) * n] for p in range(len(prompt_ids))])
        clusters = torch.tensor([cluster_answers([parse_answer(t, ended=not bool(c)) for t, c in zip(row, cut)])
                                 for row, cut in zip(samples.texts, samples.truncated)])
        figures[alpha] = {**estimates(samples, alpha, clusters, generator=torch.Generator().manual_seed(seed)),
                          "tokens": float(population.sampled_tokens.view(len(prompt_ids), n)[:, 0].double().mean())}
    return figures


def study() -> dict:
    result = {"seeds": len(SEEDS), "prompts": PROMPTS, "temperatures": TEMPERATURES, "regimes": {}}
    with tempfile.TemporaryDirectory() as root:
        for regime in REGIMES:
            model, tokenizer, prompt_ids, stop_ids, problem = enumerable_problem(Path(root) / "model", regime)
            truth = {alpha: exact_figures(problem, tokenizer, stop_ids, alpha) for alpha in ALPHAS}
            rows = []
            for n in CANDIDATES:
                started = time.perf_counter()
                runs = [preview_figures(model, tokenizer, prompt_ids, stop_ids, n, seed) for seed in SEEDS]
                smc = [smc_figures(model, tokenizer, prompt_ids, stop_ids, n, seed) for seed in SEEDS]
                for alpha in ALPHAS:
                    row = {"alpha": alpha, "candidates": n, "ess": mean([r[alpha]["ess"] for r in runs]),
                           "tokens": mean([r[alpha]["tokens"] for r in runs]),
                           "smc": {"particles": max(1, n // len(ALPHAS)),
                                   "tokens": mean([sum(r[a]["tokens"] for a in ALPHAS) for r in smc])}}
                    for key in FIGURES:
                        errors = [abs(r[alpha][key] - truth[alpha][key]) for r in runs]
                        row[key] = {"error": mean(errors), "error_sd": std(errors)}
                        errors = [abs(r[alpha][key] - truth[alpha][key]) for r in smc]
                        row["smc"][key] = {"error": mean(errors), "error_sd": std(errors)}
                    rows.append(row)
                print(f"{regime}, N = {n}: {time.perf_counter() - started:.1f} s", flush=True)
            result["regimes"][regime] = {"exact": {f"{a:g}": truth[a] for a in ALPHAS}, "rows": rows,
                                         "completions": len(problem.completion_ids)}
    return result


def report(result: dict) -> str:
    lines = ["# Are the preview's estimates right? Against exact p_alpha", "",
             f"A tiny random Qwen2 over 8 tokens answers {len(result['prompts'])} prompts with at most "
             f"{MAX_NEW_TOKENS} tokens, every completion enumerated. Each error cell is the absolute error of the "
             "preview's estimate against the exact value under p_alpha: the mean over "
             f"{result['seeds']} independent previews ± the standard deviation over them; ESS is the mean effective "
             "sample size per prompt. N completions per prompt from the mixture of temperatures "
             f"{', '.join(f'{t:g}' for t in result['temperatures'])} (the preview's default: 1 and 1/alpha). "
             "Command: `python examples/preview_exact.py`." + (
                 f" Measured on {result['machine']['cpu']} ({result['machine']['cores']} cores, torch "
                 f"{result['machine']['torch']})." if "machine" in result else ""), ""]
    counts = {"worse": 0, "tie": 0, "better": 0}  # sequential Monte Carlo's errors against the preview's
    for found in result["regimes"].values():
        for row in found["rows"]:
            for key in ("length_mean", "base_logp_per_token", "modal_share"):
                if "smc" in row:
                    ours, theirs = row[key]["error"], row["smc"][key]["error"]
                    counts["tie" if abs(ours - theirs) < 1e-9 else "worse" if theirs > ours else "better"] += 1
    if sum(counts.values()):
        lines += [f"Sequential Monte Carlo's error against the preview's, over the {sum(counts.values())} "
                  "comparisons below (regime, alpha, N; length, base log-prob per token, modal-answer share): worse "
                  f"in {counts['worse']}, tied in {counts['tie']}, better in {counts['better']}.", ""]
    for regime, found in result["regimes"].items():
        title = "stopping at EOS" if regime == "eos" else "fixed length (EOS ignored)"
        lines += [f"## {title} ({found['completions']} completions per prompt)", "", "Exact values:", "",
                  "| alpha | mean length | truncated | base log-prob / token | modal-answer share |",
                  "|---|---|---|---|---|"]
        for alpha, figures in found["exact"].items():
            lines.append(f"| {alpha} | {figures['length_mean']:.3f} | {figures['truncated_frac']:.3f} | "
                         f"{figures['base_logp_per_token']:.3f} | {figures['modal_share']:.3f} |")
        lines += ["", "Errors of the estimates:", "",
                  "| alpha | N | ESS | length | truncated | base log-prob / token | modal-answer share |",
                  "|---|---|---|---|---|---|---|"]
        for row in found["rows"]:
            cells = " | ".join(f"{row[key]['error']:.3f} ± {row[key]['error_sd']:.3f}" for key in FIGURES)
            lines.append(f"| {row['alpha']:g} | {row['candidates']} | {row['ess']:.1f} | {cells} |")
        lines += ["", "Errors of the same estimates from sequential Monte Carlo, N/5 particles per alpha (preview / "
                  "SMC; tokens: drawn per prompt for every alpha together):", "",
                  "| alpha | N | tokens per prompt | length | base log-prob / token | modal-answer share |",
                  "|---|---|---|---|---|---|"]
        for row in found["rows"]:
            if "smc" not in row:
                continue
            cells = " | ".join(f"{row[key]['error']:.3f} / {row['smc'][key]['error']:.3f}"
                               for key in ("length_mean", "base_logp_per_token", "modal_share"))
            lines.append(f"| {row['alpha']:g} | {row['candidates']} | {row['tokens']:.0f} / "
                         f"{row['smc']['tokens']:.0f} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--report", action="store_true", help="re-render from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads((out / "preview_exact.json").read_text())
    else:
        result = {**study(), "machine": machine()}
        (out / "preview_exact.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / "preview_exact.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
