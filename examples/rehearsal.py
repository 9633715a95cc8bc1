"""One training step of each recipe rehearsed on torch's meta device, beside its memory plan, with the time it would
take on four GPUs: `powerflow train --dry-run --rehearse` on all four recipes.

    python examples/rehearsal.py                      # about a minute on a CPU: nothing is loaded or downloaded
    python examples/rehearsal.py --prompt-tokens 512 --out DIR

Each recipe is resolved as `powerflow train --config examples/recipes/NAME.yaml --model DIR --dry-run --rehearse`
resolves it, DIR holding its model's config.json from examples/recipe_memory.py (written by hand from the model
card). Then rehearse (the step's own code at the model's shape on the meta device), plan_memory for a GPU and
compare: the functions the CLI calls. A second table does the same at the 0.5B, 1.5B and 7B shapes, NF4 and bf16,
for one small setting (tests/test_rehearse.py's).

The time is an estimate (estimate.py: data-sheet peaks at assumed efficiencies). Per step: the sampling (prefill
and decode), the scoring and the update as rehearsed. Per evaluation (which the dry run's own table spreads over
--eval-every steps): every sampling call of it (--eval-limit x --eval-k completions) and its scoring passes (log pi,
and from step 1 on the base's), rehearse.evaluation_costs. A run: --max-steps steps, and its evaluations (before
training, the tempered base under --eval-tempered, every --eval-every steps and after the last) and the worst-case
probe before step 1. The first run is FIRST_RUN's flags on top of the recipe.

Written to OUT (default examples/results): rehearsal.md and rehearsal.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_memory import CONFIGS, RECIPES, recipe_config  # noqa: E402

from powerflow_lite.cards import CARDS  # noqa: E402
from powerflow_lite.config import TrainConfig  # noqa: E402
from powerflow_lite.estimate import BANDWIDTH_EFFICIENCY, MATMUL_EFFICIENCY, PhaseCost, step_estimate  # noqa: E402
from powerflow_lite.memory_plan import (  # noqa: E402
    PROMPT_TOKENS,
    GiB,
    eval_rows,
    micro_batch_rows,
    model_config,
    model_shape,
    plan_memory,
    sampling_rows,
)
from powerflow_lite.rehearse import (  # noqa: E402
    compare,
    costs,
    evaluation_costs,
    planned_weights,
    rehearse,
    step_costs,
)
from powerflow_lite.samplers import SAMPLERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIRST_RUN = {"max_steps": 5, "eval_every": 5, "eval_limit": 16}  # a first run on a GPU: minutes, one evaluation
SHAPES = {"0.5B": "Qwen/Qwen2.5-0.5B-Instruct", "1.5B": "Qwen/Qwen2.5-Math-1.5B", "7B": "Qwen/Qwen2.5-Math-7B"}
# tests/test_rehearse.py's setting: small enough for seconds at 7B, with an evaluation
SMALL = {"alpha": 4.0, "max_new_tokens": 512, "prompts_per_step": 4, "samples_per_prompt": 8, "micro_batch_size": 8,
         "eval_data": "e.jsonl", "eval_every": 10}
SMALL_PROMPT_TOKENS = 128


def flags(change: dict) -> str:
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in change.items())


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    versions = {}
    for package in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), **versions}


def eval_prompts(cfg: TrainConfig) -> int:
    """Prompts an evaluation answers: --eval-limit, or fewer where a local file has fewer."""
    path = ROOT / cfg.eval_data
    rows = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else None
    if rows is None:
        return cfg.eval_limit
    return min(rows, cfg.eval_limit) if cfg.eval_limit else rows


def evaluations(cfg: TrainConfig, sampler: str) -> list[int]:
    """The scoring passes of each evaluation in a run of --max-steps: log pi unless the sampler returns it, and
    the base's from step 1 on (at step 0 the policy is the base)."""
    if not cfg.eval_data or not cfg.eval_every:
        return []
    before = 0 if SAMPLERS[sampler].returns_logps else 1
    after = [before + 1 for done in range(1, cfg.max_steps + 1) if done % cfg.eval_every == 0
             or done == cfg.max_steps]
    return [before] * (2 if cfg.eval_tempered else 1) + after


