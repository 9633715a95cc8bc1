"""How long the CLI takes to answer when it loads no model: --help, a command's --help, and bad flags.

    python examples/cli_startup.py                        # 5 runs of each command: about a minute
    python examples/cli_startup.py --baseline 4a94384     # and the same commands of an earlier commit, side by side

Each command runs as a new process (`python -m powerflow_lite ...`, the tree under test on PYTHONPATH), one
at a time, --runs times; reported: the median wall-clock seconds, and with --baseline the earlier commit's
median (its tree exported with `git archive`) and the ratio. For scale, `python -c "import torch"` is timed the
same way: what every command paid before the CLI imported the heavy libraries only in the commands that load a
model. On 2 cores another busy process slows every figure: run it on an idle machine.

Written to OUT (default examples/results): cli_startup.md and cli_startup.json, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "powerflow --help": ["--help"],
    "powerflow train --help": ["train", "--help"],
    "powerflow train --lr -1 (a bad value)": ["train", "--model", "m", "--prompts", "p.jsonl", "--alpha", "2",
                                              "--lr", "-1"],
    "powerflow train --no-such-flag": ["train", "--no-such-flag"],
}


def seconds(command: list[str], tree: Path | None, runs: int) -> list[float]:
    """Wall-clock seconds of `runs` runs of `command` (a python -m powerflow_lite command when `tree` is given)."""
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else dict(os.environ)
    argv = [sys.executable, "-m", "powerflow_lite", *command] if tree else [sys.executable, *command]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def export(revision: str, into: Path) -> Path:
    """The package of an earlier commit, as files (`git archive`), to run beside the working tree."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "powerflow_lite"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    torch = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                           text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", default="", help="An earlier commit to time beside the working tree.")
    parser.add_argument("--out", default=str(ROOT / "examples" / "results"))
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        baseline = export(args.baseline, Path(scratch)) if args.baseline else None
        for name, command in COMMANDS.items():
            row = {"seconds": seconds(command, ROOT, args.runs)}
            if baseline:
                row["baseline_seconds"] = seconds(command, baseline, args.runs)
            rows[name] = row
            print(name, {k: round(statistics.median(v), 2) for k, v in row.items()}, flush=True)
    floor = seconds(["-c", "import torch"], None, args.runs)
    report = {"runs": args.runs, "baseline": args.baseline, "machine": machine(), "commands": rows,
              "import_torch_seconds": floor,
              "command": "python examples/cli_startup.py" + (f" --baseline {args.baseline}" if args.baseline else "")}
    out = Path(args.out)
    (out / "cli_startup.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "cli_startup.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# How long the CLI takes to answer without loading a model",
             "",
             f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}. Median wall-clock seconds of "
             f"{report['runs']} runs of each command, each a new process (`python -m powerflow_lite ...`). "
             f"Command: `{report['command']}`.",
             ""]
    baseline = report["baseline"]
    header = "| command | seconds |" + (f" at {baseline} | ratio |" if baseline else "")
    lines += [header, "|---|---:|" + ("---:|---:|" if baseline else "")]
    for name, row in report["commands"].items():
        now = statistics.median(row["seconds"])
        cells = f"| {name} | {now:.2f} |"
        if baseline:
            before = statistics.median(row["baseline_seconds"])
            cells += f" {before:.2f} | {before / now:.1f}x |"
        lines.append(cells)
    lines += ["", f"`python -c \"import torch\"` alone: {statistics.median(report['import_torch_seconds']):.2f} s "
                  "(median of the same runs)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
