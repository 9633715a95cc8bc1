"""Which alpha? `powerflow preview`'s predictions and `--alpha auto`'s choice against a fixed-alpha sweep.

    python examples/alpha_choice.py              # the whole study: about 2 hours on 2 CPU cores, resumable by part
    python examples/alpha_choice.py --sweep      # only the training sweep (no preview)
    python examples/alpha_choice.py --previews   # only the previews and auto's choices (beside a --sweep)
    python examples/alpha_choice.py --report     # re-render the tables from the JSON

On the two arithmetic tasks of examples/power_real.py (SmolLM2-135M-Instruct, CPU), PowerFlow is trained at
each alpha of ALPHAS with that study's one-task recipe (12 steps of 4 x 8 completions at lr 5e-4 on the task's
training prompts, which carry no answers), three seeds each, and evaluated on the held-out problems (k = 4,
math-verify). Beside each: the base at temperature 1/alpha, and what `powerflow preview` predicted for p_alpha
from the base's samples on the held-out problems (avg@1, maj@k, length, effective sample size). `--alpha auto`
is the preview on the task's training prompts (no answers) and its label-free rule; since training at the
chosen alpha is the same run as the fixed alpha it chose, its row is that alpha's, seed for seed.

Writes OUT (default examples/results): alpha_choice.md and alpha_choice.json. The runs and evaluations are
kept in OUT/power_real.parts/ (shared with power_real.py, whose alpha-4 runs this reuses).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from power_real import KEYS, RECIPES, SEEDS, TASKS, Study, log, paired  # noqa: E402

from powerflow_lite import demo  # noqa: E402
from powerflow_lite.data import package_data_path  # noqa: E402
from powerflow_lite.metrics import mean, std  # noqa: E402

ALPHAS = (1.5, 2.0, 4.0, 8.0)
STUDY_TASKS = ("single-digit", "two-digit")
RECIPE = "PowerFlow alpha 4, 12 steps of 4 x 8, this task's prompts"  # power_real's one-task recipe
PREVIEW = dict(candidates=32, max_new_tokens=48, k=4, seed=0)  # the held-out preview's settings (as the evals')


def sweep(study: Study) -> dict:
    """task -> alpha -> {"evals": one summary per seed, "runs": one training run per seed, "tempered": base at
    T = 1/alpha}."""
    recipe, _, settings = RECIPES[RECIPE]
    result = {}
    for task in STUDY_TASKS:
        for alpha in ALPHAS:
            runs = [study.train(recipe, (task,), settings, seed, alpha=alpha) for seed in SEEDS]
            evals = [study.evaluate(f"powerflow-alpha{alpha:g}-{recipe}-seed{seed}", task, adapter=run["adapter"],
                                    alpha=alpha) for seed, run in zip(SEEDS, runs)]
            tempered = study.evaluate(f"base-T{1 / alpha:.3g}", task, temperature=round(1 / alpha, 3))
            result.setdefault(task, {})[f"{alpha:g}"] = {"evals": evals, "runs": runs, "tempered": tempered}
    return result


def previews(study: Study) -> dict:
    """task -> {"held_out": `powerflow preview` of p_alpha on the held-out problems (with their answers), "auto":
    per seed, what `powerflow train --alpha auto` chose with the sweep's recipe on the task's training prompts}."""
    from powerflow_lite.config import PreviewConfig
    from powerflow_lite.preview import preview

    result = {}
    for task in STUDY_TASKS:
        data, limit, _ = TASKS[task]

        def held_out(data=data, limit=limit):
            cfg = PreviewConfig(model=study.model, prompts=str(package_data_path(data)), limit=limit,
                                alphas=",".join(f"{a:g}" for a in (1.0, *ALPHAS)), system_prompt="",
                                **PREVIEW)
            return preview(cfg)

        name = task.replace(" ", "_")
        result[task] = {"held_out": study.part(f"preview-held-out-{name}", held_out),
                        "auto": [study.part(f"auto-{name}-seed{seed}", lambda seed=seed: auto_choice(study, task, seed))
                                 for seed in SEEDS]}
    return result


def auto_choice(study: Study, task: str, seed: int) -> dict:
    """What `powerflow train --alpha auto` chooses before step 1 with the sweep's recipe and this seed, and the
    loss of its first step beside the fixed-alpha run's at the alpha it chose (the same run, so the same loss)."""
    from powerflow_lite.config import TrainConfig
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    recipe, _, settings = RECIPES[RECIPE]
    values = demo.demo_defaults("reasoning", need_model=False)
    values.update(settings)
    output = study.work / f"auto-{task}-seed{seed}".replace(" ", "_")
    values.update(model=study.model, prompts=str(study.training_prompts((task,))), alpha="auto", seed=seed,
                  output=str(output), overwrite=True, save_every=0, eval_data="", eval_every=0, show_every=0,
                  max_steps=settings["max_steps"])
    run = setup(TrainConfig(**values))
    choice = run.info.alpha_choice
    first = next(iter(train(run))).metrics
    fixed = study.work / f"train-alpha{choice['alpha']:g}-{recipe}-{task}-seed{seed}".replace(" ", "_")
    return {"alpha": choice["alpha"], "rule": choice["rule"], "why": choice["why"], "table": choice["table"],
            "first_loss": first["loss"], "fixed_run": str(fixed)}


