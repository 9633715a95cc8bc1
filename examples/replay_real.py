"""Replay on a real model: held-out avg@k against training wall clock and against sampled tokens.

SmolLM2-135M-Instruct sharpened at alpha 4 with the demo's recipe (`powerflow_lite.demo.DEMOS["reasoning"]`:
3 prompts x 6 samples a step, the shipped addition and subtraction questions without their answers), trained
on-policy and with replay (and exploration), for several seeds. Every run evaluates the 24 held-out problems
(k=4, temperature 1, the same eval seed at every evaluation) before step 1 and every --eval-every steps. The
wall clock of a run is the sum of its steps' sampling, scoring and update times: evaluations and checkpoint
writes are left out, the same for every setting.

    python examples/replay_real.py            # 3 settings x 3 seeds: about 40 minutes on 2 CPU cores
    python examples/replay_real.py --quick    # one seed, on-policy and K=2, 4 steps: a few minutes

Reported, per setting, from the seed-averaged curves: avg@k at each evaluation with the training seconds and
sampled tokens it took, and the headline: on-policy's final avg@k, and the seconds (and tokens) each other
setting took to first reach it, as a fraction of on-policy's. The final avg@k of each setting is also compared
with on-policy's, paired over problems (each problem's avg@k averaged over the seeds).

Written to OUT (default examples/results): replay_real.md, replay_real.json and replay_real.png (with
matplotlib). Run directories go to OUT/work/replay-* (not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import transformers

from powerflow_lite import demo
from powerflow_lite.config import TrainConfig
from powerflow_lite.evaluate import EVALS
from powerflow_lite.metrics import mean, read_metrics, stderr
from powerflow_lite.plot import pyplot

transformers.utils.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

SEEDS = (0, 1, 2)
# name: (steps, config overrides). The replay runs get more steps: they are cheaper, and the question is when
# they reach on-policy's final accuracy, not where they are after as many steps.
SETTINGS = {
    "on-policy": (8, {}),
    "K=2": (12, {"replay_steps": 2}),
    "K=2, explore T=1/4": (12, {"replay_steps": 2, "explore_temperature": 0.25}),
    "K=2, replay lr x0.25": (12, {"replay_steps": 2, "replay_lr_scale": 0.25}),
}


def train_config(model: str, out: Path, setting: str, seed: int, eval_every: int, steps: int | None) -> TrainConfig:
    values = demo.demo_defaults("reasoning", need_model=False)
    default_steps, overrides = SETTINGS[setting]
    steps = steps or default_steps
    name = "replay-" + setting.replace(", ", "-").replace(" ", "").replace("/", "_").replace("=", "") + f"-{seed}"
    values.update(model=model, seed=seed, output=str(out / "work" / name), overwrite=True, show_every=0,
                  max_steps=steps, eval_every=eval_every, save_every=steps, **overrides)
    return TrainConfig(**values)


def run_one(cfg: TrainConfig) -> dict:
    """Train; -> the curve: one point per evaluation (step, training seconds and sampled tokens so far, avg@k and
    its per-problem values)."""
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    started = time.perf_counter()
    run = setup(cfg)
    for _ in train(run):
        pass
    rows = read_metrics(Path(cfg.output) / "metrics.jsonl")
    seconds, tokens, spent = {0: 0.0}, {0: 0}, (0.0, 0)
    for row in rows:
        if "loss" in row:
            spent = (spent[0] + row["time_sample"] + row["time_score"] + row["time_update"],
                     spent[1] + row["sampled_tokens"])
            seconds[row["step"]], tokens[row["step"]] = spent
    curve = []
    for row in rows:
        if "eval_avg_at_k" in row:
            summary = json.loads((Path(cfg.output) / EVALS / f"step-{row['step']}.json").read_text())
            curve.append({"step": row["step"], "seconds": seconds[row["step"]], "tokens": tokens[row["step"]],
                          "avg_at_k": summary["avg_at_k"], "per_problem": summary["avg_at_k_per_prompt"]})
    lengths = [row["length_mean"] for row in rows if "loss" in row]
    return {"curve": curve, "wall_seconds": time.perf_counter() - started, "length_mean": lengths,
            "replayed": [row.get("replayed", 0) for row in rows if "loss" in row]}


def averaged_curve(runs: list[dict]) -> list[dict]:
    """The seeds' curves point by point (they evaluate at the same steps): means of seconds, tokens, avg@k."""
    points = []
    for group in zip(*(r["curve"] for r in runs), strict=True):
        per_problem = [mean(list(values)) for values in zip(*(p["per_problem"] for p in group), strict=True)]
        points.append({"step": group[0]["step"], "seconds": mean([p["seconds"] for p in group]),
                       "tokens": mean([p["tokens"] for p in group]), "avg_at_k": mean(per_problem),
                       "per_problem": per_problem})
    return points


