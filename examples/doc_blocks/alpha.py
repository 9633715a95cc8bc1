"""--alpha auto against a fixed-alpha sweep (examples/alpha_choice.py)."""

from __future__ import annotations

from alpha_choice import SEEDS, change, chosen_rows, paired  # the study's own reading of its rows

from doc_blocks import Block

ALPHA_TASKS = {"single-digit": "single-digit (40 problems)", "two-digit": "two-digit (24 problems)"}


def alpha_auto_table(result: dict) -> str:
    """Per task: the best and worst fixed alpha, what auto chose per seed, and auto's avg@4 read from the sweep's
    rows (each chosen alpha weighted by the seeds that chose it), paired with the best."""
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


BLOCKS = {"alpha-auto": Block(("alpha_choice.json",), alpha_auto_table)}
