"""How much the reasoning demo's result varies with the seed: `powerflow train --demo --seed S` for S = 0, 1, 2.

    python examples/demo_seeds.py             # three demos, about 10 minutes on 2 CPU cores, resumable by seed
    python examples/demo_seeds.py --report    # re-render the table from the JSON

Each seed runs the demo as a user does (its recipe, its 24 held-out problems, 4 samples each) and keeps what
the demo itself writes: OUT/demo_seeds.parts/seed-S/evals/before_after.json, whose figures are copied per seed
into the results file (every seed's raw values, not only their range): avg@4, pass@4 and maj@4 before
training, of the base at temperature 1/alpha and after the last step, and the gain over each with its standard
error over problems (paired per-problem differences).

Writes OUT (default examples/results): demo_seeds.md and demo_seeds.json, with the machine they ran on (the
same seed gives other figures on another CPU), and OUT/demo_run/: seed 0's run as the README shows it (what it
printed, its metrics.jsonl and before_after.json) and OUT/demo_training.png, its curves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_exact import machine  # noqa: E402 - where it ran

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
KEYS = ("avg_at_k", "pass_at_k", "maj_at_k")


def run_seed(parts: Path, seed: int) -> dict:
    """One demo at `seed` (run once; its before_after.json is read again on a resumed study)."""
    output = parts / f"seed-{seed}"
    figures = output / "evals" / "before_after.json"
    if not figures.is_file() or not (parts / f"stdout-{seed}.txt").is_file():
        printed = subprocess.run([sys.executable, "-m", "powerflow_lite", "train", "--demo", "--seed", str(seed),
                                  "--output", str(output), "--overwrite"], check=True, stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "COLUMNS": "120"}).stdout  # a wide terminal's table
        (parts / f"stdout-{seed}.txt").write_text(printed)
    found = json.loads(figures.read_text())
    before, tempered, after = found["results"].values()  # before, base at 1/alpha, after the last step
    return {"seed": seed, "before": {k: before[k] for k in KEYS}, "tempered": {k: tempered[k] for k in KEYS},
            "after": {k: after[k] for k in KEYS}, "gain": found["change"],
            "gain_over_tempered": found["change_vs"]["change"],
            "tempered_name": found["change_vs"]["name"], "steps": found["steps"], "prompts": found["prompts"],
            "k": found["k"]}


def keep_run(parts: Path, seed: int, where: Path, measured_on: dict) -> None:
    """One demo run's own files, committed: what it printed, its metrics.jsonl and before_after.json, and the
    machine. The README's transcript and its healthy-run figures are rendered from them (render_docs.py)."""
    where.mkdir(parents=True, exist_ok=True)
    printed = (parts / f"stdout-{seed}.txt").read_text()  # paths as a user's run shows them
    for path, shown in ((str(parts / f"seed-{seed}"), "runs/demo"), (str(ROOT) + "/", ""), (str(Path.home()), "~")):
        printed = printed.replace(path, shown)
    (where / "stdout.txt").write_text(printed)
    for name in ("metrics.jsonl", "evals/before_after.json"):
        shutil.copyfile(parts / f"seed-{seed}" / name, where / Path(name).name)
    (where / "run.json").write_text(json.dumps({"command": f"powerflow train --demo --seed {seed}",
                                                "machine": measured_on}, indent=1) + "\n")
    from powerflow_lite.plot import plot_run  # the demo's curves, from the same run

    plot_run(str(where), str(where.parent / "demo_training.png"), overwrite=True)


def report(result: dict) -> str:
    runs = result["seeds"]
    where = result["machine"]
    lines = ["# The reasoning demo over seeds", "",
             f"`powerflow train --demo --seed S` for S = {', '.join(str(r['seed']) for r in runs)}: "
             f"{runs[0]['prompts']} held-out problems, {runs[0]['k']} samples each, after {runs[0]['steps']} steps. "
             "Gains are paired per-problem differences ± their standard error over problems. Measured on "
             f"{where['cpu']} ({where['cores']} cores, torch {where['torch']}). Command: "
             "`python examples/demo_seeds.py`.", "",
             "| seed | avg@4 before | base at 1/alpha | avg@4 after | gain | gain over 1/alpha | pass@4 after | "
             "maj@4 after |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        gain, over = r["gain"]["avg_at_k"], r["gain_over_tempered"]["avg_at_k"]
        lines.append(f"| {r['seed']} | {100 * r['before']['avg_at_k']:.1f}% | {100 * r['tempered']['avg_at_k']:.1f}% | "
                     f"{100 * r['after']['avg_at_k']:.1f}% | {100 * gain['mean']:+.1f} ± {100 * gain['stderr']:.1f} | "
                     f"{100 * over['mean']:+.1f} ± {100 * over['stderr']:.1f} | {100 * r['after']['pass_at_k']:.1f}% | "
                     f"{100 * r['after']['maj_at_k']:.1f}% |")
    after = [100 * r["after"]["avg_at_k"] for r in runs]
    over = [100 * r["gain_over_tempered"]["avg_at_k"]["mean"] for r in runs]
    lines += ["", f"avg@4 after training ranges over {min(after):.1f}-{max(after):.1f}%, and its gain over the base "
                  f"at temperature 1/alpha over {min(over):+.1f} to {max(over):+.1f} points.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--report", action="store_true", help="re-render from the JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        result = json.loads((out / "demo_seeds.json").read_text())
    else:
        parts = out / "demo_seeds.parts"
        parts.mkdir(parents=True, exist_ok=True)
        result = {"seeds": [run_seed(parts, seed) for seed in SEEDS], "machine": machine()}
        (out / "demo_seeds.json").write_text(json.dumps(result, indent=1) + "\n")
        keep_run(parts, SEEDS[0], out / "demo_run", result["machine"])
    text = report(result)
    (out / "demo_seeds.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
