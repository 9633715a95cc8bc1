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
* sequential Monte Carlo towards p_base^4 (`--sampler power-smc`) with N = 4, 8 and 16 particles per answer,
  and at N = 8 with the exponent ramped over the first 16 tokens;
* the sampler distilled: the adapter fine-tuned by maximum likelihood on power-smc's answers (N = 4) to the
  training prompts, as many sampled tokens as the demo recipe's PowerFlow run of the same seed spent, with that
  recipe's LoRA, optimiser, learning rate and 8 steps (each over all the answers);
* PowerFlow (`powerflow train`, LA-TB) at alpha 4, one adapter per seed: the demo's recipe (8 steps of 3 x 6
  completions) and four times its steps on the three tasks' training prompts together, and 12 steps of 4 x 8
  completions at lr 5e-4 on one task's training prompts, for the two arithmetic tasks.

For each: avg@k, pass@k and maj@k with the standard error of the paired per-problem differences from the
base at temperature 1 (over problems; trained policies averaged over seeds first, their spread over seeds
reported beside), the tokens sampled per answer at inference and the wall seconds per answer, training
seconds, and p_alpha ESS / k.

Writes OUT (default examples/results): power_real.md, power_real.json, power_real.png. Every finished
training run and evaluation is kept in OUT/power_real.parts/ (adapters under work/, not committed), so an
interrupted run resumes where it stopped. A row already in OUT/power_real.json is kept as it is (its
per-problem figures are there) unless --fresh: a new row is measured beside the committed ones, and the file
records the machine each row was measured on.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import transformers

from powerflow_lite import demo
from powerflow_lite.config import EvalConfig, TrainConfig
from powerflow_lite.data import package_data_path
from powerflow_lite.evaluate import evaluate
from powerflow_lite.metrics import mean, std, stderr
from powerflow_lite.plot import pyplot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_exact import machine  # noqa: E402 - where a row was measured: the same seed gives other figures elsewhere

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
PARTICLES = (4, 8, 16)  # power-smc's N
RAMP = 16  # power-smc's --alpha-ramp-tokens in its one row with a ramp: a third of the longest answer
DISTILL_PARTICLES = 4  # the distilled sampler's N: more answers for the same tokens than at 8 or 16
DISTILLED = f"power-smc (N = {DISTILL_PARTICLES}) distilled by maximum likelihood, demo recipe's budget"
POWER_ALPHA = 4.0  # the power samplers' target, and the alpha PowerFlow trains at
K, MAX_NEW_TOKENS, EVAL_SEED = 4, 48, 0
KEYS = ("avg_at_k", "pass_at_k", "maj_at_k")