def whole_evaluation(rehearsal, cfg: TrainConfig, passes: int) -> list[PhaseCost]:
    """One whole evaluation of the recipe's prompts (rehearse.evaluation_costs)."""
    return evaluation_costs(rehearsal, eval_prompts(cfg) * cfg.eval_k, passes, micro_batch_rows(cfg))


def probe_costs(rehearsal, cfg: TrainConfig) -> list[PhaseCost]:
    """The worst-case probe before step 1 (probe.py): a step's sampling and scoring at full length, one micro-batch
    of the update, and one sampling call of the evaluation with its scoring (the base's, and log pi unless the
    sampler returns it)."""
    if not cfg.probe:
        return []
    step = {cost.name: cost for cost in step_costs(rehearsal)}
    calls = rehearsal.phases["update"].calls
    found = [step["prefill"], step["decode"], step["scoring"],
             PhaseCost("update", step["update"].flops / calls, step["update"].bytes / calls)]
    if cfg.eval_data and cfg.eval_every:
        one = replace(cfg, eval_limit=math.ceil(eval_rows(cfg) / cfg.eval_k))  # enough prompts for one call
        passes = 1 if SAMPLERS[rehearsal.sampler].returns_logps else 2
        found += [replace(cost, name=f"probe {cost.name}") for cost in whole_evaluation(rehearsal, one, passes)]
    return found


def run_time(rehearsal, cfg: TrainConfig, card) -> dict:
    """Estimated seconds of a step, of each evaluation and of the run (with the probe before step 1), on `card`."""
    step = step_estimate(step_costs(rehearsal), card)
    evals = [step_estimate(whole_evaluation(rehearsal, cfg, passes), card)
             for passes in evaluations(cfg, rehearsal.sampler)]
    probe = step_estimate(probe_costs(rehearsal, cfg), card)
    seconds = cfg.max_steps * step.seconds + sum(e.seconds for e in evals) + probe.seconds
    floor = cfg.max_steps * step.floor_seconds + sum(e.floor_seconds for e in evals) + probe.floor_seconds
    return {"phases_s": {p.name: p.estimate for p in step.phases}, "bound": {p.name: p.bound for p in step.phases},
            "s_per_step": step.seconds, "floor_s_per_step": step.floor_seconds,
            "evaluations": len(evals), "evaluation_s": [e.seconds for e in evals], "probe_s": probe.seconds,
            "run_s": seconds, "run_hours": seconds / 3600, "run_floor_s": floor,
            "dry_run_s_per_step": step_estimate(costs(rehearsal, cfg), card).seconds}


def phase_rows(plan, rehearsal) -> dict:
    rows = {}
    for row in compare(plan, rehearsal):
        run = rehearsal.phases[row.phase]
        rows[row.phase] = {"planned_bytes": row.planned, "rehearsed_bytes": row.rehearsed,
                           "difference": row.difference, "flops": row.flops, "bytes_read": run.bytes_read,
                           "calls": run.calls, "decode_steps": run.decode_steps, "error": row.error,
                           "parts_bytes": dict(run.parts)}
    return rows


def exact_rows(plan, rehearsal) -> dict:
    return {"weights": {"planned_bytes": planned_weights(plan), "rehearsed_bytes": rehearsal.weights},
            "gradients": {"planned_bytes": next(p.bytes for p in plan.parts if p.name == "gradients"),
                          "rehearsed_bytes": rehearsal.gradients}}