def tables(swept: dict, previewed: dict) -> dict:
    out = {}
    for task, by_alpha in swept.items():
        rows = {}
        for alpha, found in by_alpha.items():
            evals = found["evals"]
            row = {key: mean([mean(s[f"{key}_per_prompt"]) for s in evals]) for key in KEYS}
            row["per_problem"] = {key: [mean(list(v)) for v in zip(*(s[f"{key}_per_prompt"] for s in evals))]
                                  for key in KEYS}
            row["avg_at_k_seed_std"] = std([s["avg_at_k"] for s in evals])
            row["length_mean"] = mean([s["length_mean"] for s in evals])
            row["tempered"] = {key: found["tempered"][key] for key in (*KEYS, "length_mean")}
            row["vs tempered"] = paired(row["per_problem"]["avg_at_k"], found["tempered"]["avg_at_k_per_prompt"])
            row["training_seconds"] = mean([r["training_seconds"] for r in found["runs"]])
            if task in previewed:
                row["predicted"] = previewed[task]["held_out"]["alphas"][alpha]
            rows[alpha] = row
        best = max(rows, key=lambda a: rows[a]["avg_at_k"])
        for alpha, row in rows.items():
            row["vs best"] = paired(row["per_problem"]["avg_at_k"], rows[best]["per_problem"]["avg_at_k"])
        out[task] = {"rows": rows, "best": best}
        if task in previewed:
            out[task]["auto"] = auto_row(previewed[task]["auto"], by_alpha, rows[best])
    return out


def auto_row(choices: list[dict], by_alpha: dict, best: dict) -> dict:
    """--alpha auto's row: seed s trained at the alpha it chose for seed s (the fixed-alpha run of that alpha and
    seed), averaged over seeds per problem, and paired with the best fixed alpha."""
    evals = [by_alpha[f"{c['alpha']:g}"]["evals"][i] for i, c in enumerate(choices)]
    row = {"alphas": [c["alpha"] for c in choices], "why": [c["why"] for c in choices],
           "rule": choices[0]["rule"], "same_first_loss": all(c["first_loss"] == first_loss(c["fixed_run"])
                                                              for c in choices),
           "training_modal_share": [{a: r["modal_share"] for a, r in c["table"]["alphas"].items()} for c in choices],
           "training_ess": [{a: r["ess"] for a, r in c["table"]["alphas"].items()} for c in choices],
           "preview_seconds": mean([c["table"]["seconds"] for c in choices])}
    for key in KEYS:
        per_problem = [mean(list(v)) for v in zip(*(s[f"{key}_per_prompt"] for s in evals))]
        row[key] = mean(per_problem)
        if key == "avg_at_k":
            row["vs best"] = paired(per_problem, best["per_problem"]["avg_at_k"])
    row["avg_at_k_seed_std"] = std([s["avg_at_k"] for s in evals])
    return row