class Study:
    def __init__(self, out: Path, model: str, quick: bool, stored: dict | None = None):
        """`stored`: the tables of a committed results file, whose rows are kept rather than measured again."""
        self.out, self.model, self.quick, self.stored = out, model, quick, stored or {}
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

    def distill(self, seed: int, budget: int) -> dict:
        """The adapter fine-tuned by maximum likelihood on power-smc's answers to the three tasks' training prompts
        (the base's own samples of p_base^alpha), `budget` sampled tokens of them, with the demo recipe's model,
        LoRA, optimiser, learning rate and steps; each step's gradient is over all the answers."""
        name = f"distill-smc{DISTILL_PARTICLES}-seed{seed}"
        output = self.work / name

        def compute():
            from powerflow_lite.checkpoint import save_adapter
            from powerflow_lite.logprobs import completion_logprobs
            from powerflow_lite.model import eval_mode
            from powerflow_lite.samplers.rollouts import PowerSettings, Rollouts
            from powerflow_lite.samplers.smc import sample_smc
            from powerflow_lite.setup import setup

            values = demo.demo_defaults("reasoning", need_model=False)
            values.update(model=self.model, prompts=str(self.training_prompts(tuple(self.tasks))), alpha=POWER_ALPHA,
                          seed=seed, output=str(output), overwrite=True, save_every=0, eval_data="", eval_every=0,
                          show_every=0)
            run = setup(TrainConfig(**values))
            cfg, model, tokenizer = run.cfg, run.model, run.tokenizer
            started = time.perf_counter()
            torch.manual_seed(seed)
            order = random.Random(seed).sample(range(len(run.prompt_ids)), len(run.prompt_ids))
            settings = replace(run.sampling, temperature=1.0,
                               power=PowerSettings(POWER_ALPHA, particles=DISTILL_PARTICLES))
            parts, spent = [], 0
            with eval_mode(model, adapter=False):  # the base's samples of p_base^alpha
                while spent < budget:
                    first = len(parts) * 8
                    prompts = [run.prompt_ids[order[i % len(order)]] for i in range(first, first + 8)]
                    parts.append(sample_smc(model, tokenizer, prompts, 1, settings))
                    spent += int(parts[-1].sampled_tokens.sum())
            answers = Rollouts.concat(parts, tokenizer.pad_token_id, torch.arange(8 * len(parts)))
            sampling_seconds = time.perf_counter() - started
            tokens = answers.completion_mask.sum()
            model.train()
            losses = []  # per step: the mean -log pi per answer token
            for _ in range(cfg.max_steps):  # maximum likelihood: mean -log pi over every token of every answer
                run.optimizer.zero_grad(set_to_none=True)
                losses.append(0.0)
                for first in range(0, len(answers), cfg.micro_batch_size):
                    micro = answers.select(slice(first, first + cfg.micro_batch_size))
                    logps = completion_logprobs(model, micro)[0]  # [m, L]
                    loss = -(logps * micro.completion_mask).sum() / tokens
                    loss.backward()
                    losses[-1] += float(loss)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
                run.optimizer.step()
                run.scheduler.step()
            save_adapter(output / "adapter", model, run.head)
            return {"adapter": str(output / "adapter"), "steps": cfg.max_steps, "answers": len(answers),
                    "sampled_tokens": spent, "answer_tokens": int(tokens), "sampling_seconds": sampling_seconds,
                    "losses": losses,
                    "training_seconds": time.perf_counter() - started}

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

    def kept(self, name: str, task: str) -> bool:
        return name in self.stored.get(task, {}).get("rows", {})

    def run(self) -> dict:
        policies: dict[str, dict[str, list[dict]]] = {}  # policy -> task -> one summary per seed
        training: dict[str, dict[str, list[dict]]] = {}  # policy -> task -> one training run per seed

        def add(name: str, task: str, measure) -> None:
            if not self.kept(name, task):
                policies.setdefault(name, {})[task] = measure()

        for task in self.tasks:
            for t in TEMPERATURES:
                add(f"base, temperature {t:g}", task, lambda: [self.evaluate(f"base-T{t:g}", task, temperature=t)])
            for n in (4, 16):
                add(f"importance resampling, N = {n}", task, lambda: [
                    self.evaluate(f"resample-N{n}", task, sampler="power-resample", candidates=n)])
            add("Metropolis-Hastings, defaults", task, lambda: [  # every chain of the task at once
                self.evaluate("mcmc", task, sampler="power-mcmc", batch_size=256)])
            for n in PARTICLES:
                add(f"sequential Monte Carlo, N = {n}", task, lambda: [
                    self.evaluate(f"smc-N{n}", task, sampler="power-smc", particles=n)])
            add(f"sequential Monte Carlo, N = 8, exponent ramped over {RAMP} tokens", task, lambda: [
                self.evaluate(f"smc-N8-ramp{RAMP}", task, sampler="power-smc", particles=8, alpha_ramp_tokens=RAMP)])
        for name, (recipe, trained_on, settings) in self.recipes.items():
            groups = [tuple(self.tasks)] if trained_on == "together" else [(t,) for t in trained_on if t in self.tasks]
            for group in groups:
                if all(self.kept(name, task) for task in group):
                    continue
                runs = [self.train(recipe, group, settings, seed) for seed in self.seeds]
                for task in group:
                    training.setdefault(name, {})[task] = runs
                    policies.setdefault(name, {})[task] = [
                        self.evaluate(f"powerflow-alpha{POWER_ALPHA:g}-{recipe}-seed{seed}", task, adapter=r["adapter"])
                        for seed, r in zip(self.seeds, runs)]
        if not all(self.kept(DISTILLED, task) for task in self.tasks):
            demo_recipe, (recipe, _, settings) = next(iter(self.recipes.items()))
            kept = self.stored.get(next(iter(self.tasks)), {}).get("rows", {}).get(demo_recipe)
            budgets = ([round(kept["training_tokens"])] * len(self.seeds) if kept else  # its seeds' mean
                       [self.train(recipe, tuple(self.tasks), settings, seed)["sampled_tokens"] for seed in self.seeds])
            runs = [self.distill(seed, budget) for seed, budget in zip(self.seeds, budgets)]
            for task in self.tasks:
                training.setdefault(DISTILLED, {})[task] = runs
                policies.setdefault(DISTILLED, {})[task] = [
                    self.evaluate(f"distilled-smc{DISTILL_PARTICLES}-seed{seed}", task, adapter=r["adapter"])
                    for seed, r in zip(self.seeds, runs)]
        measured_on = machine()
        return {"tables": {task: table(policies, training, task, self.stored.get(task, {}).get("rows", {}),
                                       measured_on) for task in self.tasks},
                "settings": {"k": K, "max_new_tokens": MAX_NEW_TOKENS, "seeds": list(self.seeds),
                             "recipes": {name: list(r) for name, r in self.recipes.items()},
                             "temperatures": TEMPERATURES, "power_alpha": POWER_ALPHA, "particles": PARTICLES,
                             "tasks": {task: self.tasks[task][:2] for task in self.tasks}}}