def summarise(curves: dict[str, list[dict]]) -> dict:
    """On-policy's final avg@k, and for each setting when it first reached it (seconds and tokens, and those as a
    fraction of on-policy's), plus its final avg@k against on-policy's, paired over problems."""
    on = curves["on-policy"][-1]
    rows = {}
    for name, curve in curves.items():
        reached = next((p for p in curve if p["avg_at_k"] >= on["avg_at_k"] - 1e-9 and p["step"] > 0), None)
        differences = [a - b for a, b in zip(curve[-1]["per_problem"], on["per_problem"], strict=True)]
        rows[name] = {"final_step": curve[-1]["step"], "final_avg_at_k": curve[-1]["avg_at_k"],
                      "final_seconds": curve[-1]["seconds"], "final_tokens": curve[-1]["tokens"],
                      "reached_step": reached and reached["step"],
                      "reached_seconds": reached and reached["seconds"],
                      "reached_tokens": reached and reached["tokens"],
                      "seconds_fraction": reached and reached["seconds"] / on["seconds"],
                      "tokens_fraction": reached and reached["tokens"] / on["tokens"],
                      "final_vs_on_policy": {"mean": mean(differences), "stderr": stderr(differences)}}
    return {"target_avg_at_k": on["avg_at_k"], "on_policy_seconds": on["seconds"], "on_policy_tokens": on["tokens"],
            "settings": rows}


def markdown(study: dict) -> str:
    summary, curves = study["summary"], study["curves"]
    lines = [f"SmolLM2-135M-Instruct, alpha 4, the demo's recipe; {len(study['seeds'])} seeds; held-out avg@"
             f"{study['k']} on {study['problems']} problems (seed means). Seconds: training only (sampling, scoring, "
             "update), evaluations left out.", "",
             f"On-policy ends at avg@k {100 * summary['target_avg_at_k']:.1f}% after "
             f"{summary['on_policy_seconds']:.0f} s and {summary['on_policy_tokens']:,.0f} sampled tokens.", "",
             "| setting | first reaches on-policy's final avg@k | seconds (fraction of on-policy's) "
             "| sampled tokens (fraction) | final: step, avg@k | final - on-policy final |",
             "|---|---|---|---|---|---|"]
    for name, r in summary["settings"].items():
        if r["reached_step"] is None:
            reached, secs, toks = "not reached", "", ""
        else:
            reached = f"step {r['reached_step']}"
            secs = f"{r['reached_seconds']:.0f} s ({r['seconds_fraction']:.2f})"
            toks = f"{r['reached_tokens']:,.0f} ({r['tokens_fraction']:.2f})"
        diff = r["final_vs_on_policy"]
        lines.append(f"| {name} | {reached} | {secs} | {toks} | {r['final_step']}, {100 * r['final_avg_at_k']:.1f}% "
                     f"| {100 * diff['mean']:+.1f} ± {100 * diff['stderr']:.1f} |")
    lines += ["", "Curves (seed means): step: avg@k at training seconds / sampled tokens.", ""]
    for name, curve in curves.items():
        points = ", ".join(f"{p['step']}: {100 * p['avg_at_k']:.1f}% at {p['seconds']:.0f} s / {p['tokens']:,.0f}"
                           for p in curve)
        lines.append(f"* {name}: {points}")
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, curve in study["curves"].items():
        for ax, key in zip(axes, ("seconds", "tokens"), strict=True):
            ax.plot([p[key] for p in curve], [100 * p["avg_at_k"] for p in curve], marker="o", label=name)
    axes[0].set_xlabel("training seconds (2 CPU cores)")
    axes[1].set_xlabel("sampled tokens")
    axes[0].set_ylabel(f"held-out avg@{study['k']} (%)")
    for ax in axes:
        ax.axhline(100 * study["summary"]["target_avg_at_k"], color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(f"SmolLM2-135M, alpha 4: on-policy against replay ({len(study['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--model", default="", help="model directory (default: the demo's, converted if needed)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--settings", default="", help=f"comma-separated, from: {'; '.join(SETTINGS)} "
                        "(separate with ';' — names hold commas). Default: all; on-policy must be among them")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="steps for every setting (default: each its own)")
    parser.add_argument("--quick", action="store_true", help="one seed, on-policy and K=2, 4 steps")
    args = parser.parse_args(argv)
    out = Path(args.out)
    model = args.model or str(demo.demo_model_dir())
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    settings = ["on-policy", "K=2"] if args.quick else (args.settings.split(";") if args.settings else list(SETTINGS))
    steps = 4 if args.quick else args.steps or None
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    for name in settings:
        for seed in seeds:
            cfg = train_config(model, out, name, seed, args.eval_every, steps)
            print(f"[{time.perf_counter() - started:5.0f} s] {name}, seed {seed}: {cfg.max_steps} steps", flush=True)
            runs.setdefault(name, []).append(run_one(cfg))
    curves = {name: averaged_curve(r) for name, r in runs.items()}
    study = {"seeds": seeds, "k": demo.DEMOS["reasoning"]["eval_k"],
             "problems": len(curves["on-policy"][0]["per_problem"]),
             "curves": curves, "runs": runs, "summary": summarise(curves),
             "seconds": time.perf_counter() - started}
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_real.json").write_text(json.dumps(study, indent=1))
    table = markdown(study)
    (out / "replay_real.md").write_text(table)
    drew = plot(study, out / "replay_real.png")
    print(table)
    print(f"{sum(map(len, runs.values()))} runs in {study['seconds']:.0f} s; wrote {out / 'replay_real.md'}, .json"
          + (" and .png" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
