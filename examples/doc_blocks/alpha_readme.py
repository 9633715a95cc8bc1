"""The README's prose around `--alpha auto`'s table (examples/alpha_choice.py): what auto costs, and what the table
shows. docs/choosing-alpha.md says more, from the same file (doc_blocks/preview.py)."""

from __future__ import annotations

from alpha_choice import RECIPE, RECIPES, SEEDS, chosen_rows, paired  # the study's own reading of its rows

from doc_blocks import Block


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
    tables = result["tables"]
    spread = [row["avg_at_k_seed_std"] for tab in tables.values() for row in tab["rows"].values()]
    within, worst_chosen = [], []
    for tab in tables.values():
        rows = tab["rows"]
        vs = paired(chosen_rows(tab, "avg_at_k"), rows[tab["best"]]["per_problem"]["avg_at_k"])
        within.append(vs["mean"] + 2 * vs["stderr"] >= 0)
        worst = min(rows, key=lambda alpha: rows[alpha]["avg_at_k"])
        worst_chosen.append(worst in {f"{alpha:g}" for alpha in tab["auto"]["alphas"]})
    lands = ("On both tasks auto lands within two standard errors of the best fixed alpha" if all(within) else
             "On some task auto lands more than two standard errors below the best fixed alpha")
    lands += (",\nand never on the worst." if not any(worst_chosen) else ",\nand on the worst at least once.")
    return ("± is the standard error of the paired per-problem difference (seeds averaged first); the seeds' own\n"
            f"spread is {100 * min(spread):.0f}-{100 * max(spread):.0f} points. {lands} Details: "
            "[examples/results/alpha_choice.md](examples/results/alpha_choice.md)\n(`python examples/alpha_choice.py`) "
            "and [docs/choosing-alpha.md](docs/choosing-alpha.md#--alpha-auto).\n")


BLOCKS = {
    "alpha-auto-readme-rule": Block(("alpha_choice.json",), auto_rule),
    "alpha-auto-readme-reading": Block(("alpha_choice.json",), auto_reading),
}