def table(policies: dict, training: dict, task: str, stored: dict | None = None, measured_on: dict | None = None
          ) -> dict:
    """Per policy: the seed-averaged figures, paired changes from the base at temperature 1, cost. `stored`: rows
    kept from a committed results file, first and as they were; the rows measured now record `measured_on`."""
    rows = {name: row for name, row in (stored or {}).items() if not (name in policies and task in policies[name])}
    for name, by_task in policies.items():
        if task not in by_task:
            continue
        summaries = by_task[task]
        row = {"seeds": len(summaries)}
        for key in KEYS:
            per_problem = [mean(list(values)) for values in zip(*(s[f"{key}_per_prompt"] for s in summaries))]
            row[key], row[f"{key}_per_problem"] = mean(per_problem), per_problem
            row[f"{key}_per_seed"] = [s[key] for s in summaries]  # the raw values, not only their spread
            row[f"{key}_seed_std"] = std(row[f"{key}_per_seed"])
        row["tokens_per_answer"] = mean([s.get("sampled_tokens_per_answer", s["length_mean"]) for s in summaries])
        row["length_mean"] = mean([s["length_mean"] for s in summaries])
        row["p_alpha_ess"] = mean([s["p_alpha_ess"] for s in summaries]) if "p_alpha_ess" in summaries[0] else None
        row["eval_seconds"] = mean([s["seconds"] for s in summaries])
        row["machine"] = measured_on
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
        if "training_seconds" in row and "vs base T=1/alpha" not in row:  # trained, measured now
            alpha = float(name.split()[2].rstrip(",")) if name.startswith("PowerFlow") else POWER_ALPHA
            row["vs base T=1/alpha"] = {key: paired(row[f"{key}_per_problem"],
                                                    rows[f"base, temperature {1 / alpha:g}"][f"{key}_per_problem"])
                                        for key in KEYS}
            row["vs best temperature"] = {key: paired(row[f"{key}_per_problem"], rows[best][f"{key}_per_problem"])
                                          for key in KEYS}
    return {"rows": rows, "best_temperature": best}


def paired(after: list[float], before: list[float]) -> dict:
    differences = [a - b for a, b in zip(after, before)]
    return {"mean": mean(differences), "stderr": stderr(differences)}


def best_sampler(tab: dict) -> str:
    """The most accurate power sampler (importance resampling, Metropolis-Hastings, sequential Monte Carlo) of a
    task's table."""
    samplers = [name for name in tab["rows"] if name.startswith(("importance", "Metropolis", "sequential"))]
    return max(samplers, key=lambda name: tab["rows"][name]["avg_at_k"])


