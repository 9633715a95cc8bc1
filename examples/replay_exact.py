"""Replay and exploration on the exact problems: exact KL to the target against the number of *sampled* tokens.

The problems, model and training recipe are the exact study's (`examples/exact_alpha.py`: a tiny random
Qwen2, completions of at most 3 tokens that can all be enumerated, latb, 16 samples per prompt, 400 steps),
trained on-policy and under each setting of SETTINGS: `--replay-steps K` (K steps on stored completions after
each fresh one, sampling 1/(K+1) of the tokens), with `--replay-best`, a larger buffer drawn at random, a run
twice as long with K = 5 (a third of the tokens, twice the updates), and `--explore-temperature 1/alpha` (a
quarter of each prompt's samples from the tempered policy) with and without replay. Every run records, at each
evaluation, the exact KL and how many tokens it has sampled so far; each setting runs with several seeds and
the curves are averaged point by point.

    python examples/replay_exact.py                # 6 problems x 7 settings x 3 seeds: 18 minutes on 2 CPU cores
    python examples/replay_exact.py --quick        # one problem, 100 steps, one seed
    python examples/replay_exact.py --settings on-policy,K=2 --seeds 0

For each problem and setting it reports:
* tokens ratio: the tokens on-policy training sampled to reach its final KL, divided by the tokens the run
  had sampled when it first reached that KL (blank if it never did): how many times fewer tokens it needs
  for on-policy's result;
* attained at 1/3 of the tokens: (KL_start - KL) / (KL_start - floor) of the run once it has sampled a
  third of what on-policy sampled in all, against on-policy's attained at the end.

The floors are those of the committed exact study (examples/results/exact_alpha.json), lowered to any KL a run
here passed through. Written to OUT (default runs/replay-exact): replay_exact.md and replay_exact.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import exact_alpha as study  # noqa: E402 - the exact study's problems and recipe

from powerflow_lite import exact  # noqa: E402

PROBLEMS = [  # (alpha, regime, base, prompt set): the peaky base at each alpha, EOS, and 64 prompts
    (0.5, "fixed", "x8", "two"), (2.0, "fixed", "x8", "two"), (4.0, "fixed", "x8", "two"),
    (2.0, "eos", "x4", "two"), (4.0, "eos", "x4", "two"), (4.0, "fixed", "x8", "many"),
]
EXPLORE = "1/alpha"  # --explore-temperature 1/alpha: the tempered base's temperature, a cheap guess at the target
# name: (steps as a multiple of --steps, config overrides). K replay steps after each fresh one sample 1/(K+1) of
# on-policy's tokens in as many steps; the runs twice as long sample 1/2 (K = 3) and 1/3 (K = 5).
SETTINGS = {
    "on-policy": (1, {}),
    "explore": (1, {"explore_temperature": EXPLORE}),
    "K=2": (1, {"replay_steps": 2}),
    "K=2, explore": (1, {"replay_steps": 2, "explore_temperature": EXPLORE}),
    "K=2, best 0.5": (1, {"replay_steps": 2, "replay_best": 0.5}),
    "K=2, size 48, random": (1, {"replay_steps": 2, "replay_size": 48, "replay_order": "random"}),
    "K=5, 2x steps": (2, {"replay_steps": 5}),
}


def train_one(problem: tuple, setting: str, root: str, steps: int, eval_every: int, seed: int) -> dict:
    """One run of the exact study's recipe with a setting's overrides: its curve of (step, sampled tokens, KL)."""
    alpha, regime, base, prompt_set = problem
    case = study.Case("latb", alpha, regime, base, prompts=prompt_set)
    multiple, overrides = SETTINGS[setting]
    overrides = {k: 1 / alpha if v == EXPLORE else v for k, v in overrides.items()}
    result = study.train_case(case, root, steps * multiple, eval_every, seed, overrides)
    column = 2 if case.target == "latb" else 1
    curve = [(point[0], tokens, point[column]) for point, tokens in zip(result.curve, result.tokens, strict=True)]
    return {"problem": problem, "setting": setting, "seed": seed, "target": case.target, "curve": curve,
            "seconds": result.seconds}


def seed_mean(runs: list[dict]) -> dict:
    """The seeds' curves averaged point by point (they evaluate at the same steps): tokens and KL; with the
    spread of the final KL over the seeds."""
    curve = [(points[0][0], sum(p[1] for p in points) / len(points), sum(p[2] for p in points) / len(points))
             for points in zip(*(r["curve"] for r in runs), strict=True)]
    finals = [r["curve"][-1][2] for r in runs]
    spread = (sum((f - curve[-1][2]) ** 2 for f in finals) / (len(finals) - 1)) ** 0.5 if len(finals) > 1 else 0.0
    return {**runs[0], "curve": curve, "seeds": len(runs), "kl_end_sd": spread,
            "seconds": sum(r["seconds"] for r in runs)}


def first_reaching(curve: list, kl: float) -> int | None:
    """Sampled tokens at the first evaluation at or below `kl` (None if never)."""
    return next((tokens for _, tokens, value in curve if value <= kl * (1 + 1e-9)), None)


def kl_at_tokens(curve: list, budget: float) -> float:
    """The KL at the last evaluation that had sampled at most `budget` tokens."""
    return [value for _, tokens, value in curve if tokens <= budget][-1]


def summarise(runs: list[dict], floors: dict) -> list[dict]:
    rows = []
    for problem in {tuple(r["problem"]) for r in runs}:
        mine = {setting: seed_mean([r for r in runs if tuple(r["problem"]) == problem and r["setting"] == setting])
                for setting in {r["setting"] for r in runs if tuple(r["problem"]) == problem}}
        target = mine["on-policy"]["target"]
        floor = min([floors.get((*problem, target), float("inf"))] +
                    [value for r in mine.values() for _, _, value in r["curve"]])
        on = mine["on-policy"]["curve"]
        start, end, total = on[0][2], on[-1][2], on[-1][1]
        for setting, r in mine.items():
            reached = first_reaching(r["curve"], end)
            third = kl_at_tokens(r["curve"], total / 3)
            rows.append({"alpha": problem[0], "regime": problem[1], "base": problem[2], "prompts": problem[3],
                         "setting": setting, "steps": r["curve"][-1][0], "kl_start": start,
                         "kl_end": r["curve"][-1][2], "kl_end_sd": r["kl_end_sd"], "seeds": r["seeds"],
                         "floor": floor,
                         "sampled_tokens": r["curve"][-1][1], "on_policy_tokens": total,
                         "tokens_ratio": None if reached in (None, 0) else total / reached,
                         "attained_end": exact.fraction_attained(start, r["curve"][-1][2], floor),
                         "attained_third": exact.fraction_attained(start, third, floor),
                         "seconds": r["seconds"]})
    order = list(SETTINGS)
    return sorted(rows, key=lambda r: (r["prompts"] != "two", r["regime"], r["alpha"],
                                       order.index(r["setting"]) if r["setting"] in order else len(order)))


def markdown(rows: list[dict], steps: int) -> str:
    seeds = rows[0]["seeds"] if rows else 1
    lines = [f"latb; on-policy {steps} steps; K: K steps on stored completions after each fresh one; explore: a "
             "quarter of each prompt's samples at temperature 1/alpha; best 0.5: half of a replayed prompt's "
             "completions (and of its buffer) its best by target; size 48, random: 48 kept per prompt, 16 drawn "
             f"at random. Means over {seeds} seed{'s' if seeds > 1 else ''} (KL end ± sd over seeds).", "",
             "| problem | setting | steps | KL start -> end | floor | sampled tokens "
             "| tokens ratio to reach on-policy's KL | attained: end / at 1/3 of on-policy's tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        problem = (f"alpha {r['alpha']:g}, {'fixed length' if r['regime'] == 'fixed' else 'with EOS'}, "
                   f"{r['base']}, {2 if r['prompts'] == 'two' else 64} prompts")
        ratio = "" if r["setting"] == "on-policy" else ("not reached" if r["tokens_ratio"] is None
                                                        else f"{r['tokens_ratio']:.1f}x")
        lines.append(f"| {problem} | {r['setting']} | {r['steps']} "
                     f"| {r['kl_start']:.3f} -> {r['kl_end']:.4f}"
                     + (f" ± {r['kl_end_sd']:.4f} " if r["seeds"] > 1 else " ") +
                     f"| {r['floor']:.4f} | {r['sampled_tokens']:,.0f} | {ratio} "
                     f"| {100 * r['attained_end']:.1f}% / {100 * r['attained_third']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/replay-exact")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="one problem, 100 steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settings", default="", help=f"comma-separated, from: {', '.join(SETTINGS)} (default: all; "
                        "on-policy is the reference and must be among them)")
    parser.add_argument("--floors", default=str(Path(__file__).parent / "results" / "exact_alpha.json"))
    args = parser.parse_args(argv)
    problems, steps = (PROBLEMS[1:2], 100) if args.quick else (PROBLEMS, args.steps)
    if args.quick:
        args.seeds = "0"
    out = Path(args.out)
    root = out / "work"
    root.mkdir(parents=True, exist_ok=True)
    study.model_dirs(root)
    for name, prompts in study.PROMPT_SETS.items():
        (root / f"prompts-{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    floors = {}
    if Path(args.floors).is_file():
        for row in json.loads(Path(args.floors).read_text())["rows"]:
            key = (row["alpha"], row["regime"], row["base"], row["prompts"], row["target"])
            floors[key] = min(floors.get(key, float("inf")), row["kl_floor"])
    started = time.perf_counter()
    settings = args.settings.split(",") if args.settings else list(SETTINGS)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    jobs = [(p, name, str(root), steps, args.eval_every, seed) for p in problems for name in settings for seed in seeds]
    jobs.sort(key=lambda job: -SETTINGS[job[1]][0])  # the long runs first: the pool ends together
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(train_one, *zip(*jobs)))
    rows = summarise(runs, floors)
    table = markdown(rows, steps)
    (out / "replay_exact.json").write_text(json.dumps({"rows": rows, "runs": runs, "steps": steps,
                                                       "seconds": time.perf_counter() - started}, indent=1))
    (out / "replay_exact.md").write_text(table)
    print(table)
    print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s; wrote {out / 'replay_exact.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
