"""The study of whether training is worth it (examples/power_real.py)."""

from __future__ import annotations

from doc_blocks import Block

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


BLOCKS = {
    "power-real-glance": Block(("power_real.json",), lambda study: power_table(study, GLANCE)),
    "power-real-table": Block(("power_real.json",), lambda study: power_table(study, FULL)),
}
