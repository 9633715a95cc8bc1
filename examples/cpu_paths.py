"""Which path is fastest on the CPU? The demo's training step under each --quant and --sampler, side by side.

    python examples/cpu_paths.py                 # 4 paths x 5 steps of the demo recipe on SmolLM2-135M: ~12 min
    python examples/cpu_paths.py --steps 3 --model DIR --out DIR

Each path (NF4 or full precision; Hugging Face `generate` or our static-cache
sampler) trains the demo's recipe (`powerflow_lite.demo.DEMOS["reasoning"]`,
no evaluation, --lr 1e-12) for --steps steps in a process of its own, one after another,
so that each path's peak RSS is its own and no two torch processes share the
cores (on 2 cores they slow each other down about tenfold). Reported per path:
the median over steps 2..N (step 1 pays one-time costs) of the seconds per
step and its sample / score / update split, sampled tokens per second, the
highest peak RSS of a step (the metrics' `peak_rss_gib`: loading the model
peaks lower, about 1.3 GiB), and each figure's ratio to the NF4 + `generate` path, the
one a GPU run takes. The learning rate is 1e-12 so that the policy stays the
base model on every path: at the demo's lr the paths' policies drift apart
(their numerics differ) and within 4 steps one path wrote half as many tokens
per completion as another, which timed the lengths rather than the paths. The
update still runs its forward and backward in full.

Written to OUT (default examples/results): cpu_paths.md and cpu_paths.json, with the machine (another CPU gives
other timings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = (("nf4", "hf"), ("nf4", "static"), ("none", "hf"), ("none", "static"))
REFERENCE = ("nf4", "hf")


def frozen_demo(model: str, quant: str, sampler: str, steps: int, out: Path) -> list[str]:
    """`powerflow` arguments for the demo's recipe without its evaluation at lr 1e-12: the policy stays the base,
    so every run samples from one distribution, at the base's lengths."""
    return ["train", "--demo", "--model", model, "--quant", quant, "--sampler", sampler, "--max-steps", str(steps),
            "--eval-data", "", "--eval-every", "0", "--save-every", "0", "--show-every", "0", "--output", str(out),
            "--overwrite", "--lr", "1e-12"]


def run_path(model: str, quant: str, sampler: str, steps: int, out: Path) -> dict:
    """One training run in a child process; -> its metrics rows and the highest of its steps' peak RSS."""
    command = [sys.executable, "-m", "powerflow_lite", *frozen_demo(model, quant, sampler, steps, out)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{quant}/{sampler} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # each row's peak_rss_gib is the process's peak during that step (VmHWM, reset as the step starts)
    return {"rows": rows, "peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
            "wall_s": time.perf_counter() - started}


def demo_model() -> str:
    """The demo's converted SmolLM2 directory, found (or converted) in a child process: this one stays free of
    torch, so nothing of it is counted in the children."""
    code = "from powerflow_lite import demo; print(demo.demo_model_dir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the demo model is not available: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


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
    where = report.get("machine")  # not recorded before
    measured = f" Measured on {where['cpu']} ({where['cores']} cores, torch {where['torch']})." if where else ""
    lines = [f"Demo recipe at lr 1e-12 on {report['model_name']}, {report['steps']} steps per path, medians of steps 2-"
             f"{report['steps']}; ratios against NF4 + `generate`.{measured}", "",
             "| --quant / --sampler | s per step (x faster) | sample / score / update s | sampled tok/s (x) "
             "| mean length | peak RSS in a step, GiB (x) |",
             "|---|---|---|---|---|---|"]
    for name, p in report["paths"].items():
        faster = reference["seconds_per_step"] / p["seconds_per_step"]
        rate = p["sample_tokens_per_s"] / reference["sample_tokens_per_s"]
        memory = p["peak_rss_gib"] / reference["peak_rss_gib"]
        lines.append(f"| {name} | {p['seconds_per_step']:.1f} ({faster:.2f}x) "
                     f"| {p['time_sample']:.1f} / {p['time_score']:.1f} / {p['time_update']:.1f} "
                     f"| {p['sample_tokens_per_s']:.1f} ({rate:.2f}x) "
                     f"| {p['length_mean']:.1f} | {p['peak_rss_gib']:.2f} ({memory:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per path (the first is not counted)")
    parser.add_argument("--out", default="examples/results", help="where cpu_paths.md and cpu_paths.json go")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not counted")
    from power_exact import machine  # where it ran

    model = args.model or demo_model()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model_name": Path(model).name, "steps": args.steps, "machine": machine(), "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for quant, sampler in PATHS:
            print(f"{quant}/{sampler}: {args.steps} steps", file=sys.stderr, flush=True)
            result = run_path(model, quant, sampler, args.steps, Path(tmp) / f"{quant}-{sampler}")
            report["paths"][f"{quant}/{sampler}"] = {**summarise(result["rows"]),
                                                     "peak_rss_gib": result["peak_rss_gib"],
                                                     "wall_s": result["wall_s"], "rows": result["rows"]}
    (out / "cpu_paths.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (out / "cpu_paths.md").write_text(table)
    print(table)
    print(f"wrote {out / 'cpu_paths.md'} and {out / 'cpu_paths.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
