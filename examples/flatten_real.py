"""Flattening at matched diversity: PowerFlow at alpha < 1 against the base at a higher temperature, SmolLM2-135M.

    python examples/flatten_real.py            # the whole study: about an hour on 2 CPU cores, resumable by part
    python examples/flatten_real.py --report   # re-render the tables and plot from the JSON

A higher temperature is the free way to make a model more diverse. PowerFlow at alpha < 1 is worth training
only if, at the same diversity, its text is more fluent and likelier to the base. On the creative demo's 20
held-out prompts (8 samples each, at most 48 new tokens) this measures, for three seeds:

* the base at temperatures 1 to 2: the temperature curve;
* PowerFlow trained at alpha 0.5, 0.7 and 0.85 with 8 steps of 4 x 6 completions on the creative demo's 40
  training prompts at lr 1e-3 (RECIPE), one adapter per alpha and seed, and at a quarter of that learning rate
  (2.5e-4) for alpha 0.7 and 0.85: how far training moves matters as much as its target;

and for each: semantic diversity (all-MiniLM-L6-v2), fluency (the share of English words, of broken words and
of repeated word 3-grams: powerflow_lite/tasks/fluency.py) and the base log-prob per token. The matched reading:
for each seed, the temperature curve of that seed's sampling is interpolated at the trained policy's diversity
(along the part where diversity still rises with temperature), and the trained policy's fluency and base
log-prob are compared with the curve's there. Reported as the mean over seeds ± its standard error over the 3
seeds. Two samples per policy (seed 0, the first held-out prompt) are kept for reading.

Writes OUT (default examples/results): flatten_real.md, flatten_real.json, flatten_real.png. Every finished run
and evaluation is kept in OUT/flatten_real.parts/ (adapters under work/, not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from power_real import part  # noqa: E402

from powerflow_lite import demo
from powerflow_lite.config import EvalConfig, TrainConfig
from powerflow_lite.evaluate import SAMPLES, evaluate, first_samples
from powerflow_lite.metrics import mean, std, stderr
from powerflow_lite.plot import pyplot
from powerflow_lite.tasks.fluency import at_matched

transformers.utils.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

SEEDS = (0, 1, 2)
TEMPERATURES = (1.0, 1.1, 1.2, 1.3, 1.5, 2.0)
ALPHAS = (0.5, 0.7, 0.85)
GENTLE_LR, GENTLE_ALPHAS = 2.5e-4, (0.7, 0.85)  # RECIPE at a quarter of its learning rate
RECIPE = dict(max_steps=8, prompts_per_step=4, samples_per_prompt=6, max_new_tokens=48, lr=1e-3, lora_r=16,
              lora_alpha=32, warmup_steps=1, micro_batch_size=8, eval_tempered=False)  # the study's recipe
K, LIMIT = 8, 20
KEYS = ("diversity", "english_words", "broken_words", "repeated_3grams", "base_logp_per_token")
MATCHED = ("english_words", "base_logp_per_token")  # read off the temperature curve at a trained diversity


class Study:
    def __init__(self, out: Path, model: str):
        self.out, self.model = out, model
        self.parts = out / "flatten_real.parts"
        self.work = self.parts / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def part(self, name: str, compute) -> dict:
        return part(self.parts, name, compute)

    def recipe(self, alpha: float, seed: int, output: Path, lr: float | None = None) -> TrainConfig:
        values = demo.demo_defaults("creative", need_model=False)
        values.update(RECIPE, lr=lr or RECIPE["lr"])  # pinned: the demo's own settings may change
        values.update(model=self.model, alpha=alpha, seed=seed, output=str(output), overwrite=True, save_every=0,
                      eval_data="", eval_every=0, show_every=0)  # evaluated apart, as the base is
        return TrainConfig(**values)

    def train(self, alpha: float, seed: int, lr: float | None = None) -> dict:
        name = f"train-alpha{alpha:g}" + (f"-lr{lr:g}" if lr else "") + f"-seed{seed}"
        output = self.work / name

        def compute():
            from powerflow_lite.setup import setup
            from powerflow_lite.train import train

            rows = [step.metrics for step in train(setup(self.recipe(alpha, seed, output, lr)))]
            return {"adapter": str(output / "adapter"), "steps": len(rows),
                    "training_seconds": sum(r["time_sample"] + r["time_score"] + r["time_update"] for r in rows)}

        return self.part(name, compute)

    def evaluate(self, policy: str, seed: int, adapter: str = "", temperature: float = 1.0) -> dict:
        """The creative measures of one policy on the held-out prompts, sampled with this seed; two samples of
        the first prompt."""
        name = f"eval-{policy}-seed{seed}"

        def compute():
            recipe = self.recipe(0.5, seed, self.work / "unused")
            output = self.work / name
            data = demo.demo_defaults("creative", need_model=False)["eval_data"]
            cfg = EvalConfig(model=self.model, adapter=adapter, data=data, task="creative", k=K,
                             limit=LIMIT, temperature=temperature, max_new_tokens=recipe.max_new_tokens,
                             chat_template=recipe.chat_template, system_prompt=recipe.system_prompt,
                             quant=recipe.quant, seed=seed, output=str(output), overwrite=True)
            summary = evaluate(cfg)["results"]["adapter" if adapter else "base"]
            first = first_samples(output / SAMPLES)
            return {**{key: summary[key] for key in (*KEYS, "distinct_2", "length_mean", "truncated_frac")},
                    **{f"{key}_per_prompt": summary[f"{key}_per_prompt"] for key in KEYS},
                    "samples": [{"prompt": first["prompt"], "completion": c} for c in first["completions"]]}

        return self.part(name, compute)

    def run(self) -> dict:
        policies: dict[str, list[dict]] = {}
        trained = [(alpha, None) for alpha in ALPHAS] + [(alpha, GENTLE_LR) for alpha in GENTLE_ALPHAS]
        for seed in SEEDS:  # seed by seed: an interrupted study has whole seeds to show
            for t in TEMPERATURES:
                policies.setdefault(f"base, temperature {t:g}", []).append(
                    self.evaluate(f"base-T{t:g}", seed, temperature=t))
            for alpha, lr in trained:
                run = self.train(alpha, seed, lr)
                suffix = f"-lr{lr:g}" if lr else ""
                evaluated = self.evaluate(f"alpha{alpha:g}{suffix}", seed, adapter=run["adapter"])
                policies.setdefault(policy_name(alpha, lr), []).append(
                    {**evaluated, "training_seconds": run["training_seconds"]})
        return {"policies": {name: row(seeds) for name, seeds in policies.items()},
                "matched": {policy_name(a, lr): matched(policies, policy_name(a, lr)) for a, lr in trained},
                "settings": {"seeds": list(SEEDS), "temperatures": list(TEMPERATURES), "alphas": list(ALPHAS),
                             "gentle_lr": GENTLE_LR, "gentle_alphas": list(GENTLE_ALPHAS),
                             "k": K, "prompts": LIMIT, "recipe": RECIPE}}


def policy_name(alpha: float, lr: float | None) -> str:
    return f"PowerFlow alpha {alpha:g}" + (", lr " + f"{lr:.1e}".replace("e-0", "e-") if lr else "")


def row(seeds: list[dict]) -> dict:
    """A policy over seeds: the mean of each figure, its per-seed values and their spread, samples of seed 0."""
    out = {"samples": seeds[0]["samples"]}
    for key in (*KEYS, "distinct_2", "length_mean", "truncated_frac"):
        out[key] = mean([s[key] for s in seeds])
        out[f"{key}_per_seed"] = [s[key] for s in seeds]
        out[f"{key}_seed_std"] = std(out[f"{key}_per_seed"])
    if "training_seconds" in seeds[0]:
        out["training_seconds"] = mean([s["training_seconds"] for s in seeds])
    return out


def matched(policies: dict, name: str) -> dict:
    """Per seed, the temperature curve of that seed at the trained policy's diversity: the curve's figure there,
    the trained policy's, and their difference; then the mean difference over seeds ± its standard error."""
    per_seed = []
    for i, trained in enumerate(policies[name]):
        curve = [policies[f"base, temperature {t:g}"][i] for t in TEMPERATURES]
        found = {"diversity": trained["diversity"]}
        temps = [(c["diversity"], t) for c, t in zip(curve, TEMPERATURES)]
        found["temperature"] = at_matched(temps, trained["diversity"])
        for key in MATCHED:
            at = at_matched([(c["diversity"], c[key]) for c in curve], trained["diversity"])
            found[key] = {"trained": trained[key], "temperature": at,
                          "difference": None if at is None else trained[key] - at}
        per_seed.append(found)
    out = {"per_seed": per_seed}
    for key in MATCHED:
        differences = [s[key]["difference"] for s in per_seed if s[key]["difference"] is not None]
        out[key] = ({"mean": mean(differences), "stderr": stderr(differences) if len(differences) > 1 else None,
                     "seeds": len(differences)} if differences else None)
    reached = [s["temperature"] for s in per_seed if s["temperature"] is not None]
    out["temperature"] = mean(reached) if reached else None
    return out


