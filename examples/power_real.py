"""Is training worth it? PowerFlow on SmolLM2-135M-Instruct against every free way to sample p_base^alpha.

    python examples/power_real.py             # the whole study: about 2.5 hours on 2 CPU cores, resumable by part
    python examples/power_real.py --quick     # one seed, 8 single-digit problems, the demo's recipe: minutes
    python examples/power_real.py --report    # re-render the tables and plot from the JSON

Three held-out tasks whose training prompts carry no answers: single-digit arithmetic (the demo's), two-digit
addition asking for the number alone, and word problems (powerflow_lite/data/*_eval.jsonl). Every policy
answers each problem k times at the same eval seed; accuracy is graded with math-verify. The policies:

* the base at temperature 1, at 1/alpha, and at each temperature of a small grid (the best is reported);
* importance resampling towards p_base^4 (`--sampler power-resample`) with N = 4 and 16 proposals per answer;
* block-wise Metropolis-Hastings towards p_base^4 (`--sampler power-mcmc`) at its defaults;
* PowerFlow (`powerflow train`, LA-TB) at alpha 4, one adapter per seed: the demo's recipe (8 steps of 3 x 6
  completions) and four times its steps on the three tasks' training prompts together, and 12 steps of 4 x 8
  completions at lr 5e-4 on one task's training prompts, for the two arithmetic tasks.

For each: avg@k, pass@k and maj@k with the standard error of the paired per-problem differences from the
base at temperature 1 (over problems; trained policies averaged over seeds first, their spread over seeds
reported beside), the tokens sampled per answer at inference, training seconds, and p_alpha ESS / k.

Writes OUT (default examples/results): power_real.md, power_real.json, power_real.png. Every finished
training run and evaluation is kept in OUT/power_real.parts/ (adapters under work/, not committed), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

import transformers

from powerflow_lite import demo
from powerflow_lite.config import EvalConfig, TrainConfig
from powerflow_lite.data import package_data_path
from powerflow_lite.evaluate import evaluate
from powerflow_lite.metrics import mean, std, stderr
from powerflow_lite.plot import pyplot

transformers.utils.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

TASKS = {  # name: (held-out problems, how many of them, training prompts)
    "single-digit": ("arithmetic_eval.jsonl", 40, "arithmetic_train.jsonl"),
    "two-digit": ("two_digit_eval.jsonl", 24, "two_digit_train.jsonl"),
    "word problems": ("word_eval.jsonl", 20, "word_train.jsonl"),
}
SEEDS = (0, 1, 2)
RECIPES = {  # row name: (name of its parts, the tasks it trains on together or one by one, settings over the demo's)
    "PowerFlow alpha 4, demo recipe, three tasks' prompts": ("demo", "together", {}),
    "PowerFlow alpha 4, 12 steps of 4 x 8, this task's prompts": (
        "task", ("single-digit", "two-digit"), dict(max_steps=12, prompts_per_step=4, samples_per_prompt=8, lr=5e-4)),
    "PowerFlow alpha 4, demo recipe x 4 (32 steps), three tasks' prompts": ("4x", "together", dict(max_steps=32)),
}
TEMPERATURES = (1.0, 0.7, 0.5, 0.25, 0.1)
POWER_ALPHA = 4.0  # the power samplers' target, and the alpha PowerFlow trains at
K, MAX_NEW_TOKENS, EVAL_SEED = 4, 48, 0
KEYS = ("avg_at_k", "pass_at_k", "maj_at_k")


class Study:
    def __init__(self, out: Path, model: str, quick: bool):
        self.out, self.model, self.quick = out, model, quick
        self.parts = out / ("power_real_quick.parts" if quick else "power_real.parts")
        self.work = self.parts / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.tasks = {"single-digit": (TASKS["single-digit"][0], 8, TASKS["single-digit"][2])} if quick else TASKS
        self.seeds = SEEDS[:1] if quick else SEEDS
        self.recipes = dict(list(RECIPES.items())[:1]) if quick else RECIPES

    def part(self, name: str, compute) -> dict:
        return part(self.parts, name, compute)

    def training_prompts(self, tasks: tuple[str, ...]) -> Path:
        path = self.work / f"prompts-{'-'.join(tasks)}.jsonl".replace(" ", "_")
        rows = [json.loads(line) for task in tasks
                for line in package_data_path(self.tasks[task][2]).read_text().splitlines() if line.strip()]
        random.Random(0).shuffle(rows)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    def train(self, recipe: str, tasks: tuple[str, ...], settings: dict, seed: int, alpha: float = POWER_ALPHA) -> dict:
        name = f"train-alpha{alpha:g}-{recipe}-{'-'.join(tasks)}-seed{seed}".replace(" ", "_")
        output = self.work / name

        def compute():
            from powerflow_lite.setup import setup
            from powerflow_lite.train import train

            values = demo.demo_defaults("reasoning", need_model=False)
            values.update(settings)
            values.update(model=self.model, prompts=str(self.training_prompts(tasks)), alpha=alpha, seed=seed,
                          output=str(output), overwrite=True, save_every=0, eval_data="", eval_every=0, show_every=0)
            run = setup(TrainConfig(**values))
            rows = [step.metrics for step in train(run)]
            return {"adapter": str(output / "adapter"), "steps": len(rows),
                    "sampled_tokens": sum(r["sampled_tokens"] for r in rows),
                    "training_seconds": sum(r["time_sample"] + r["time_score"] + r["time_update"] for r in rows)}

        return self.part(name, compute)

    def evaluate(self, policy: str, task: str, adapter: str = "", alpha: float = POWER_ALPHA, **sampling) -> dict:
        """`alpha`: the target of the power samplers and of the p_alpha ESS."""
        data, limit, _ = self.tasks[task]

        def compute():
            output = self.work / "evals" / f"{policy}-{task}".replace(" ", "_")
            cfg = EvalConfig(model=self.model, adapter=adapter, data=str(package_data_path(data)), task="math", k=K,
                             limit=limit, max_new_tokens=MAX_NEW_TOKENS, system_prompt="", seed=EVAL_SEED,
                             output=str(output), overwrite=True, power_alpha=alpha, **sampling)
            return evaluate(cfg)["results"]["adapter" if adapter else "base"]

        return self.part(f"eval-{policy}-{task}".replace(" ", "_"), compute)

    def run(self) -> dict:
        policies: dict[str, dict[str, list[dict]]] = {}  # policy -> task -> one summary per seed
        training: dict[str, dict[str, list[dict]]] = {}  # policy -> task -> one training run per seed
        for task in self.tasks:
            for t in TEMPERATURES:
                policies.setdefault(f"base, temperature {t:g}", {})[task] = [
                    self.evaluate(f"base-T{t:g}", task, temperature=t)]
            for n in (4, 16):
                policies.setdefault(f"importance resampling, N = {n}", {})[task] = [
                    self.evaluate(f"resample-N{n}", task, sampler="power-resample", candidates=n)]
            policies.setdefault("Metropolis-Hastings, defaults", {})[task] = [  # every chain of the task at once
                self.evaluate("mcmc", task, sampler="power-mcmc", batch_size=256)]
        for name, (recipe, trained_on, settings) in self.recipes.items():
            groups = [tuple(self.tasks)] if trained_on == "together" else [(t,) for t in trained_on if t in self.tasks]
            for group in groups:
                runs = [self.train(recipe, group, settings, seed) for seed in self.seeds]
                for task in group:
                    training.setdefault(name, {})[task] = runs
                    policies.setdefault(name, {})[task] = [
                        self.evaluate(f"powerflow-alpha{POWER_ALPHA:g}-{recipe}-seed{seed}", task, adapter=r["adapter"])
                        for seed, r in zip(self.seeds, runs)]
        return {"tables": {task: table(policies, training, task) for task in self.tasks},
                "settings": {"k": K, "max_new_tokens": MAX_NEW_TOKENS, "seeds": list(self.seeds),
                             "recipes": {name: list(r) for name, r in self.recipes.items()},
                             "temperatures": TEMPERATURES, "power_alpha": POWER_ALPHA,
                             "tasks": {task: self.tasks[task][:2] for task in self.tasks}}}


def table(policies: dict, training: dict, task: str) -> dict:
    """Per policy: the seed-averaged figures, paired changes from the base at temperature 1, cost."""
    rows = {}
    for name, by_task in policies.items():
        if task not in by_task:
            continue
        summaries = by_task[task]
        row = {"seeds": len(summaries)}
        for key in KEYS:
            per_problem = [mean(list(values)) for values in zip(*(s[f"{key}_per_prompt"] for s in summaries))]
            row[key], row[f"{key}_per_problem"] = mean(per_problem), per_problem
            row[f"{key}_seed_std"] = std([s[key] for s in summaries])
        row["tokens_per_answer"] = mean([s.get("sampled_tokens_per_answer", s["length_mean"]) for s in summaries])
        row["length_mean"] = mean([s["length_mean"] for s in summaries])
        row["p_alpha_ess"] = mean([s["p_alpha_ess"] for s in summaries]) if "p_alpha_ess" in summaries[0] else None
        row["eval_seconds"] = mean([s["seconds"] for s in summaries])
        if name in training:
            row["training_seconds"] = mean([r["training_seconds"] for r in training[name][task]])
            row["training_tokens"] = mean([r["sampled_tokens"] for r in training[name][task]])
        rows[name] = row
    reference = rows["base, temperature 1"]
    for row in rows.values():
        row["vs base T=1"] = {key: paired(row[f"{key}_per_problem"], reference[f"{key}_per_problem"]) for key in KEYS}
    grid = [name for name in rows if name.startswith("base, temperature")]
    best = max(grid, key=lambda name: rows[name]["avg_at_k"])
    for name, row in rows.items():
        if name.startswith("PowerFlow"):
            alpha = float(name.split()[2].rstrip(","))  # "PowerFlow alpha A, ..."
            row["vs base T=1/alpha"] = {key: paired(row[f"{key}_per_problem"],
                                                    rows[f"base, temperature {1 / alpha:g}"][f"{key}_per_problem"])
                                        for key in KEYS}
            row["vs best temperature"] = {key: paired(row[f"{key}_per_problem"], rows[best][f"{key}_per_problem"])
                                          for key in KEYS}
    return {"rows": rows, "best_temperature": best}


def paired(after: list[float], before: list[float]) -> dict:
    differences = [a - b for a, b in zip(after, before)]
    return {"mean": mean(differences), "stderr": stderr(differences)}


def report(result: dict) -> str:
    settings = result["settings"]
    lines = ["# Is training worth it? PowerFlow against sampling p_base^alpha for free", "",
             f"SmolLM2-135M-Instruct on a 2-core CPU, k = {settings['k']} samples per held-out problem, at most "
             f"{settings['max_new_tokens']} tokens, no system prompt; PowerFlow trained on training prompts without "
             "answers (the demo's recipe of 8 steps of 3 x 6 completions at lr 1e-3, and 32 such steps, on the three "
             "tasks' prompts together; 12 steps of 4 x 8 completions at lr 5e-4 on one arithmetic task's "
             "prompts), over seeds "
             f"{', '.join(map(str, settings['seeds']))}. Changes are from the base at temperature 1: the mean of "
             "the paired per-problem differences ± its standard error over problems (trained policies averaged "
             "over seeds first; 'seed sd' is the spread of avg@k over seeds). Tokens per answer count everything "
             "sampled to produce an answer at inference. Command: `python examples/power_real.py`.", ""]
    for task, tab in result["tables"].items():
        data, limit = settings["tasks"][task]
        lines += [f"## {task} ({limit} problems of `{data}`; best temperature of the grid: "
                  f"{tab['best_temperature'].split()[-1]})", "",
                  "| policy | avg@k | change | pass@k | maj@k | seed sd | tokens per answer | training s | "
                  "p_alpha ESS / k |", "|---|---|---|---|---|---|---|---|---|"]
        for name, row in tab["rows"].items():
            change = row["vs base T=1"]["avg_at_k"]
            training = f"{row['training_seconds']:.0f}" if "training_seconds" in row else ""
            ess = f"{row['p_alpha_ess']:.2f}" if row["p_alpha_ess"] is not None else ""
            seed_sd = f"{100 * row['avg_at_k_seed_std']:.1f}" if row["seeds"] > 1 else ""
            lines.append(f"| {name} | {100 * row['avg_at_k']:.1f}% | {100 * change['mean']:+.1f} ± "
                         f"{100 * change['stderr']:.1f} | {100 * row['pass_at_k']:.1f}% | {100 * row['maj_at_k']:.1f}% "
                         f"| {seed_sd} | {row['tokens_per_answer']:.1f} | {training} | {ess} |")
        lines.append("")
        for name, row in tab["rows"].items():
            if "vs base T=1/alpha" in row:
                a, b = row["vs base T=1/alpha"]["avg_at_k"], row["vs best temperature"]["avg_at_k"]
                lines.append(f"* {name}: avg@k {100 * a['mean']:+.1f} ± {100 * a['stderr']:.1f} points against the "
                             f"base at temperature 1/alpha, {100 * b['mean']:+.1f} ± {100 * b['stderr']:.1f} against "
                             "the best temperature.")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    tables = result["tables"]
    names = list(dict.fromkeys(name for tab in tables.values() for name in tab["rows"]))
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}  # one colour in every panel
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for ax, (task, tab) in zip(axes[0], tables.items()):
        for name, row in tab["rows"].items():
            marker = "o" if name.startswith("base") else "s" if name.startswith(("importance", "Metropolis")) else "*"
            ax.errorbar(row["tokens_per_answer"], 100 * row["avg_at_k"], color=colours[name],
                        yerr=100 * row["vs base T=1"]["avg_at_k"]["stderr"], fmt=marker, capsize=2, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("tokens sampled per answer at inference")
        ax.set_ylabel("avg@k (%)")
        ax.set_title(task)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def part(parts: Path, name: str, compute) -> dict:
    """A finished piece of a study, computed once and kept as parts/NAME.json with its seconds (a study resumes
    from its parts)."""
    path = parts / f"{name}.json"
    if not path.is_file():
        log(f"{name} ...")
        started = time.perf_counter()
        value = {**compute(), "seconds": time.perf_counter() - started}
        path.write_text(json.dumps(value, indent=1))
        log(f"{name}: {value['seconds']:.0f} s")
    return json.loads(path.read_text())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2, converted once)")
    parser.add_argument("--quick", action="store_true", help="one seed, 8 single-digit problems, the demo's budget")
    parser.add_argument("--report", action="store_true", help="re-render from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    name = "power_real_quick" if args.quick else "power_real"
    if args.report:
        result = json.loads((out / f"{name}.json").read_text())
    else:
        result = Study(out, args.model or str(demo.demo_model_dir()), args.quick).run()
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / f"{name}.md").write_text(text)
    plot(result, out / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
