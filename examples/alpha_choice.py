"""Which alpha? `powerflow preview`'s predictions and `--alpha auto`'s choice against a fixed-alpha sweep.

    python examples/alpha_choice.py              # the whole study: about 2 hours on 2 CPU cores, resumable by part
    python examples/alpha_choice.py --sweep      # only the training sweep (no preview)
    python examples/alpha_choice.py --previews   # only the previews and auto's choices (beside a --sweep)
    python examples/alpha_choice.py --report     # re-render the tables from the JSON
    python examples/alpha_choice.py --reuse-sweep  # the fixed-alpha rows from the JSON; runs the previews, auto's
                                                   # choices and only the runs auto chose

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
    """What `powerflow train --alpha auto` chooses before step 1 with the sweep's recipe and this seed (its
    training from there is the fixed-alpha run at the alpha it chose)."""
    from powerflow_lite.config import TrainConfig
    from powerflow_lite.setup import setup

    recipe, _, settings = RECIPES[RECIPE]
    values = demo.demo_defaults("reasoning", need_model=False)
    values.update(settings)
    output = study.work / f"auto-{task}-seed{seed}".replace(" ", "_")
    values.update(model=study.model, prompts=str(study.training_prompts((task,))), alpha="auto", seed=seed,
                  output=str(output), overwrite=True, save_every=0, eval_data="", eval_every=0, show_every=0,
                  max_steps=settings["max_steps"])
    run = setup(TrainConfig(**values))
    choice = run.info.alpha_choice
    return {"alpha": choice["alpha"], "rule": choice["rule"], "why": choice["why"], "table": choice["table"]}


def tables(swept: dict, previewed: dict, study: Study | None = None) -> dict:
    out = {}
    for task, by_alpha in swept.items():
        rows = {}
        for alpha, found in by_alpha.items():
            evals = found["evals"]
            row = {key: mean([mean(s[f"{key}_per_prompt"]) for s in evals]) for key in KEYS}
            row["per_problem"] = seed_mean(evals)
            row["avg_at_k_per_seed"] = [s["avg_at_k"] for s in evals]
            row["avg_at_k_seed_std"] = std([s["avg_at_k"] for s in evals])
            row["length_mean"] = mean([s["length_mean"] for s in evals])
            row["tempered"] = {key: found["tempered"][key] for key in (*KEYS, "length_mean")}
            row["vs tempered"] = paired(row["per_problem"]["avg_at_k"], found["tempered"]["avg_at_k_per_prompt"])
            row["training_seconds"] = mean([r["training_seconds"] for r in found["runs"]])
            rows[alpha] = row
        out[task] = with_previews(task, rows, previewed,
                                  lambda alpha, seed, by_alpha=by_alpha: by_alpha[alpha]["evals"][SEEDS.index(seed)])
    return out


def reused_tables(saved: dict, previewed: dict, study: Study) -> dict:
    """The fixed-alpha rows of a finished sweep (OUT/alpha_choice.json) with the previews beside them. Auto's row
    needs each seed's evaluation of the alpha it chose: where every seed chose the same alpha it is that alpha's
    row; otherwise the chosen runs are trained and evaluated again (the sweep's runs, the same seeds)."""
    out = {}
    for task, tab in saved.items():
        rows = {alpha: {k: v for k, v in row.items() if k not in ("predicted", "vs best")}
                for alpha, row in tab["rows"].items()}
        out[task] = with_previews(task, rows, previewed, lambda alpha, seed, task=task: run_again(study, task,
                                                                                                 alpha, seed))
    return out


def run_again(study: Study, task: str, alpha: str, seed: int) -> dict:
    recipe, _, settings = RECIPES[RECIPE]
    run = study.train(recipe, (task,), settings, seed, alpha=float(alpha))
    return study.evaluate(f"powerflow-alpha{alpha}-{recipe}-seed{seed}", task, adapter=run["adapter"],
                          alpha=float(alpha))


def with_previews(task: str, rows: dict, previewed: dict, evaluation) -> dict:
    """rows with their 'vs best' and, when previewed, the held-out predictions and auto's row; evaluation(alpha,
    seed) gives that run's held-out summary."""
    best = max(rows, key=lambda a: rows[a]["avg_at_k"])
    for alpha, row in rows.items():
        row["vs best"] = paired(row["per_problem"]["avg_at_k"], rows[best]["per_problem"]["avg_at_k"])
        if task in previewed:
            row["predicted"] = previewed[task]["held_out"]["alphas"][alpha]
    table = {"rows": rows, "best": best}
    if task in previewed:
        choices = previewed[task]["auto"]
        chosen = [f"{c['alpha']:g}" for c in choices]
        if len(set(chosen)) == 1:  # every seed chose one alpha: auto's runs are that row's runs
            same = rows[chosen[0]]
            per_problem, per_seed = same["per_problem"], same.get("avg_at_k_per_seed")
            seed_sd = same["avg_at_k_seed_std"]
        else:
            evals = [evaluation(alpha, seed) for alpha, seed in zip(chosen, SEEDS)]
            per_problem, per_seed = seed_mean(evals), [s["avg_at_k"] for s in evals]
            seed_sd = std(per_seed)
        table["auto"] = auto_row(choices, per_problem, per_seed, seed_sd, rows[best])
    return table


def seed_mean(evals: list[dict]) -> dict:
    """key -> per problem, the mean over seeds."""
    return {key: [mean(list(v)) for v in zip(*(s[f"{key}_per_prompt"] for s in evals))] for key in KEYS}


def auto_row(choices: list[dict], per_problem: dict, per_seed: list[float] | None, seed_sd: float,
             best: dict) -> dict:
    """--alpha auto's row: seed s trained at the alpha it chose for seed s (the fixed-alpha run of that alpha and
    seed), averaged over seeds per problem, and paired with the best fixed alpha."""
    row = {"alphas": [c["alpha"] for c in choices], "why": [c["why"] for c in choices],
           "rule": choices[0]["rule"],
           "training_modal_share": [{a: r["modal_share"] for a, r in c["table"]["alphas"].items()} for c in choices],
           "training_ess": [{a: r["ess"] for a, r in c["table"]["alphas"].items()} for c in choices],
           "preview_seconds": mean([c["table"]["seconds"] for c in choices]),
           "avg_at_k_per_seed": per_seed, "avg_at_k_seed_std": seed_sd}
    for key in KEYS:
        row[key] = mean(per_problem[key])
    row["vs best"] = paired(per_problem["avg_at_k"], best["per_problem"]["avg_at_k"])
    return row


def report(result: dict) -> str:
    lines = ["# Which alpha? The preview's predictions and `--alpha auto` against a fixed-alpha sweep", "",
             "SmolLM2-135M-Instruct on a 2-core CPU. PowerFlow trained at each alpha with 12 steps of 4 x 8 "
             "completions at lr 5e-4 on the task's training prompts (no answers), seeds 0, 1, 2; evaluated with "
             "k = 4 samples per held-out problem, at most 48 tokens. 'predicted' is `powerflow preview` on the same "
             "held-out problems (32 base samples per problem, importance-weighted to p_base^alpha). ± is the "
             "standard error of the paired per-problem differences (trained policies averaged over seeds first); "
             "'seed sd' is the spread of avg@k over seeds. Auto's row is the sweep's rows at the alphas it chose, each "
             "weighted by the seeds that chose it. Command: `python examples/alpha_choice.py`.", ""]
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
            weighted = {key: mean(chosen_rows(tab, key)) for key in KEYS}
            vs = paired(chosen_rows(tab, "avg_at_k"), tab["rows"][tab["best"]]["per_problem"]["avg_at_k"])
            lines.append(f"| auto ({chose}) | {pct(weighted['avg_at_k'])} |  | {pct(weighted['pass_at_k'])} | "
                         f"{pct(weighted['maj_at_k'])} |  |  | {change(vs)} |  |  |  |")
            lines += ["", auto_verdict(tab, chose)]
        lines.append("")
    return "\n".join(lines)


def chosen_rows(tab: dict, key: str) -> list[float]:
    """Per problem, the sweep's figure at the alphas auto chose, each weighted by the seeds that chose it."""
    chosen = [f"{a:g}" for a in tab["auto"]["alphas"]]
    return [mean(values) for values in zip(*(tab["rows"][a]["per_problem"][key] for a in chosen))]


def auto_verdict(tab: dict, chose: str) -> str:
    """What auto chose and how it compares with the best fixed alpha. The comparison reads the sweep's own rows,
    each alpha weighted by the seeds that chose it, so that auto and the fixed alphas are the same training runs;
    where seeds chose different alphas the chosen runs were also trained again, and that row is reported beside."""
    auto, rows, best = tab["auto"], tab["rows"], tab["best"]
    chosen = [f"{a:g}" for a in auto["alphas"]]
    weighted = chosen_rows(tab, "avg_at_k")
    vs = paired(weighted, rows[best]["per_problem"]["avg_at_k"])
    within = vs["mean"] + 2 * vs["stderr"] >= 0
    text = (f"`--alpha auto` ({auto['rule']}, on 24 of the task's training prompts, {auto['preview_seconds']:.0f} s) "
            f"chose alpha {chose} for seeds {', '.join(map(str, SEEDS))}. Read from the sweep's rows (each alpha "
            f"weighted by the seeds that chose it), auto's avg@k is {pct(mean(weighted))}, {change(vs)} points from "
            f"the best fixed alpha ({best}): "
            + ("within two paired standard errors." if within else "worse by more than two paired standard errors."))
    if len(set(chosen)) > 1:
        runs = ", ".join(f"{pct(v)} (alpha {a}, seed {s})" for v, a, s in zip(auto["avg_at_k_per_seed"], chosen, SEEDS))
        text += (f" The chosen runs, trained again: {runs}, mean {pct(auto['avg_at_k'])}. Trained with later "
                 f"code, these are not bit-for-bit the sweep's runs (12 sampled steps amplify any rounding "
                 f"difference), so the gap between them and the sweep's rows at the same alpha is run-to-run "
                 f"noise, as large as the seed sd.")
    return text


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
    parser.add_argument("--reuse-sweep", action="store_true",
                        help="the fixed-alpha rows from OUT/alpha_choice.json; run the previews and auto's choices")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads((out / "alpha_choice.json").read_text())
    else:
        study = Study(out, args.model or str(demo.demo_model_dir()), quick=False)
        if args.previews:  # alone, e.g. beside a running --sweep
            previews(study)
            return
        if args.reuse_sweep:
            saved = json.loads((out / "alpha_choice.json").read_text())
            result = {"tables": reused_tables(saved["tables"], previews(study), study)}
        else:
            swept = sweep(study)
            result = {"tables": tables(swept, {} if args.sweep else previews(study))}
        result.update(alphas=ALPHAS, preview=PREVIEW)
        (out / "alpha_choice.json").write_text(json.dumps(result, indent=1) + "\n")
        log("done")
    text = report(result)
    (out / "alpha_choice.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
