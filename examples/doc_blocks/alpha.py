"""--alpha auto against a fixed-alpha sweep (examples/alpha_choice.py)."""

from __future__ import annotations

from alpha_choice import RECIPE, RECIPES, SEEDS, change, chosen_rows, paired  # the study's own reading of its rows

from doc_blocks import Block, span, wrap

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


# --- the README's words around the table (docs/choosing-alpha.md says more: doc_blocks/preview.py)


def auto_verdict(result: dict) -> tuple[str, str]:
    """The seeds' spread of avg@4 over the sweep's rows ('5-13'), and where auto lands against the best and the
    worst fixed alpha, in a sentence chosen by the figures."""
    tables = result["tables"]
    spread = [100 * row["avg_at_k_seed_std"] for tab in tables.values() for row in tab["rows"].values()]
    within, worst_chosen = [], []
    for tab in tables.values():
        rows = tab["rows"]
        vs = paired(chosen_rows(tab, "avg_at_k"), rows[tab["best"]]["per_problem"]["avg_at_k"])
        within.append(vs["mean"] + 2 * vs["stderr"] >= 0)
        worst = min(rows, key=lambda alpha: rows[alpha]["avg_at_k"])
        worst_chosen.append(worst in {f"{alpha:g}" for alpha in tab["auto"]["alphas"]})
    lands = ("On both tasks auto lands within two standard errors of the best fixed alpha" if all(within) else
             "On some task auto lands more than two standard errors below the best fixed alpha")
    lands += ", and never on the worst." if not any(worst_chosen) else ", and on the worst at least once."
    return span(spread, ".0f"), lands


def auto_rule(result: dict) -> str:
    """What --alpha auto does and costs (its previews' seconds), and the sweep that checks it."""
    seconds = [tab["auto"]["preview_seconds"] for tab in result["tables"].values()]
    alphas = [f"{alpha:g}" for alpha in result["alphas"]]
    return ("`powerflow train --alpha auto` runs the preview on 24 of your training prompts "
            f"({min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} minutes on 2\nCPU cores for SmolLM2) and picks the "
            "alpha after which the modal-answer share gains less than 5\npoints per doubling of alpha (among "
            f"{', '.join(alphas[:-1])} and {alphas[-1]} with an ESS of 2 or more). The choice is in the\nrun header "
            "and `OUT/alpha_preview.json`. It needs prompts whose answers end in a final answer; for\ncreative "
            "writing give `--alpha`. Checked on SmolLM2-135M against training at alpha "
            f"{', '.join(alphas[:-1])} and {alphas[-1]}\n({len(SEEDS)} seeds each, {RECIPES[RECIPE][2]['max_steps']} "
            f"steps, two arithmetic tasks; held-out avg@{result['preview']['k']}):\n")


def auto_reading(result: dict) -> str:
    """The seeds' spread, and where auto lands against the best and the worst fixed alpha."""
    spread, lands = auto_verdict(result)
    return wrap("± is the standard error of the paired per-problem difference (seeds averaged first); the seeds' "
                f"own spread is {spread} points. {lands} Details: "
                "[examples/results/alpha_choice.md](examples/results/alpha_choice.md) "
                "(`python examples/alpha_choice.py`) and "
                "[docs/choosing-alpha.md](docs/choosing-alpha.md#--alpha-auto).", width=102)


BLOCKS = {
    "alpha-auto": Block(("alpha_choice.json",), alpha_auto_table),
    "alpha-auto-readme": Block(("alpha_choice.json",), lambda result: "\n".join(
        (auto_rule(result), alpha_auto_table(result), auto_reading(result)))),
}
