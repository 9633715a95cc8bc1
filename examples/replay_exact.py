"""Replay on the exact problems: exact KL to the target against the number of *sampled* tokens.

The problems, model and training recipe are the exact study's (`examples/exact_alpha.py`: a tiny random
Qwen2, completions of at most 3 tokens that can all be enumerated, latb, 16 samples per prompt, 400 steps),
trained on-policy and with `--replay-steps K` (K steps on stored completions after each fresh one), the
replay runs also for twice as many steps (K = 3 and 5 then sample 1/2 and 1/3 of on-policy's tokens). Every
run records, at each evaluation, the exact KL and how many tokens it has sampled so far.

    python examples/replay_exact.py                # 6 problems x 5 settings, about 11 minutes on 2 CPU cores
    python examples/replay_exact.py --quick        # one problem, 100 steps

For each problem and replay setting it reports:
* tokens ratio: the tokens on-policy training sampled to reach its final KL, divided by the tokens the replay
  run had sampled when it first reached that KL (blank if it never did): how many times fewer tokens replay
  needs for on-policy's result;
* attained at 1/3 of the tokens: (KL_start - KL) / (KL_start - floor) of the replay run once it has sampled a
  third of what on-policy sampled in all, against on-policy's attained at the end.

The floors are those of the committed exact study (examples/results/exact_alpha.json), lowered to any KL a run
here passed through. Written to OUT (default runs/replay-exact): replay_exact.md and replay_exact.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import exact_alpha as study  # noqa: E402 - the exact study's problems and recipe

from powerflow_lite import exact  # noqa: E402
from powerflow_lite.config import TrainConfig  # noqa: E402

PROBLEMS = [  # (alpha, regime, base, prompt set): the peaky base at each alpha, EOS, and 64 prompts
    (0.5, "fixed", "x8", "two"), (2.0, "fixed", "x8", "two"), (4.0, "fixed", "x8", "two"),
    (2.0, "eos", "x4", "two"), (4.0, "eos", "x4", "two"), (4.0, "fixed", "x8", "many"),
]
# (--replay-steps K, steps as a multiple of --steps, --replay-best): on-policy; K replay steps per fresh one in as
# many steps (1/(K+1) of the sampled tokens), drawing a prompt's most recent completions or half of them from its
# best; and longer replay runs, which sample 1/2 and 1/3 of on-policy's tokens
SETTINGS = ((0, 1, 0.0), (2, 1, 0.0), (2, 1, 0.5), (3, 2, 0.0), (5, 2, 0.0))


def train_one(problem: tuple, replay_steps: int, root: str, steps: int, eval_every: int, seed: int,
              overrides: dict | None = None) -> dict:
    from powerflow_lite.train import setup, train

    torch.set_num_threads(1)
    alpha, regime, base, prompt_set = problem
    case = study.Case("latb", alpha, regime, base, prompts=prompt_set)
    with tempfile.TemporaryDirectory(dir=root) as out:
        per_step = {"prompts_per_step": study.MANY_PER_STEP} if prompt_set == "many" else {}
        cfg = TrainConfig(model=str(Path(root) / f"model-{base}"),
                          prompts=str(Path(root) / f"prompts-{prompt_set}.jsonl"), output=str(Path(out) / "run"),
                          alpha=alpha, max_steps=steps, ignore_eos=regime == "fixed", seed=seed,
                          replay_steps=replay_steps, **{**study.TRAINING, **per_step, **(overrides or {})})
        started = time.perf_counter()
        run = setup(cfg)
        problem_ = study.problem_for(run.model, run.tokenizer, run.prompt_ids, case)
        key = "kl_latb" if case.target == "latb" else "kl_alpha"
        curve = [(0, 0, exact.evaluate(run.model, problem_)[key])]  # (step, sampled tokens, KL)
        tokens = 0
        for result in train(run):
            tokens += result.metrics["sampled_tokens"]
            if result.step % eval_every == 0 or result.step == steps:
                curve.append((result.step, tokens, exact.evaluate(run.model, problem_)[key]))
    return {"problem": problem, "replay_steps": replay_steps, "replay_best": cfg.replay_best, "target": case.target,
            "curve": curve,
            "seconds": time.perf_counter() - started}


def first_reaching(curve: list, kl: float) -> int | None:
    """Sampled tokens at the first evaluation at or below `kl` (None if never)."""
    return next((tokens for _, tokens, value in curve if value <= kl * (1 + 1e-9)), None)


def kl_at_tokens(curve: list, budget: float) -> float:
    """The KL at the last evaluation that had sampled at most `budget` tokens."""
    return [value for _, tokens, value in curve if tokens <= budget][-1]


def summarise(runs: list[dict], floors: dict) -> list[dict]:
    rows = []
    for problem in {tuple(r["problem"]) for r in runs}:
        mine = {(r["replay_steps"], r["replay_best"]): r for r in runs if tuple(r["problem"]) == problem}
        target = mine[0, 0.0]["target"]
        floor = min([floors.get((*problem, target), float("inf"))] +
                    [value for r in mine.values() for _, _, value in r["curve"]])
        on = mine[0, 0.0]["curve"]
        start, end, total = on[0][2], on[-1][2], on[-1][1]
        for (k, best), r in sorted(mine.items()):
            reached = first_reaching(r["curve"], end)
            third = kl_at_tokens(r["curve"], total / 3)
            rows.append({"alpha": problem[0], "regime": problem[1], "base": problem[2], "prompts": problem[3],
                         "replay_steps": k, "replay_best": best, "steps": r["curve"][-1][0], "kl_start": start,
                         "kl_end": r["curve"][-1][2], "floor": floor,
                         "sampled_tokens": r["curve"][-1][1], "on_policy_tokens": total,
                         "tokens_ratio": None if reached in (None, 0) else total / reached,
                         "attained_end": exact.fraction_attained(start, r["curve"][-1][2], floor),
                         "attained_third": exact.fraction_attained(start, third, floor),
                         "seconds": r["seconds"]})
    return sorted(rows, key=lambda r: (r["prompts"] != "two", r["regime"], r["alpha"], r["replay_steps"],
                                       r["replay_best"]))


def markdown(rows: list[dict], steps: int) -> str:
    lines = [f"latb; on-policy {steps} steps; replay K: K steps on stored completions after each fresh one.", "",
             "| problem | K | best | steps | KL start -> end | floor | sampled tokens "
             "| tokens ratio to reach on-policy's KL | attained: end / at 1/3 of on-policy's tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        problem = (f"alpha {r['alpha']:g}, {'fixed length' if r['regime'] == 'fixed' else 'with EOS'}, "
                   f"{r['base']}, {2 if r['prompts'] == 'two' else 64} prompts")
        ratio = "" if r["replay_steps"] == 0 else ("not reached" if r["tokens_ratio"] is None
                                                   else f"{r['tokens_ratio']:.1f}x")
        best = "" if r["replay_steps"] == 0 else f"{r['replay_best']:g}"
        lines.append(f"| {problem} | {r['replay_steps'] or 'on-policy'} | {best} | {r['steps']} "
                     f"| {r['kl_start']:.3f} -> {r['kl_end']:.4f} "
                     f"| {r['floor']:.4f} | {r['sampled_tokens']:,} | {ratio} "
                     f"| {100 * r['attained_end']:.1f}% / {100 * r['attained_third']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/replay-exact")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one problem, 100 steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--floors", default=str(Path(__file__).parent / "results" / "exact_alpha.json"))
    args = parser.parse_args(argv)
    problems, steps = (PROBLEMS[1:2], 100) if args.quick else (PROBLEMS, args.steps)
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
    jobs = [(p, k, str(root), steps * multiple, args.eval_every, args.seed, {"replay_best": best}) for p in problems
            for k, multiple, best in SETTINGS]
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