def rehearse_recipe(name: str, models: Path, prompt_tokens: int) -> dict:
    hub_id, cfg = recipe_config(name, models)
    config = model_config(cfg.model, cfg.trust_remote_code)
    plan = plan_memory(cfg, prompt_tokens, "cuda", shape=model_shape(cfg, config))
    rehearsal = rehearse(cfg, config, prompt_tokens)
    first = replace(cfg, **FIRST_RUN)
    settings = {"quant": rehearsal.quant, "sampler": rehearsal.sampler, "prompt_tokens": prompt_tokens,
                "max_new_tokens": cfg.max_new_tokens, "prompts_per_step": cfg.prompts_per_step,
                "samples_per_prompt": cfg.samples_per_prompt, "micro_batch_size": cfg.micro_batch_size,
                "micro_batch_rows": micro_batch_rows(cfg), "sample_batch_size": cfg.sample_batch_size,
                "sampling_rows": sampling_rows(cfg), "eval_data": cfg.eval_data, "eval_rows": eval_rows(cfg),
                "eval_k": cfg.eval_k, "eval_prompts": eval_prompts(cfg), "eval_every": cfg.eval_every,
                "eval_tempered": cfg.eval_tempered, "max_steps": cfg.max_steps,
                "gradient_checkpointing": cfg.gradient_checkpointing, "lora_r": cfg.lora_r}
    return {"recipe": name, "model": hub_id, "settings": settings, "rehearsal_s": rehearsal.seconds,
            "plan_peak_bytes": plan.total, "plan_peak_phase": plan.peak_phase,
            "phases": phase_rows(plan, rehearsal), **exact_rows(plan, rehearsal),
            "not_rehearsed": list(rehearsal.not_rehearsed),
            "cards": {card.key: {"name": card.name, "fits": plan.fits(int(card.memory_gib * GiB)),
                                 **run_time(rehearsal, cfg, card)} for card in CARDS},
            "first_run": {"command": f"powerflow train --config examples/recipes/{name}.yaml {flags(FIRST_RUN)} "
                                     f"--output runs/first-{name}",
                          "eval_prompts": eval_prompts(first),
                          "evaluations": len(evaluations(first, rehearsal.sampler)),
                          "cards": {card.key: run_time(rehearsal, first, card)["run_s"] for card in CARDS}}}


def rehearse_shape(size: str, quant: str, models: Path) -> dict:
    directory = models / f"shape-{size}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIGS[SHAPES[size]], indent=2) + "\n")
    cfg = TrainConfig(model=str(directory), prompts="unused.jsonl", quant=quant, **SMALL)
    config = model_config(cfg.model)
    plan = plan_memory(cfg, SMALL_PROMPT_TOKENS, "cuda", config=config)
    rehearsal = rehearse(cfg, config, SMALL_PROMPT_TOKENS)
    return {"shape": size, "model": SHAPES[size], "quant": quant, "rehearsal_s": rehearsal.seconds,
            "phases": phase_rows(plan, rehearsal), **exact_rows(plan, rehearsal)}


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / GiB:.2f}"