def repaid_after(tab: dict, name: str, answers: int) -> float | None:
    """After how many answers a trained row's training seconds are repaid by the seconds each answer costs less
    than the best power sampler's (`answers`: how many its evaluation drew); None when it is not cheaper."""
    rows = tab["rows"]
    saved = (rows[best_sampler(tab)]["eval_seconds"] - rows[name]["eval_seconds"]) / answers
    return rows[name]["training_seconds"] / saved if saved > 0 else None


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
             "sampled to produce an answer at inference (every proposal, chain step or particle); seconds per answer "
             "are the evaluation's wall time over its answers, model load and grading included. Sequential Monte "
             "Carlo (`--sampler power-smc`) resamples at its default threshold (0.5), without a ramp unless the row "
             "says so. The distilled "
             f"row fine-tunes the adapter by maximum likelihood on power-smc's answers (N = {DISTILL_PARTICLES}) to "
             "the three tasks' training prompts, as many sampled tokens as the demo recipe's PowerFlow run spent, "
             "with that recipe's LoRA, optimiser, learning rate and 8 steps (each over all its answers); its "
             "training seconds include drawing them. Command: `python examples/power_real.py`.", ""]
    for task, tab in result["tables"].items():
        data, limit = settings["tasks"][task]
        lines += [f"## {task} ({limit} problems of `{data}`; best temperature of the grid: "
                  f"{tab['best_temperature'].split()[-1]})", "",
                  "| policy | avg@k | change | pass@k | maj@k | seed sd | tokens per answer | s per answer | "
                  "training s | p_alpha ESS / k |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in tab["rows"].items():
            change = row["vs base T=1"]["avg_at_k"]
            training = f"{row['training_seconds']:.0f}" if "training_seconds" in row else ""
            ess = f"{row['p_alpha_ess']:.2f}" if row["p_alpha_ess"] is not None else ""
            seed_sd = f"{100 * row['avg_at_k_seed_std']:.1f}" if row["seeds"] > 1 else ""
            lines.append(f"| {name} | {100 * row['avg_at_k']:.1f}% | {100 * change['mean']:+.1f} ± "
                         f"{100 * change['stderr']:.1f} | {100 * row['pass_at_k']:.1f}% | {100 * row['maj_at_k']:.1f}% "
                         f"| {seed_sd} | {row['tokens_per_answer']:.1f} | "
                         f"{row['eval_seconds'] / (limit * settings['k']):.2f} | {training} | {ess} |")
        lines.append("")
        answers = limit * settings["k"]
        best = best_sampler(tab)
        tempered = tab["rows"][f"base, temperature {1 / settings['power_alpha']:g}"]["avg_at_k_per_problem"]
        for name, row in tab["rows"].items():
            if "training_seconds" in row:  # trained: against the free ways to sample p_base^alpha
                a, b, c = (paired(row["avg_at_k_per_problem"], other) for other in (
                    tempered, tab["rows"][tab["best_temperature"]]["avg_at_k_per_problem"],
                    tab["rows"][best]["avg_at_k_per_problem"]))
                after = repaid_after(tab, name, answers)
                repaid = (f"its training seconds are repaid after {after:.0f} answers" if after is not None
                          else "it is not cheaper per answer")
                same = ""
                if name == DISTILLED and next(iter(RECIPES)) in tab["rows"]:  # the same sampled tokens, by LA-TB
                    d = paired(row["avg_at_k_per_problem"], tab["rows"][next(iter(RECIPES))]["avg_at_k_per_problem"])
                    same = (f", {100 * d['mean']:+.1f} ± {100 * d['stderr']:.1f} against PowerFlow's demo recipe at "
                            "the same sampled tokens")
                lines.append(f"* {name}: avg@k {100 * a['mean']:+.1f} ± {100 * a['stderr']:.1f} points against the "
                             f"base at temperature 1/alpha, {100 * b['mean']:+.1f} ± {100 * b['stderr']:.1f} against "
                             f"the best temperature, {100 * c['mean']:+.1f} ± {100 * c['stderr']:.1f} against the best "
                             f"power sampler ({best}){same}; {repaid}.")
        lines.append("")
    machines = {json.dumps(row.get("machine"), sort_keys=True) for tab in result["tables"].values()
                for row in tab["rows"].values()}
    for measured in sorted(machines):
        names = sorted({name for tab in result["tables"].values() for name, row in tab["rows"].items()
                        if json.dumps(row.get("machine"), sort_keys=True) == measured})
        where = json.loads(measured)
        lines.append(f"Measured on {where['cpu']} ({where['cores']} cores, torch {where['torch']}): "
                     if where else "Measured on an earlier 2-core machine (not recorded): ")
        lines[-1] += "; ".join(names) + "."
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
            sampler = name.startswith(("importance", "Metropolis", "sequential"))
            marker = "o" if name.startswith("base") else "s" if sampler else "*"
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
    parser.add_argument("--fresh", action="store_true", help="measure every row again (default: keep the rows of "
                                                             "OUT/power_real.json, measure the others)")
    args = parser.parse_args()
    out = Path(args.out)
    name = "power_real_quick" if args.quick else "power_real"
    committed = out / f"{name}.json"
    if args.report:
        result = json.loads(committed.read_text())
    else:
        stored = {} if args.fresh or not committed.is_file() else json.loads(committed.read_text())["tables"]
        result = Study(out, args.model or str(demo.demo_model_dir()), args.quick, stored).run()
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (out / f"{name}.md").write_text(text)
    plot(result, out / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
