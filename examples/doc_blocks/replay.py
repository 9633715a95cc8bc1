"""Replay and exploration: the exact problems (examples/replay_exact.py) and SmolLM2 (examples/replay_real.py)."""

from __future__ import annotations

from doc_blocks import Block, points, table, wrap

WORDS = {0: "none", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
PROMPTS = {"two": 2, "many": 64}  # the exact study's prompt sets (examples/exact_alpha.py)
# replay_real.py's settings as flags (its SETTINGS dict, which imports the package to read)
REAL_FLAGS = {"on-policy": "on-policy", "K=2": "`--replay-steps 2`",
              "K=2, explore T=1/4": "`--replay-steps 2 --explore-temperature 0.25`",
              "K=2, replay lr x0.25": "`--replay-steps 2 --replay-lr-scale 0.25`"}



# --- the exact problems (examples/results/replay_exact.json)


def problem_name(row: dict) -> str:
    """A problem as the doc names it: 'alpha 4, fixed length, peaky base, 2 prompts'."""
    length = "fixed length" if row["regime"] == "fixed" else "with EOS"
    base = "peaky base" if row["base"] == "x8" else f"base {row['base']}"
    return f"alpha {row['alpha']:g}, {length}, {base}, {PROMPTS[row['prompts']]} prompts"


def by_problem(result: dict) -> dict[tuple, dict[str, dict]]:
    """Problem -> setting -> row, the problems in the doc's order (two prompts first, fixed length first)."""
    problems: dict[tuple, dict[str, dict]] = {}
    for row in sorted(result["rows"], key=lambda r: (r["prompts"] != "two", r["regime"] != "fixed", r["alpha"])):
        problems.setdefault((row["alpha"], row["regime"], row["base"], row["prompts"]), {})[row["setting"]] = row
    return problems


def peaky(problems: dict, alpha: float) -> dict[str, dict]:
    """The settings of the peaky base at `alpha`, fixed length, two prompts."""
    return problems[(alpha, "fixed", "x8", "two")]


def within_spread(a: dict, b: dict) -> bool:
    """Two settings' final KLs differ by less than the larger spread over seeds."""
    return abs(a["kl_end"] - b["kl_end"]) < max(a["kl_end_sd"], b["kl_end_sd"])


def replay_commands(result: dict) -> str:
    """The commands under the section's opening, with the exact study's run count and wall clock."""
    return ("```bash\n"
            "powerflow train --demo --replay-steps 2            # 1 step in 3 samples; the others replay\n"
            "powerflow train --demo --replay-steps 2 --explore-temperature 0.25\n"
            f"python examples/replay_exact.py                    # the exact study below: {len(result['runs'])} "
            f"runs, {result['seconds'] / 60:.0f} minutes\n"
            "python examples/replay_real.py                     # SmolLM2 curves below\n```\n")


def replay_exact(result: dict) -> str:
    """The exact problems: the on-policy against K = 2 table, and what the other settings show."""
    problems = by_problem(result)
    seeds = "/".join(str(n) for n in sorted({row["seeds"] for row in result["rows"]}))
    rows = [[problem_name(s["on-policy"]), f"{s['on-policy']['kl_end']:.4f}",
             f"{100 * s['on-policy']['attained_third']:.1f}% / {100 * s['on-policy']['attained_end']:.1f}%",
             f"{s['K=2']['kl_end']:.4f} ± {s['K=2']['kl_end_sd']:.4f}", f"{100 * s['K=2']['attained_end']:.1f}%"]
            for s in problems.values()]
    steps = result["steps"]
    text = wrap(f"**On the exact problems** (the exact study's recipe, latb, exact KL, means of {seeds} seeds; "
                   "[`replay_exact.md`](../examples/results/replay_exact.md) has every setting), with K = 2 the run "
                   f"samples a third of on-policy's tokens in the same {steps} steps:") + "\n"
    text += table(["problem", f"on-policy: KL end ({steps} steps)", "attained at 1/3 of its tokens / at the end",
                   "replay K = 2: KL end ± sd over seeds (1/3 of the tokens)", "attained"], rows)
    return text + "\n" + exact_bullets(problems)


def percent(fraction: float) -> float:
    """A fraction as the percentage the page shows (one decimal), so that a comparison agrees with the figure."""
    return round(100 * fraction, 1)


def exact_bullets(problems: dict) -> str:
    """The bullets under the exact table: replay's share of the reduction, staleness, exploration, --replay-best."""
    k2 = [s["K=2"] for s in problems.values()]
    kept = [percent(r["attained_end"]) for r in k2 if percent(r["attained_end"]) >= 95]
    short = [r for r in k2 if percent(r["attained_end"]) < 95]
    ahead = sum(s["K=2"]["attained_third"] > s["on-policy"]["attained_third"] for s in problems.values())
    below = "; ".join(f"{percent(r['attained_end']):.1f}% at alpha {r['alpha']:g}"
                      + (" on the peaky base" if r["base"] == "x8" and r["prompts"] == "two" else "") for r in short)
    text = wrap(f"**At a third of the tokens replay keeps at least 95% of the achievable reduction in "
                   f"{WORDS[len(kept)]} of the {WORDS[len(k2)]} problems** ({min(kept):.1f}-{max(kept):.1f}%"
                   + (f"; {below}" if below else "") + "), and at that token count it is ahead of on-policy training "
                   f"(stopped there) in {WORDS[ahead]} of them.", bullet=True)

    reached = [r for s in problems.values() for name, r in s.items()
               if name.startswith("K=") and r["tokens_ratio"] is not None]
    excepts = ", ".join(f"at alpha {r['alpha']:g} (K = {r['setting'].split(',')[0][2:]} for {r['steps']} steps: "
                        f"{r['tokens_ratio']:.1f}x)" for r in reached)
    four = [s for p, s in problems.items() if p[0] == 4]
    stale = sum(s["K=2, size 48, random"]["kl_end"] > s["K=2"]["kl_end"] for s in four)
    longer = sum(s["K=5, 2x steps"]["kl_end"] > s["K=2"]["kl_end"] for s in four)
    p4 = peaky(problems, 4.0)
    where = "everywhere at alpha 4" if stale == len(four) else f"on {WORDS[stale]} of the alpha-4 problems"
    more = "and so do" if longer == len(four) else f"and on {WORDS[longer]} of them so do"
    text += wrap("**It does not reach on-policy's final KL with 3x fewer tokens**"
                    + (f", except {excepts}" if excepts else "") + ". Per update, a replayed batch teaches less than "
                    "a fresh one, and the staler it is the less: drawing 16 at random from the 48 newest (three fresh "
                    f"batches) instead of the 16 newest ends further away {where} "
                    f"({p4['K=2, size 48, random']['kl_end']:.2f} against {p4['K=2']['kl_end']:.2f} on the peaky "
                    f"base), {more} more replay steps per fresh one (K = 5: {p4['K=5, 2x steps']['kl_end']:.2f}).",
                    bullet=True)

    further = [s for s in problems.values() if round(s["explore"]["kl_end"], 4) > round(s["on-policy"]["kl_end"], 4)]
    level = [s for s in problems.values() if round(s["explore"]["kl_end"], 4) == round(s["on-policy"]["kl_end"], 4)]
    closer4 = all(s["K=2, explore"]["kl_end"] < s["K=2"]["kl_end"] for s in four)
    worst = max(problems.values(), key=lambda s: s["K=2, explore"]["kl_end"] / s["K=2"]["kl_end"])["K=2"]
    worst_where = f"at alpha {worst['alpha']:g} " + ("at fixed length" if worst["regime"] == "fixed" else "with EOS")
    worst_explore = problems[(worst["alpha"], worst["regime"], worst["base"], worst["prompts"])]["K=2, explore"]
    text += wrap("**Exploration at T = 1/alpha does not help here**: on-policy with a quarter of the samples at "
                    f"1/alpha ends a little further from the target on {WORDS[len(further)]} problems"
                    + (" and level " + ", ".join(f"at alpha {s['on-policy']['alpha']:g}" for s in level)
                       if level else "")
                    + f" ({p4['explore']['kl_end']:.3f} against {p4['on-policy']['kl_end']:.3f} at alpha 4 on the "
                    f"peaky base); with replay it ends a little {'closer' if closer4 else 'closer or further'} at "
                    f"alpha 4 ({p4['K=2, explore']['kl_end']:.3f} against {p4['K=2']['kl_end']:.3f} on the peaky base"
                    + (", within the seeds' spread" if within_spread(p4["K=2, explore"], p4["K=2"]) else "")
                    + f") and further {worst_where} ({worst_explore['kl_end']:.4f} against {worst['kl_end']:.4f}). "
                    "These problems have 3-token completions the base already covers; exploration is for targets "
                    "whose completions sampling at 1 rarely reaches, which these are not. It is off by default.",
                    bullet=True)

    p2 = peaky(problems, 2.0)
    best, default = p4["K=2, best 0.5"], p4["K=2"]
    spread = all(within_spread(s["K=2, best 0.5"], s["K=2"]) for s in (p4, p2))
    text += wrap("`--replay-best 0.5` (half of a replayed prompt's completions its best by target) is "
                    + ("within the seeds' spread of" if spread else "no better than") + " the default "
                    f"({best['kl_end']:.2f} ± {best['kl_end_sd']:.2f} against {default['kl_end']:.2f} ± "
                    f"{default['kl_end_sd']:.2f} at alpha 4 on the peaky base, {p2['K=2, best 0.5']['kl_end']:.4f} "
                    f"against {p2['K=2']['kl_end']:.4f} at alpha 2), so `--replay-best` stays 0.", bullet=True)
    return text


# --- SmolLM2 (examples/results/replay_real.json; cpu_paths.json for the share of a step that samples)


def replay_real(result: dict, paths: dict) -> str:
    """SmolLM2: avg@k, best point, seconds and tokens per setting, and what the runs show."""
    summary, curves = result["summary"]["settings"], result["curves"]
    steps = [p["step"] for p in curves["on-policy"]]
    rows = []
    for name, s in summary.items():
        curve = curves[name]
        best = max(curve, key=lambda p: (p["avg_at_k"], -p["step"]))
        change = s["final_vs_on_policy"]
        against = "" if name == "on-policy" else (f" ({points(change)}"
                                                  + (" against on-policy)" if len(rows) == 1 else ")"))
        rows.append([f"{REAL_FLAGS[name]}, {s['final_step']} steps",
                     f"{100 * curve[0]['avg_at_k']:.1f}% -> {100 * s['final_avg_at_k']:.1f}%{against}",
                     f"{100 * best['avg_at_k']:.1f}% (step {best['step']}, {best['seconds']:.0f} s)",
                     f"{s['final_seconds']:.0f}", f"{s['final_tokens']:,.0f}"])
    text = wrap("**On SmolLM2 replay makes the result worse** "
                   "([`replay_real.md`](../examples/results/replay_real.md), "
                   "[`replay_real.png`](../examples/results/replay_real.png); `python examples/replay_real.py`, "
                   f"{result['seconds'] / 60:.0f} minutes). The demo's recipe (alpha 4, lr 1e-3) over "
                   f"{len(result['seeds'])} seeds, held-out avg@{result['k']} on {result['problems']} problems every "
                   f"{steps[1] - steps[0]} steps, seconds counting training only:") + "\n"
    text += table(["setting", f"avg@{result['k']} (seed means)", "best point", "training seconds", "sampled tokens"],
                  rows)
    return text + "\n" + real_bullets(result, paths)


def fresh_length(run: dict) -> float:
    """A run's mean completion length over its freshly sampled steps after step 1 (step 1 samples the base)."""
    fresh = [n for n, replayed in zip(run["length_mean"][1:], run["replayed"][1:]) if not replayed]
    return sum(fresh) / len(fresh)


def real_bullets(result: dict, paths: dict) -> str:
    """The bullets under the SmolLM2 table."""
    runs, summary = result["runs"], result["summary"]["settings"]
    replays = [name for name in runs if name != "on-policy"]
    never = all(summary[name]["reached_step"] is None for name in replays)
    lowest = min(r["curve"][-1]["avg_at_k"] for r in runs["K=2"])
    on_length = sum(r["length_mean"][-1] for r in runs["on-policy"]) / len(runs["on-policy"])
    kept = [sum(fresh_length(r) for r in runs[name]) / len(runs[name]) for name in replays]
    default = paths["paths"]["none/static"]  # what --quant auto and --sampler auto pick on the CPU
    share = default["time_sample"] / default["seconds_per_step"]
    text = wrap(("Replay never reaches" if never else "Replay does not always reach")
                   + f" on-policy's final {100 * summary['on-policy']['final_avg_at_k']:.1f}%, in any setting. With "
                   f"the on-policy learning rate it rises and then falls (one seed to {100 * lowest:.0f}%): two extra "
                   "updates on the same completions push the policy further than the fresh samples support. A "
                   "quarter of the learning rate on replay steps keeps it rising, but slower than on-policy per "
                   "second.", bullet=True)
    text += wrap(f"Replay also keeps the completions long: on-policy's shorten to {on_length:.0f} tokens within "
                    f"{summary['on-policy']['final_step']} steps, the replay runs' fresh samples after step 1 average "
                    f"{min(kept):.0f}-{max(kept):.0f} tokens, so their fresh steps stay slow. Even an equally useful "
                    "replay step would save well under half the wall clock on the CPU, where sampling is "
                    f"{100 * share:.0f}% of the demo's step (full precision, static sampler, at the base's lengths: "
                    "[above](#speed-on-the-cpu)); the case for replay is a GPU, where sampling is most of it. Replay "
                    "does not reach on-policy's accuracy in half the wall clock here.", bullet=True)
    return text + "* So replay and exploration are off by default and are for experiments.\n"


BLOCKS = {
    "replay-commands": Block(files=("replay_exact.json",), render=replay_commands),
    "replay-exact": Block(files=("replay_exact.json",), render=replay_exact),
    "replay-real": Block(files=("replay_real.json", "cpu_paths.json"), render=replay_real),
}