def percent(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def seconds(s: float) -> str:
    return f"{s:,.0f}" if s >= 100 else f"{s:.3g}"


def minutes(s: float) -> str:
    return f"{s / 60:.2f}" if s < 60 else f"{s / 60:.1f}" if s < 600 else f"{s / 60:,.0f}"


def hours(h: float) -> str:
    return f"{h:.2f}" if h < 1 else f"{h:.1f}"


def markdown(result: dict) -> str:
    m, rows = result["machine"], result["recipes"]
    phases = [name for name in ("sampling", "scoring", "update", "evaluation") if name in rows[0]["phases"]]
    lines = [
        "# One training step rehearsed on the meta device, beside the plan",
        "",
        "`powerflow train --dry-run --rehearse` for each recipe in `examples/recipes/` (`examples/rehearsal.py`), "
        "with the config.json files of [recipe_memory.md](recipe_memory.md). Nothing here ran on a GPU.",
        "",
        "* **Measured** on the meta device: the bytes of torch's tensors as the step's own code creates and frees "
        "them, above the weights (sampling: a prefill and the last decode step with the cache at full length; "
        "scoring with the adapter off and the update's forward and backward, one micro-batch each; the "
        "evaluation's sampling); FLOPs by torch's formulas (torch.utils.flop_counter) and bitsandbytes' 4-bit "
        "matmul.",
        "* **From the plan**, an estimate: the CUDA context and cuBLAS workspace, the allocator's rounding and "
        "fragmentation (a flat margin), and the optimizer's paged 8-bit state (counted from the trainable "
        "parameters; its step does not run on meta).",
        f"* **Time**, an estimate: data-sheet peaks (`powerflow_lite/cards.py`) x {MATMUL_EFFICIENCY:.0%} of "
        f"bf16 FLOP/s and x {BANDWIDTH_EFFICIENCY:.0%} of memory bandwidth, assumed efficiencies "
        "(`powerflow_lite/estimate.py`), not measured on any GPU. Left out: kernel launch and Python overhead "
        "(which can dominate decode), host work (tokenising, grading), loading the model, and clocks below boost.",
        "",
        "    python examples/rehearsal.py",
        "    # one recipe, with the model's config.json at hand:",
        "    powerflow train --config examples/recipes/math-base-alpha4.yaml --dry-run --rehearse",
        "",
        f"Rehearsed on {m['cpu']} ({m['cores']} cores) with torch {m['torch']}, transformers {m['transformers']}, "
        f"peft {m['peft']} and bitsandbytes {m['bitsandbytes']}: the four recipes in "
        f"{sum(r['rehearsal_s'] for r in rows):.0f} s. bf16 on a GPU, prompts of {result['prompt_tokens']} tokens; "
        "GiB = 2^30 bytes.",
        "",
        "## Plan vs rehearsal",
        "",
        "Bytes above the weights, per phase. The plan's update includes the gradients, which the rehearsal sees "
        "come to life in the backward. Scoring is no phase of the plan: it keeps no activations, and the plan "
        "takes it to need less than the update. Difference: (planned - rehearsed) / rehearsed.",
        "",
        "| recipe | phase | planned GiB | rehearsed GiB | difference |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for name in phases:
            phase = row["phases"][name]
            planned = "below the update" if phase["planned_bytes"] is None else gib(phase["planned_bytes"])
            rehearsed = phase["error"] or gib(phase["rehearsed_bytes"])
            lines.append(f"| {row['recipe']} | {name} | {planned} | {rehearsed} | {percent(phase['difference'])} |")
    lines += ["", "Weights (base, LoRA, log Z' head) and gradients: planned and rehearsed GiB. The plan's gradients "
              "include the log Z' head's, which lives outside the model the rehearsal builds.", "",
              "| recipe | weights planned | weights rehearsed | gradients planned | gradients rehearsed | "
              "TFLOP per step (sampling / scoring / update) |", "|---|---|---|---|---|---|"]
    for row in rows:
        tflop = " / ".join(f"{row['phases'][name]['flops'] / 1e12:,.0f}" for name in ("sampling", "scoring",
                                                                                     "update"))
        lines.append(f"| {row['recipe']} | {gib(row['weights']['planned_bytes'])} | "
                     f"{gib(row['weights']['rehearsed_bytes'])} | {gib(row['gradients']['planned_bytes'])} | "
                     f"{gib(row['gradients']['rehearsed_bytes'])} | {tflop} |")
    lines += ["", "Not rehearsed, kept from the plan:", ""]
    lines += [f"* {item}" for item in rows[0]["not_rehearsed"]]
    lines += [
        "",
        "## Estimated time",
        "",
        f"Estimates, not measurements: {MATMUL_EFFICIENCY:.0%} of peak bf16 FLOP/s, {BANDWIDTH_EFFICIENCY:.0%} of "
        "peak bandwidth. s/step: sampling, scoring and update. One evaluation: from step 1 on (with the base "
        "scored too). The run: the recipe's --max-steps, all its evaluations and the worst-case probe before step 1 "
        "(a step's sampling and scoring, one micro-batch of the update, one call of the evaluation). The dry run's "
        "own table spreads one evaluation over --eval-every steps; this one counts each evaluation apart. "
        "fits: the plan's peak within the card's memory (no: the time is moot until a change from "
        "[recipe_memory.md](recipe_memory.md) makes it fit).",
        "",
        "| recipe | card | fits | s/step | floor s/step | one evaluation s | evaluations | run hours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key, card in row["cards"].items():
            lines.append(f"| {row['recipe']} ({row['settings']['max_steps']} steps) | {card['name']} | "
                         f"{'yes' if card['fits'] else 'no'} | {seconds(card['s_per_step'])} | "
                         f"{seconds(card['floor_s_per_step'])} | {seconds(card['evaluation_s'][-1])} | "
                         f"{card['evaluations']} | {hours(card['run_hours'])} |")
    cards = list(rows[0]["cards"].values())
    lines += [
        "",
        "## A first run",
        "",
        f"Each recipe with `{flags(FIRST_RUN)}`: {FIRST_RUN['max_steps']} steps, the probe before step 1, and "
        "the evaluations (before training, the tempered base where the recipe sets `eval_tempered`, after the "
        "last step) on the first "
        f"{FIRST_RUN['eval_limit']} evaluation prompts. Estimated minutes, not counting loading the model (nor "
        "downloading it and the prompts the first time).",
        "",
        "| recipe | evaluations | " + " | ".join(f"{card['name']} min" for card in cards) + " |",
        "|---|---|" + "---|" * len(cards),
    ]
    for row in rows:
        first = row["first_run"]
        cells = [minutes(s) + ("" if row["cards"][key]["fits"] else " (does not fit)")
                 for key, s in first["cards"].items()]
        lines.append(f"| {row['recipe']} | {first['evaluations']} | " + " | ".join(cells) + " |")
    lines += ["", "The commands:", ""] + [f"    {row['first_run']['command']}" for row in rows]
    shapes = result["shapes"]
    small = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMALL.items() if k != "eval_data")
    lines += [
        "",
        "## NF4 and bf16 at three shapes",
        "",
        f"The shapes of {', '.join(f'{size} ({model})' for size, model in SHAPES.items())}, one small setting "
        f"(tests/test_rehearse.py's): {small}, with an evaluation, prompts of {SMALL_PROMPT_TOKENS} tokens. "
        "Each cell: planned / rehearsed GiB (difference).",
        "",
        "| shape | --quant | weights | " + " | ".join(phases) + " |",
        "|---|---|---|" + "---|" * len(phases),
    ]
    for row in shapes:
        weights = f"{gib(row['weights']['planned_bytes'])} / {gib(row['weights']['rehearsed_bytes'])}"
        cells = []
        for name in phases:
            phase = row["phases"][name]
            if phase["error"]:
                cells.append(phase["error"])
            elif phase["planned_bytes"] is None:
                cells.append(f"below the update / {gib(phase['rehearsed_bytes'])}")
            else:
                cells.append(f"{gib(phase['planned_bytes'])} / {gib(phase['rehearsed_bytes'])} "
                             f"({percent(phase['difference'])})")
        lines.append(f"| {row['shape']} | {row['quant']} | {weights} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as models:
        recipes = [rehearse_recipe(name, Path(models), args.prompt_tokens) for name in RECIPES]
        shapes = [rehearse_shape(size, quant, Path(models)) for size in SHAPES for quant in ("nf4", "none")]
    result = {"command": "python examples/rehearsal.py", "machine": machine(), "prompt_tokens": args.prompt_tokens,
              "efficiencies": {"matmul": MATMUL_EFFICIENCY, "bandwidth": BANDWIDTH_EFFICIENCY},
              "cards": [{"key": c.key, "name": c.name, "memory_gib": c.memory_gib, "bf16_flops": c.bf16_flops,
                         "bandwidth": c.bandwidth, "source": c.source} for c in CARDS],
              "first_run_flags": FIRST_RUN, "small_setting": {**SMALL, "prompt_tokens": SMALL_PROMPT_TOKENS},
              "recipes": recipes, "shapes": shapes, "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "rehearsal.md").write_text(markdown(result))
    for row in recipes:
        worst = max((p["difference"] for p in row["phases"].values() if p["difference"] is not None), key=abs)
        print(f"{row['recipe']:22} {row['model']:34} plan vs rehearsal within {abs(worst):.1%}")
    print(f"wrote {args.out / 'rehearsal.md'} and {args.out / 'rehearsal.json'} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
