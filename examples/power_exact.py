"""p_base^alpha four ways, on problems small enough to enumerate: inference-time sampling against training.

The exact study's problems (examples/exact_alpha.py: a tiny random Qwen2 over 8 tokens, two prompts, answers
of at most 3 tokens) with p_alpha computed exactly. For each way of drawing answers, ANSWERS answers per prompt
are drawn and compared with p_alpha by total variation (TV), against the tokens sampled per answer:

* the base at temperature 1/alpha (the proposal of both power samplers; its distance is also exact);
* importance resampling (`--sampler power-resample`) with N = 1, 2, ..., 64 proposals per answer;
* block-wise Metropolis-Hastings (`--sampler power-mcmc`) with 0, 1, 2, 5 and 10 steps per block;
* sequential Monte Carlo (`--sampler power-smc`) with N = 1, 2, ..., 64 particles per answer, and at N = 8 its
  options: resampling at every token (--ess-threshold 1) or rarely (0.25), and a ramp of the exponent over the
  first 2 tokens (--alpha-ramp-tokens 2);
* a policy trained by `powerflow train` (latb, and tb-traj where latb's fixed point is not p_alpha), sampled
  at temperature 1: one answer costs one completion (its training cost is reported apart).

The noise floor is the TV of as many draws from p_alpha itself.

    python examples/power_exact.py                 # 3 problems, about 25 minutes on 2 CPU cores
    python examples/power_exact.py --quick         # one problem, fewer draws and training steps
    python examples/power_exact.py --report        # re-render the table and plot from the JSON

Writes OUT (default examples/results): power_exact.md, power_exact.json and power_exact.png; each problem's
figures are kept in OUT/power_exact.parts/ as it finishes, so an interrupted run resumes there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exact_alpha  # noqa: E402 - the exact study's problems and training

from powerflow_lite import exact  # noqa: E402
from powerflow_lite.logprobs import completion_logprobs  # noqa: E402
from powerflow_lite.model import load_base_model, load_tokenizer  # noqa: E402
from powerflow_lite.plot import pyplot  # noqa: E402
from powerflow_lite.samplers import SAMPLERS  # noqa: E402
from powerflow_lite.samplers.rollouts import PowerSettings, SamplingSettings  # noqa: E402

PROBLEMS = [  # (alpha, regime, base): the peakier base "x8" and the one with EOS, where lengths differ
    (4.0, "fixed", "x8"),
    (2.0, "fixed", "x8"),
    (4.0, "eos", "x4"),
]
CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
MCMC_STEPS = (0, 1, 2, 5, 10)
PARTICLES = (1, 2, 4, 8, 16, 32, 64)
SMC_OPTIONS = {  # at N = 8: the published method's options against the defaults (threshold 0.5, no ramp)
    "ESS threshold 1": dict(ess_threshold=1.0),
    "ESS threshold 0.25": dict(ess_threshold=0.25),
    "ramp over 2 tokens": dict(ramp_tokens=2),
}


def settings_for(regime: str, **changes) -> SamplingSettings:
    return SamplingSettings(exact_alpha.MAX_NEW_TOKENS, ignore_eos=regime == "fixed", **changes)


def draw(model, tokenizer, problem, sampler: str, settings: SamplingSettings, answers: int, seed: int):
    """TV to p_alpha of `answers` answers per prompt (mean over prompts) and the tokens sampled per answer."""
    distances, tokens = [], []
    for q, prompt in enumerate(problem.prompts):
        torch.manual_seed(seed + q)
        rollouts = SAMPLERS[sampler].sample(model, tokenizer, [prompt], answers, settings)
        shares = exact.empirical(problem, rollouts.completion_ids, rollouts.completion_mask)
        distances.append(exact.total_variation(shares, problem.target_alpha[q].exp()))
        cost = rollouts.sampled_tokens if rollouts.sampled_tokens is not None else rollouts.completion_mask.sum(-1)
        tokens.append(float(cost.double().mean()))
    return sum(distances) / len(distances), sum(tokens) / len(tokens)


def tempered_logp(model, problem, temperature: float) -> torch.Tensor:
    """log q(y) of every enumerated completion under the model at `temperature` [Q, M]: exact."""
    from powerflow_lite.samplers.rollouts import Rollouts

    rows = []
    with torch.no_grad():
        for prompt in problem.prompts:
            n = len(problem.completion_ids)
            ids = torch.tensor(prompt).expand(n, -1)
            rollouts = Rollouts(ids, torch.ones_like(ids), problem.completion_ids, problem.completion_mask,
                                torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool))
            rows.append(completion_logprobs(model, rollouts, temperature=temperature)[0].sum(-1).double())
    return torch.stack(rows)


def noise_floor(problem, answers: int, seed: int) -> float:
    distances = []
    for q in range(len(problem.prompts)):
        target = problem.target_alpha[q].exp()
        draws = torch.multinomial(target, answers, replacement=True, generator=torch.Generator().manual_seed(seed))
        distances.append(exact.total_variation(torch.bincount(draws, minlength=len(target)).double() / answers, target))
    return sum(distances) / len(distances)


def study_problem(key: tuple, root: Path, answers: int, steps: int, seed: int) -> dict:
    alpha, regime, base = key
    directory = str(root / f"model-{base}")
    model, tokenizer = load_base_model(directory, "none", torch.device("cpu")), load_tokenizer(directory)
    case = exact_alpha.Case("latb", alpha, regime, base)
    problem = exact_alpha.problem_for(model, tokenizer, [tokenizer(p).input_ids for p in exact_alpha.PROMPTS], case)
    rows = []

    def add(method: str, setting, tv: float, tokens: float, **extra):
        rows.append({"method": method, "setting": setting, "tv": tv, "tokens_per_answer": tokens, **extra})
        print(f"  {method} {setting}: TV {tv:.3f} at {tokens:.1f} tokens per answer", file=sys.stderr, flush=True)

    proposal = 1.0 / alpha
    exact_tv = sum(exact.total_variation(lq.exp(), lt.exp()) for lq, lt in
                   zip(tempered_logp(model, problem, proposal), problem.target_alpha)) / len(problem.prompts)
    add("temperature 1/alpha", proposal, *draw(model, tokenizer, problem, "static",
                                               settings_for(regime, temperature=proposal), answers, seed),
        exact_tv=exact_tv)
    for n in CANDIDATES:
        add("importance resampling", n, *draw(model, tokenizer, problem, "power-resample",
                                              settings_for(regime, power=PowerSettings(alpha, candidates=n)),
                                              answers, seed))
    for k in MCMC_STEPS:
        add("Metropolis-Hastings", k, *draw(model, tokenizer, problem, "power-mcmc",
                                            settings_for(regime, power=PowerSettings(alpha, mcmc_steps=k)),
                                            answers, seed))
    for n in PARTICLES:
        add("sequential Monte Carlo", n, *draw(model, tokenizer, problem, "power-smc",
                                               settings_for(regime, power=PowerSettings(alpha, particles=n)),
                                               answers, seed))
    for name, options in SMC_OPTIONS.items():
        add(f"sequential Monte Carlo, {name}", 8, *draw(model, tokenizer, problem, "power-smc",
                                                         settings_for(regime, power=PowerSettings(
                                                             alpha, particles=8, **options)), answers, seed))
    for objective in ("latb",) + (("tb-traj",) if regime == "eos" else ()):
        started = time.perf_counter()
        trained, training_tokens = train_policy(exact_alpha.Case(objective, alpha, regime, base), root, steps, seed)
        exact_tv = sum(exact.total_variation(lp.exp(), lt.exp()) for lp, lt in
                       zip(exact.all_logprobs(trained, problem), problem.target_alpha)) / len(problem.prompts)
        add(f"trained ({objective})", steps, *draw(trained, tokenizer, problem, "static", settings_for(regime),
                                                   answers, seed),
            exact_tv=exact_tv, training_tokens_per_prompt=training_tokens / len(problem.prompts),
            training_seconds=time.perf_counter() - started)
    return {"alpha": alpha, "regime": regime, "base": base, "answers": answers, "rows": rows,
            "noise_floor": noise_floor(problem, answers, seed), "completions": len(problem.completion_ids)}


def train_policy(case, root: Path, steps: int, seed: int) -> tuple:
    """The exact study's training run for `case`: the trained model (base + LoRA) and the tokens it sampled."""
    from powerflow_lite.config import TrainConfig
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    cfg = TrainConfig(model=str(root / f"model-{case.base}"), prompts=str(root / "prompts-two.jsonl"),
                      output=str(root / f"run-{case.objective}-{case.alpha}-{case.regime}-{case.base}"),
                      overwrite=True, alpha=case.alpha, objective=case.objective, max_steps=steps,
                      ignore_eos=case.regime == "fixed", seed=seed, **exact_alpha.TRAINING)
    run = setup(cfg)
    tokens = sum(step.metrics["sampled_tokens"] for step in train(run))
    return run.model, tokens


