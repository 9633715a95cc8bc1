"""The demos as a user runs them: the reasoning demo at seeds 0, 1, 2, one creative demo, and the evaluations
the docs show, kept as committed results.

    python examples/demo_seeds.py             # about 20 minutes on 2 CPU cores, resumable by part
    python examples/demo_seeds.py --report    # re-render the table from the JSON

Each seed runs the demo as a user does (its recipe, its 24 held-out problems, 4 samples each) and keeps what
the demo itself writes: OUT/demo_seeds.parts/seed-S/evals/before_after.json, whose figures are copied per seed
into the results file (every seed's raw values, not only their range): avg@4, pass@4 and maj@4 before
training, of the base at temperature 1/alpha and after the last step, and the gain over each with its standard
error over problems (paired per-problem differences).

Writes OUT (default examples/results): demo_seeds.md and demo_seeds.json, with the machine they ran on (the
same seed gives other figures on another CPU) and each run's wall time; OUT/demo_run/: seed 0's run as the README
shows it (what it printed, its metrics.jsonl, before_after.json and run.json with its time), and
OUT/demo_training.png, its curves; OUT/demo_run/eval/: `powerflow eval` of seed 0's adapter on all 40 held-out
problems beside the base, and of the base on the MATH-500 sample; OUT/demo_creative_run/: one
`powerflow train --demo-creative`, kept the same way; OUT/demo_conversion.json: the first run's one-off
conversion of the packaged GGUF file into a safetensors directory, timed in a cache of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_exact import machine  # noqa: E402 - where it ran

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
KEYS = ("avg_at_k", "pass_at_k", "maj_at_k")


def powerflow(parts: Path, name: str, *args: str) -> float:
    """`powerflow ARGS` as a user runs it, once: what it printed goes to parts/stdout-NAME.txt and its wall time to
    parts/seconds-NAME.txt; a resumed study reads them again. Returns the seconds."""
    seconds = parts / f"seconds-{name}.txt"
    if not seconds.is_file():
        start = time.monotonic()
        printed = subprocess.run([sys.executable, "-m", "powerflow_lite", *args], check=True, stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "COLUMNS": "120"}).stdout  # a wide terminal's table
        (parts / f"stdout-{name}.txt").write_text(printed)
        seconds.write_text(f"{time.monotonic() - start:.1f}\n")
    return float(seconds.read_text())


def run_seed(parts: Path, seed: int) -> dict:
    """One demo at `seed` (run once; its before_after.json is read again on a resumed study)."""
    output = parts / f"seed-{seed}"
    seconds = powerflow(parts, str(seed), "train", "--demo", "--seed", str(seed), "--output", str(output),
                        "--overwrite")
    found = json.loads((output / "evals" / "before_after.json").read_text())
    before, tempered, after = found["results"].values()  # before, base at 1/alpha, after the last step
    return {"seed": seed, "before": {k: before[k] for k in KEYS}, "tempered": {k: tempered[k] for k in KEYS},
            "after": {k: after[k] for k in KEYS}, "gain": found["change"],
            "gain_over_tempered": found["change_vs"]["change"],
            "tempered_name": found["change_vs"]["name"], "steps": found["steps"], "prompts": found["prompts"],
            "k": found["k"], "seconds": seconds}


def as_shown(parts: Path, name: str, run: str, shown_as: str) -> str:
    """What `powerflow` printed for part `name`, with its paths as a user's run shows them."""
    printed = (parts / f"stdout-{name}.txt").read_text()
    for path, shown in ((str(parts / run), shown_as), (str(ROOT) + "/", ""), (str(Path.home()), "~")):
        printed = printed.replace(path, shown)
    return printed


def keep_run(parts: Path, name: str, where: Path, command: str, measured_on: dict) -> None:
    """One demo run's own files, committed: what it printed, its metrics.jsonl and before_after.json, and the
    command, its wall time and the machine. The docs' transcripts and healthy-run figures are rendered from them
    (render_docs.py)."""
    where.mkdir(parents=True, exist_ok=True)
    run = name if name == "creative" else f"seed-{name}"
    (where / "stdout.txt").write_text(as_shown(parts, name, run, "runs/demo"))
    for file in ("metrics.jsonl", "evals/before_after.json"):
        shutil.copyfile(parts / run / file, where / Path(file).name)
    (where / "run.json").write_text(json.dumps({"command": command, "seconds": float((parts / f"seconds-{name}.txt")
                                                                                     .read_text()),
                                                "machine": measured_on}, indent=1) + "\n")


EVALS = {  # part -> the `powerflow eval` arguments the docs show (seed 0's adapter, then the base on MATH-500)
    "eval-arithmetic": ("--run", "{parts}/seed-0", "--data", "powerflow_lite/data/arithmetic_eval.jsonl", "-k", "4",
                        "--compare-base"),
    "eval-math": ("--model", "{model}", "--data", "examples/data/math500-sample.jsonl", "-k", "4",
                  "--max-new-tokens", "192", "--quant", "nf4"),
}


def keep_evals(parts: Path, where: Path, measured_on: dict) -> None:
    """The evaluations of EVALS, each kept as printed with its summary.json and wall time."""
    from powerflow_lite.demo import demo_model_dir

    where.mkdir(parents=True, exist_ok=True)
    model = str(demo_model_dir())
    found = {"machine": measured_on}
    for name, args in EVALS.items():
        args = [a.format(parts=parts, model=model) for a in args]
        seconds = powerflow(parts, name, "eval", *args, "--output", str(parts / name), "--overwrite")
        shown = [a.replace(str(parts / "seed-0"), "runs/demo").replace(model, "<demo model>")
                 for a in args]
        found[name] = {"command": "powerflow eval " + " ".join(shown), "seconds": seconds,
                       "summary": json.loads((parts / name / "summary.json").read_text())}
        (where / f"{name}.txt").write_text(as_shown(parts, name, name, "runs/eval").replace(
            model, "<demo model>"))
    (where / "evals.json").write_text(json.dumps(found, indent=1) + "\n")


def time_conversion(out: Path, measured_on: dict) -> None:
    """The first demo's one-off conversion of the packaged GGUF file, timed in an empty cache (a process of its
    own, imports included, as a first `powerflow train --demo` pays it)."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "from powerflow_lite.demo import demo_model_dir; demo_model_dir()"],
                       check=True, env={**os.environ, "POWERFLOW_CACHE": cache})
        seconds = time.monotonic() - start
    (out / "demo_conversion.json").write_text(json.dumps({"seconds": seconds, "machine": measured_on}, indent=1)
                                              + "\n")


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
        keep_run(parts, str(SEEDS[0]), out / "demo_run", f"powerflow train --demo --seed {SEEDS[0]}",
                 result["machine"])
        from powerflow_lite.plot import plot_run  # the demo's curves, from the same run

        plot_run(str(out / "demo_run"), str(out / "demo_training.png"), overwrite=True)
        keep_evals(parts, out / "demo_run" / "eval", result["machine"])
        powerflow(parts, "creative", "train", "--demo-creative", "--output", str(parts / "creative"), "--overwrite")
        keep_run(parts, "creative", out / "demo_creative_run", "powerflow train --demo-creative", result["machine"])
        time_conversion(out, result["machine"])
    text = report(result)
    (out / "demo_seeds.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