def report(result: dict) -> str:
    lines = ["# Which alpha? The preview's predictions and `--alpha auto` against a fixed-alpha sweep", "",
             "SmolLM2-135M-Instruct on a 2-core CPU. PowerFlow trained at each alpha with 12 steps of 4 x 8 "
             "completions at lr 5e-4 on the task's training prompts (no answers), seeds 0, 1, 2; evaluated with "
             "k = 4 samples per held-out problem, at most 48 tokens. 'predicted' is `powerflow preview` on the same "
             "held-out problems (32 base samples per problem, importance-weighted to p_base^alpha). ± is the "
             "standard error of the paired per-problem differences (trained policies averaged over seeds first); "
             "'seed sd' is the spread of avg@k over seeds. Command: `python examples/alpha_choice.py`.", ""]
    for task, tab in result["tables"].items():
        lines += [f"## {task}", "",
                  "| alpha | avg@k | predicted avg@1 | pass@k | maj@k | predicted maj@k | seed sd | vs best alpha | "
                  "base at T = 1/alpha | trained vs it | preview ESS |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for alpha, row in tab["rows"].items():
            pred = row.get("predicted", {})

            def guess(key: str, pred=pred) -> str:
                return pct(pred[key]) if key in pred else ""

            ess = f"{pred['ess']:.1f}" if "ess" in pred else ""
            lines.append(f"| {alpha} | {pct(row['avg_at_k'])} | {guess('avg_at_1')} | {pct(row['pass_at_k'])} | "
                         f"{pct(row['maj_at_k'])} | {guess('maj_at_k')} | {100 * row['avg_at_k_seed_std']:.1f} | "
                         f"{change(row['vs best'])} | {pct(row['tempered']['avg_at_k'])} | "
                         f"{change(row['vs tempered'])} | {ess} |")
        if "auto" in tab:
            auto = tab["auto"]
            chose = ", ".join(f"{a:g}" for a in auto["alphas"])
            lines.append(f"| auto ({chose}) | {pct(auto['avg_at_k'])} |  | {pct(auto['pass_at_k'])} | "
                         f"{pct(auto['maj_at_k'])} |  | {100 * auto['avg_at_k_seed_std']:.1f} | "
                         f"{change(auto['vs best'])} |  |  |  |")
            vs = auto["vs best"]
            within = vs["mean"] + 2 * vs["stderr"] >= 0
            lines += ["", f"`--alpha auto` ({auto['rule']}, on 24 of the task's training prompts, "
                          f"{auto['preview_seconds']:.0f} s) chose alpha {chose} for seeds "
                          f"{', '.join(map(str, SEEDS))}. Its avg@k is {change(vs)} points from the best fixed alpha "
                          f"({tab['best']}): " + ("within two paired standard errors." if within else
                                                  "worse by more than two paired standard errors.")
                      + (" Training at the chosen alpha is the fixed-alpha run: the first step's loss is the same."
                         if auto["same_first_loss"] else " (The first step's loss differs from the fixed run's.)")]
        lines.append("")
    return "\n".join(lines)


def first_loss(run: str) -> float:
    return json.loads((Path(run) / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def change(paired_change: dict) -> str:
    return f"{100 * paired_change['mean']:+.1f} ± {100 * paired_change['stderr']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2, converted once)")
    parser.add_argument("--sweep", action="store_true", help="only the training sweep")
    parser.add_argument("--previews", action="store_true", help="only the previews and --alpha auto's choices")
    parser.add_argument("--report", action="store_true", help="re-render from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads((out / "alpha_choice.json").read_text())
    else:
        study = Study(out, args.model or str(demo.demo_model_dir()), quick=False)
        if args.previews:  # alone, e.g. beside a running --sweep
            previews(study)
            return
        swept = sweep(study)
        previewed = {} if args.sweep else previews(study)
        result = {"tables": tables(swept, previewed), "alphas": ALPHAS, "preview": PREVIEW}
        (out / "alpha_choice.json").write_text(json.dumps(result, indent=1) + "\n")
        log("done")
    text = report(result)
    (out / "alpha_choice.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