def machine() -> dict:
    """Where it ran: the same seed gives other draws on another CPU."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


def report(results: list[dict], measured_on: dict | None = None) -> str:
    lines = ["# p_base^alpha four ways, exactly", "",
             "Total variation (TV) between the answers drawn and p_alpha, computed exactly on the exact study's "
             "problems (examples/exact_alpha.py), against the tokens sampled per answer at inference. "
             f"Each TV is over {results[0]['answers']} answers per prompt, averaged over the 2 prompts; the noise "
             "floor is the TV of as many draws from p_alpha itself. 'exact' is the TV of the distribution itself, "
             "where it can be computed. Sequential Monte Carlo resamples at ESS < 0.5 N without a ramp unless the "
             "row says otherwise; its tokens are those its particles drew (an ended particle draws no more). "
             "Command: `python examples/power_exact.py`." + (
                 f" Measured on {measured_on['cpu']} ({measured_on['cores']} cores, torch {measured_on['torch']})."
                 if measured_on else ""), ""]
    for result in results:
        lines += [f"## alpha {result['alpha']}, {result['regime']} length, base {result['base']} "
                  f"({result['completions']} completions per prompt; noise floor {result['noise_floor']:.3f})", "",
                  "| method | setting | tokens per answer | TV to p_alpha | exact TV |", "|---|---|---|---|---|"]
        for row in result["rows"]:
            exact_tv = f"{row['exact_tv']:.3f}" if "exact_tv" in row else ""
            setting = {"temperature 1/alpha": f"T = {row['setting']:.3g}", "importance resampling":
                       f"N = {row['setting']}", "Metropolis-Hastings": f"{row['setting']} steps per block"
                       }.get(row["method"], f"N = {row['setting']}" if row["method"].startswith("sequential")
                             else f"{row['setting']} training steps")
            lines.append(f"| {row['method']} | {setting} | {row['tokens_per_answer']:.1f} | {row['tv']:.3f} | "
                         f"{exact_tv} |")
        trained = [r for r in result["rows"] if r["method"].startswith("trained")]
        lines += [""] + [f"{r['method']}: {r['training_tokens_per_prompt']:.0f} tokens sampled per prompt in "
                         f"training, {r['training_seconds']:.0f} s." for r in trained] + [""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        for method, marker in (("importance resampling", "o-"), ("Metropolis-Hastings", "s-"),
                               ("sequential Monte Carlo", "^-")):
            rows = [r for r in result["rows"] if r["method"] == method]
            ax.plot([r["tokens_per_answer"] for r in rows], [r["tv"] for r in rows], marker, label=method)
        for row in result["rows"]:
            if row["method"] == "temperature 1/alpha" or row["method"].startswith("trained"):
                ax.plot(row["tokens_per_answer"], row["tv"], "*", markersize=12, label=row["method"])
        ax.axhline(result["noise_floor"], color="grey", linestyle=":", label="noise floor")
        ax.set_xscale("log")
        ax.set_xlabel("tokens sampled per answer")
        ax.set_ylabel("TV to p_alpha")
        ax.set_title(f"alpha {result['alpha']}, {result['regime']}, base {result['base']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--answers", type=int, default=4000, help="answers drawn per prompt and method")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the trained policies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one problem, 500 answers, 100 training steps")
    parser.add_argument("--report", action="store_true", help="re-render the table and plot from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        results = json.loads((out / "power_exact.json").read_text())["results"]
    else:
        problems, answers, steps = (PROBLEMS[:1], 500, 100) if args.quick else (PROBLEMS, args.answers, args.steps)
        parts, root = out / "power_exact.parts", out / "power_exact.parts" / "work"
        root.mkdir(parents=True, exist_ok=True)
        exact_alpha.model_dirs(root)
        (root / "prompts-two.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in exact_alpha.PROMPTS))
        results = []
        for key in problems:
            part = parts / f"{key[0]}-{key[1]}-{key[2]}-{answers}-{steps}.json"
            if not part.is_file():
                print(f"alpha {key[0]}, {key[1]}, base {key[2]}", file=sys.stderr, flush=True)
                part.write_text(json.dumps(study_problem(key, root, answers, steps, args.seed), indent=1))
            results.append(json.loads(part.read_text()))
        (out / "power_exact.json").write_text(json.dumps({"results": results, "seed": args.seed,
                                                          "machine": machine()}, indent=1) + "\n")
    text = report(results, json.loads((out / "power_exact.json").read_text()).get("machine"))
    (out / "power_exact.md").write_text(text)
    plot(results, out / "power_exact.png")
    print(text)


if __name__ == "__main__":
    main()
