"""Which path is fastest on the CPU? The demo's training step under each --quant and --sampler, side by side.

    python examples/cpu_paths.py                 # 4 paths x 4 steps of the demo recipe on SmolLM2-135M: ~7 min
    python examples/cpu_paths.py --steps 3 --model DIR --out DIR

Each path (NF4 or full precision; Hugging Face `generate` or our static-cache
sampler) trains the demo's recipe (`powerflow_lite.demo.DEMOS["reasoning"]`,
no evaluation) for --steps steps in a process of its own, one after another,
so that each path's peak RSS is its own and no two torch processes share the
cores (on 2 cores they slow each other down about tenfold). Reported per path:
the median over steps 2..N (step 1 pays one-time costs) of the seconds per
step and its sample / score / update split, sampled tokens per second, the
process's peak RSS, and each figure's ratio to the NF4 + `generate` path, the
one a GPU run takes. The paths draw different completions (the numerics
differ), so tokens per second is the fair sampling figure; seconds per step
also depend on how long the completions were.

Written to OUT (default examples/results): cpu_paths.md and cpu_paths.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = (("nf4", "hf"), ("nf4", "static"), ("none", "hf"), ("none", "static"))
REFERENCE = ("nf4", "hf")


def run_path(model: str, quant: str, sampler: str, steps: int, out: Path) -> dict:
    """One training run in a child process; -> its metrics rows and its peak RSS (from wait4, this child's own)."""
    command = [sys.executable, "-m", "powerflow_lite", "train", "--demo", "--model", model, "--quant", quant,
               "--sampler", sampler, "--max-steps", str(steps), "--eval-data", "", "--eval-every", "0",
               "--save-every", "0", "--show-every", "0", "--output", str(out), "--overwrite"]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a full pipe would block the child
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            errors.seek(0)
            raise SystemExit(f"{quant}/{sampler} failed (exit {code}): {errors.read().strip()[-500:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"rows": rows, "peak_rss_gib": usage.ru_maxrss / 2**20, "wall_s": time.perf_counter() - started}


def summarise(rows: list[dict]) -> dict:
    """Medians over the steps after the first."""
    later = rows[1:] or rows
    figures = {key: statistics.median(r[key] for r in later)
               for key in ("time_sample", "time_score", "time_update", "sample_tokens_per_s", "length_mean")}
    figures["seconds_per_step"] = statistics.median(r["time_sample"] + r["time_score"] + r["time_update"]
                                                    for r in later)
    return figures


def markdown(report: dict) -> str:
    reference = report["paths"][f"{REFERENCE[0]}/{REFERENCE[1]}"]
    lines = [f"Demo recipe on {report['model_name']}, {report['steps']} steps per path, medians of steps 2-"
             f"{report['steps']}; ratios against NF4 + `generate`.", "",
             "| --quant / --sampler | s per step (x faster) | sample / score / update s | sampled tok/s (x) "
             "| mean length | peak RSS GiB (x) |",
             "|---|---|---|---|---|---|"]
    for name, p in report["paths"].items():
        lines.append(f"| {name} | {p['seconds_per_step']:.1f} ({reference['seconds_per_step'] / p['seconds_per_step']:.2f}x) "
                     f"| {p['time_sample']:.1f} / {p['time_score']:.1f} / {p['time_update']:.1f} "
                     f"| {p['sample_tokens_per_s']:.1f} ({p['sample_tokens_per_s'] / reference['sample_tokens_per_s']:.2f}x) "
                     f"| {p['length_mean']:.1f} | {p['peak_rss_gib']:.2f} ({p['peak_rss_gib'] / reference['peak_rss_gib']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per path (the first is not counted)")
    parser.add_argument("--out", default="examples/results", help="where cpu_paths.md and cpu_paths.json go")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not counted")
    from powerflow_lite import demo

    model = args.model or str(demo.demo_model_dir())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "model_name": Path(model).name, "steps": args.steps, "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for quant, sampler in PATHS:
            print(f"{quant}/{sampler}: {args.steps} steps", file=sys.stderr, flush=True)
            result = run_path(model, quant, sampler, args.steps, Path(tmp) / f"{quant}-{sampler}")
            report["paths"][f"{quant}/{sampler}"] = {**summarise(result["rows"]), "peak_rss_gib": result["peak_rss_gib"],
                                                     "wall_s": result["wall_s"], "rows": result["rows"]}
    (out / "cpu_paths.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (out / "cpu_paths.md").write_text(table)
    print(table)
    print(f"wrote {out / 'cpu_paths.md'} and {out / 'cpu_paths.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
