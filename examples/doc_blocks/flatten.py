"""Flattening at matched diversity (examples/flatten_real.py)."""

from __future__ import annotations

from doc_blocks import Block

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


BLOCKS = {
    "flatten-glance": Block(("flatten_real.json",), lambda study: flatten_table(study, FLATTEN_GLANCE)),
    "flatten-table": Block(("flatten_real.json",), flatten_table),
}
