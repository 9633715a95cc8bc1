"""Where does the CPU's memory go in the demo's step, and what does `powerflow bench` measure on the CPU?

    python examples/cpu_memory.py                 # ~6 min on 2 cores: 2 short training runs, 1 demo, 3 benches
    python examples/cpu_memory.py --steps 3 --demo-seeds 0,1 --model DIR --out DIR

Four measurements, each in a process of its own, one after another (as examples/cpu_paths.py runs its paths):

1. the demo's recipe in full precision with the static sampler (no evaluation, --lr 1e-12 so that every step
   samples from the base at its lengths, as in cpu_paths.py) for --steps steps, its resident memory (VmRSS) read
   after each stage: torch, transformers and peft imported; the run set up (model, LoRA, optimizer); each step's
   sampling and scoring; its update. The peak (VmHWM) is reset before the setup, before sampling and after
   scoring, so each stage has its own peak;
2. the same with --gradient-checkpointing, for what recomputation saves and costs;
3. the whole demo (`powerflow train --demo --seed S`, its evaluations included) for each of --demo-seeds, its peak
   the child's ru_maxrss as os.wait4 returns it;
4. the three `powerflow bench` commands of docs/results.md, with --json; every figure they print is kept.

Written to OUT (default examples/results): cpu_memory.md and cpu_memory.json, every run's values kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 2**30
BENCHES = (  # the commands of docs/results.md's table; "MODEL" stands for the demo's model directory
    ["--shape", "tiny", "--batch", "4", "--prompt-len", "16", "--new-tokens", "16", "--quant", "none"],
    ["--shape", "tiny", "--batch", "16", "--prompt-len", "16", "--new-tokens", "16", "--quant", "nf4"],
    ["--model", "MODEL", "--batch", "8", "--prompt-len", "32", "--new-tokens", "32", "--quant", "nf4"],
)


def memory_gib() -> tuple[float, float]:
    """This process's resident memory now and its peak since the last reset (VmRSS, VmHWM), in GiB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) * 1024 / GiB, int(status["VmHWM"].split()[0]) * 1024 / GiB


def reset_peak() -> None:
    """Start a new VmHWM at the current VmRSS (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(out: Path, argv: list[str]) -> None:
    """Run `powerflow <argv>` in this process, noting its memory after each stage into `out` (JSON)."""
    reset_peak()
    import peft  # noqa: F401 - what every run imports before its model: the first row of the table
    import torch  # noqa: F401
    import transformers  # noqa: F401

    rss, peak = memory_gib()
    found: dict = {"imports": {"rss_gib": rss, "peak_gib": peak}, "steps": []}
    from powerflow_lite import cli, record
    from powerflow_lite import setup as setup_module
    from powerflow_lite.update import micro_batches

    setup = setup_module.setup

    def noted_setup(*args, **kwargs):
        """setup, its memory and the shapes the table names noted."""
        reset_peak()
        run = setup(*args, **kwargs)
        rss, peak = memory_gib()
        base = [p for name, p in run.model.named_parameters() if "lora_" not in name]
        config = run.model.get_base_model().config
        rows = micro_batches(run.cfg.prompts_per_step * run.cfg.samples_per_prompt, run.cfg.micro_batch_size,
                             run.cfg.micro_batch_group)[0]
        found["setup"] = {"rss_gib": rss, "peak_gib": peak, "base_parameters": sum(p.numel() for p in base),
                          "base_gib": sum(p.numel() * p.element_size() for p in base) / GiB,
                          "layers": config.num_hidden_layers, "micro_batch_rows": rows.stop - rows.start,
                          "completions": run.cfg.prompts_per_step * run.cfg.samples_per_prompt,
                          "max_new_tokens": run.cfg.max_new_tokens}
        return run

    class NotedClock(record.StepClock):
        """The step's clock, noting memory at each lap: after sampling, after scoring (then a new peak), after the
        update (whose peak the metrics row reads too)."""

        def lap(self) -> None:
            super().lap()
            rss, peak = memory_gib()
            stage = ("sample", "score", "update")[len(self.laps) - 1]
            if stage == "sample":
                found["steps"].append({})
            found["steps"][-1].update({f"{stage}_rss_gib": rss, f"{stage}_peak_gib": peak,
                                       f"time_{stage}": self.laps[-1]})
            if stage == "score":
                reset_peak()

    setup_module.setup = noted_setup  # the CLI imports it from the module when it trains
    record.StepClock = NotedClock  # the loop reads record.StepClock at each step
    code = cli.main(argv)
    out.write_text(json.dumps(found, indent=1) + "\n")
    sys.exit(code)


def train_run(model: str, steps: int, tmp: Path, extra: list[str]) -> dict:
    """The demo's recipe (full precision, static sampler, lr 1e-12, no evaluation) in a child noting its memory."""
    from cpu_paths import frozen_demo  # the parent's import: a child imports nothing before its first stage

    out, noted = tmp / "run", tmp / "noted.json"
    argv = [*frozen_demo(model, "none", "static", steps, out), *extra]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(noted), "--", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"powerflow {' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    found = json.loads(noted.read_text())
    for step, row in zip(found["steps"], rows):
        step.update(step=row["step"], length_mean=row["length_mean"], metrics_peak_rss_gib=row["peak_rss_gib"])
    shown = [{model: "MODEL", str(out): "OUT"}.get(arg, arg) for arg in argv]  # no machine's paths in the record
    return {"command": "powerflow " + shlex.join(shown), "wall_s": time.perf_counter() - started, **found}