def report(result: dict) -> str:
    s = result["settings"]
    lines = ["# Flattening at matched diversity: PowerFlow at alpha < 1 against a higher temperature", "",
             f"SmolLM2-135M-Instruct on a 2-core CPU; the creative demo's {s['prompts']} held-out prompts, "
             f"{s['k']} samples each, at most 48 new tokens. PowerFlow trained with 8 steps "
             "of 4 x 6 completions at lr 1e-3 (rows marked lr 2.5e-4: at a quarter of it) on 40 training prompts. "
             "Every figure is the mean over seeds "
             f"{', '.join(map(str, s['seeds']))}; 'sd' is its spread over the seeds. Semantic diversity: 100 x "
             "(1 - mean pairwise cosine) of all-MiniLM-L6-v2 embeddings of a prompt's samples. English words: the "
             "share of a sample's words in pyspellchecker's English list. Command: `python examples/flatten_real.py`.",
             "", "| policy | semantic diversity (sd) | English words (sd) | broken words | repeated 3-grams | "
             "base log-prob / token (sd) | distinct-2 | mean length | cut at 48 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["policies"].items():
        lines.append(f"| {name} | {r['diversity']:.1f} ({r['diversity_seed_std']:.1f}) | "
                     f"{pct(r['english_words'])} ({100 * r['english_words_seed_std']:.1f}) | "
                     f"{pct(r['broken_words'])} | "
                     f"{pct(r['repeated_3grams'])} | {r['base_logp_per_token']:.2f} "
                     f"({r['base_logp_per_token_seed_std']:.2f}) | {r['distinct_2']:.3f} | {r['length_mean']:.1f} | "
                     f"{pct(r['truncated_frac'])} |")
    lines += ["", "## At matched diversity", "",
              "For each seed, the base's temperature curve of that seed is interpolated at the trained policy's "
              "diversity (along the part where diversity rises with temperature); the difference is the trained "
              "policy's figure minus the curve's there. ± is the standard error over the seeds where the curve "
              "reaches that diversity.", "",
              "| policy | its diversity | temperature with that diversity | English words: trained | at that "
              "temperature | difference | base log-prob / token: trained | at that temperature | difference |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["matched"].items():
        r = result["policies"][name]
        reached = [x for x in m["per_seed"] if x["temperature"] is not None]
        where = "" if len(reached) == len(m["per_seed"]) else (
            f" ({len(reached)} of {len(m['per_seed'])} seeds; the others are more diverse than any temperature)")
        cells = [name, f"{r['diversity']:.1f}",
                 (f"{m['temperature']:.2f}" if m["temperature"] else "beyond every temperature") + where]
        for key, scale, digits in (("english_words", 100, 1), ("base_logp_per_token", 1, 2)):
            if not reached:
                cells += ["", "", ""]
                continue
            change = m[key]
            error = f" ± {scale * change['stderr']:.{digits}f}" if change["stderr"] is not None else ""
            cells += [f"{scale * mean([x[key]['trained'] for x in reached]):.{digits}f}",
                      f"{scale * mean([x[key]['temperature'] for x in reached]):.{digits}f}",
                      f"{scale * change['mean']:+.{digits}f}{error}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", verdict(result), "", "## Samples (seed 0, the first held-out prompt)", ""]
    first = next(iter(result["policies"].values()))["samples"]
    lines += [f"Prompt: {first[0]['prompt']!r}", ""]
    for name, r in result["policies"].items():
        for sample in r["samples"]:
            lines.append(f"* {name}: {sample['completion']!r}")
    return "\n".join(lines) + "\n"


def verdict(result: dict) -> str:
    """Where the trained points lie against the temperature curve, in words, from the matched differences: above
    or below it by more than two standard errors over seeds, or level with it."""
    said = []
    for name, m in result["matched"].items():
        english, logp = m["english_words"], m["base_logp_per_token"]
        seeds = len(m["per_seed"])
        if english is None:
            said.append(f"{name}: more diverse than any temperature on every seed, no matched reading.")
            continue

        def side(change: dict, scale: float, unit: str) -> str:
            amount = f"{scale * change['mean']:+.2f} {unit}"
            if change["stderr"] is None:
                return f"{amount} (one seed, no standard error)"
            error = change["stderr"]
            where = ("above" if change["mean"] - 2 * error > 0 else "below" if change["mean"] + 2 * error < 0
                     else "level with")
            return f"{where} the curve ({amount} ± {scale * error:.2f})"

        beyond = "" if english["seeds"] == seeds else (
            f" (on {english['seeds']} of {seeds} seeds; on the others it is more diverse than any temperature)")
        said.append(f"* {name}: English words {side(english, 100, 'points')}, base log-prob per token "
                    f"{side(logp, 1, 'nats')}{beyond}.")
    return "Read at equal diversity:\n\n" + "\n".join(said)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    temps = [(name, r) for name, r in result["policies"].items() if name.startswith("base")]
    trained = [(name, r) for name, r in result["policies"].items() if not name.startswith("base")]
    for ax, key, label, scale in ((axes[0], "english_words", "English words (%)", 100),
                                  (axes[1], "base_logp_per_token", "base log-prob per token", 1)):
        ax.plot([r["diversity"] for _, r in temps], [scale * r[key] for _, r in temps], "o-", color="grey",
                label="base, temperature 1 to 2")
        for name, r in temps:
            ax.annotate(name.removeprefix("base, temperature "), (r["diversity"], scale * r[key]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        for name, r in trained:
            ax.errorbar(r["diversity"], scale * r[key], xerr=r["diversity_seed_std"], yerr=scale * r[f"{key}_seed_std"],
                        fmt="s", capsize=3, label=name)
        ax.set_xlabel("semantic diversity (0-100)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, creative prompts: trained alpha < 1 against temperature (means over 3 seeds, bars: sd)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2, converted once)")
    parser.add_argument("--report", action="store_true", help="re-render from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads((out / "flatten_real.json").read_text())
    else:
        result = Study(out, args.model or str(demo.demo_model_dir())).run()
        (out / "flatten_real.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / "flatten_real.md").write_text(text)
    plot(result, out / "flatten_real.png")
    print(text)


if __name__ == "__main__":
    main()