def later(run: dict) -> dict:
    """Medians and ranges over the steps after the first (step 1 pays one-time costs)."""
    steps = run["steps"][1:] or run["steps"]
    peaks = [max(s["score_peak_gib"], s["update_peak_gib"]) for s in steps]
    return {"time_update": statistics.median(s["time_update"] for s in steps),
            "update_rss_gib": [min(s["update_rss_gib"] for s in steps), max(s["update_rss_gib"] for s in steps)],
            "peak_gib": [min(peaks), max(peaks)]}


def demo_peak(model: str, seed: int, tmp: Path) -> dict:
    """The whole demo (evaluations included) in a child; its peak resident memory from os.wait4."""
    argv = ["train", "--demo", "--model", model, "--seed", str(seed), "--output", str(tmp / f"demo-{seed}"),
            "--overwrite"]
    started = time.perf_counter()
    child_process = subprocess.Popen([sys.executable, "-m", "powerflow_lite", *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child_process.pid, 0)
    child_process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if child_process.returncode != 0:
        raise SystemExit(f"powerflow {' '.join(argv)} failed (exit {child_process.returncode})")
    return {"seed": seed, "command": f"powerflow train --demo --seed {seed}", "peak_rss_gib": usage.ru_maxrss * 1024
            / GiB, "wall_s": time.perf_counter() - started}  # ru_maxrss is in KiB on Linux


def bench(model: str, args: list[str]) -> dict:
    """One `powerflow bench ... --json` in a child: the command as the doc shows it and every figure it prints."""
    argv = ["bench", *[model if a == "MODEL" else a for a in args], "--json"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "powerflow_lite", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"powerflow {' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    printed = done.stdout[done.stdout.index("{"):]  # the JSON, after any line a library printed first
    return {"args": args, "wall_s": time.perf_counter() - started, "result": json.loads(printed)}


def span(low_high: list[float]) -> str:
    """'2.02' or '2.17-2.21'."""
    low, high = (f"{value:.2f}" for value in low_high)
    return low if low == high else f"{low}-{high}"


def markdown(report: dict) -> str:
    """The results file's summary."""
    run, checkpointed = report["stages"], report["checkpointing"]
    first, rest = run["steps"][0], later(run)
    lines = [f"# Memory and `powerflow bench` on the CPU ({report['model_name']})", "",
             f"Measured on {report['machine']['cpu']} ({report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}). Command: `python examples/cpu_memory.py`.", "",
             f"`{run['command']}` ({len(run['steps'])} steps), resident memory after each stage:", "",
             "| stage | resident after, GiB | peak during, GiB |", "|---|---|---|",
             f"| torch, transformers, peft imported | {run['imports']['rss_gib']:.2f} | |",
             f"| set up (model, LoRA, optimizer) | {run['setup']['rss_gib']:.2f} | {run['setup']['peak_gib']:.2f} |",
             f"| step 1: sampling and scoring | {first['score_rss_gib']:.2f} | {first['score_peak_gib']:.2f} |",
             f"| step 1: update | {first['update_rss_gib']:.2f} | {first['update_peak_gib']:.2f} |",
             f"| later steps | {span(rest['update_rss_gib'])} | {span(rest['peak_gib'])} |", "",
             "With --gradient-checkpointing ({} steps): peak {:.2f}-{:.2f} GiB, update {:.1f} s against {:.1f} s "
             "(medians of the later steps).".format(len(checkpointed["steps"]), *later(checkpointed)["peak_gib"],
                                                   later(checkpointed)["time_update"], rest["time_update"]), ""]
    lines += [f"The whole demo, seed {d['seed']}: peak {d['peak_rss_gib']:.2f} GiB ({d['wall_s']:.0f} s)."
              for d in report["demo"]]
    lines += ["", "| powerflow bench | hf generate tok/s | static tok/s | static / HF | training step s |",
              "|---|---|---|---|---|"]
    for b in report["bench"]:
        r = b["result"]
        step = r.get("train_step") or {}
        lines.append(f"| `{' '.join(b['args'])}` | {r['results']['hf generate']['tokens_per_s']:.1f} "
                     f"| {r['results']['powerflow static']['tokens_per_s']:.1f} | {r['speedup']:.2f} "
                     f"| {step.get('seconds', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Measure, one process after another, and write cpu_memory.json and cpu_memory.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=4, help="training steps of the memory run (the first is apart)")
    parser.add_argument("--checkpointing-steps", type=int, default=3, help="steps of the gradient-checkpointing run")
    parser.add_argument("--demo-seeds", default="0", help="comma-separated seeds of whole demos to measure the peak of")
    parser.add_argument("--out", default="examples/results", help="where cpu_memory.md and cpu_memory.json go")
    args = parser.parse_args(argv)
    if min(args.steps, args.checkpointing_steps) < 2:
        parser.error("--steps and --checkpointing-steps must be at least 2: the first step is apart")
    from cpu_paths import demo_model  # torch-free: the children's memory is their own
    from power_exact import machine

    model = args.model or demo_model()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "model_name": Path(model).name, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"memory run: {args.steps} steps", file=sys.stderr, flush=True)
        (Path(tmp) / "a").mkdir()
        report["stages"] = train_run(model, args.steps, Path(tmp) / "a", [])
        print(f"gradient checkpointing: {args.checkpointing_steps} steps", file=sys.stderr, flush=True)
        (Path(tmp) / "b").mkdir()
        report["checkpointing"] = train_run(model, args.checkpointing_steps, Path(tmp) / "b",
                                            ["--gradient-checkpointing"])
        report["demo"] = []
        for seed in [int(s) for s in args.demo_seeds.split(",") if s.strip()]:
            print(f"demo, seed {seed}", file=sys.stderr, flush=True)
            report["demo"].append(demo_peak(model, seed, Path(tmp)))
    report["bench"] = []
    for bench_args in BENCHES:
        print("bench " + " ".join(bench_args), file=sys.stderr, flush=True)
        report["bench"].append(bench(model, bench_args))
    (out / "cpu_memory.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = markdown(report)
    (out / "cpu_memory.md").write_text(summary)
    print(summary)
    print(f"wrote {out / 'cpu_memory.md'} and {out / 'cpu_memory.json'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # a measured run: nothing imported before its first stage
        child(Path(sys.argv[2]), sys.argv[4:])
    sys.exit(main())
