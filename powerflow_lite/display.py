"""What `powerflow train` shows while it runs: the CLI's presentation layer, used only by cli.py.

On a terminal: a progress bar with ETA above a live table of the latest step's
key figures, and every --show-every steps one prompt with its completion.
Elsewhere (CI logs, `| tee`): one plain line per step.
"""

from __future__ import annotations

from typing import Iterable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .train import StepResult

ROWS = [  # (label, how to render the metrics row)
    ("loss", lambda m: f"{m['loss']:.4g}"),
    ("log Z' mean ± std", lambda m: f"{m['log_z_mean']:.3f} ± {m['log_z_std']:.3f}"),
    ("residual mean ± std", lambda m: f"{m['residual_mean']:+.3f} ± {m['residual_std']:.3f}"),
    ("length mean [min, max]", lambda m: f"{m['length_mean']:.1f} [{m['length_min']}, {m['length_max']}]"),
    ("truncated / with format", lambda m: f"{m['truncated_frac']:.0%} / {m['format_frac']:.0%}"),
    ("log-prob/token policy | base", lambda m: f"{m['policy_logp_per_token']:.3f} | {m['base_logp_per_token']:.3f}"),
    ("IS clipped / grad norm", lambda m: f"{m['clip_frac']:.0%} / {m['grad_norm']:.3g}"),
    ("lr", lambda m: f"{m['lr']:.2e}"),
    ("sample tok/s", lambda m: f"{m['sample_tokens_per_s']:.1f}"),
    ("seconds sample/score/update",
     lambda m: f"{m['time_sample']:.1f} / {m['time_score']:.1f} / {m['time_update']:.1f}"),
]


def plain_line(result: StepResult) -> str:
    m = result.metrics
    return (f"step {result.step}/{result.max_steps}  loss {m['loss']:.4g}  log_z {m['log_z_mean']:.3f}"
            f"±{m['log_z_std']:.3f}  len {m['length_mean']:.1f}  trunc {m['truncated_frac']:.0%}  "
            f"logp pi/base {m['policy_logp_per_token']:.3f}/{m['base_logp_per_token']:.3f}  "
            f"grad {m['grad_norm']:.3g}  {m['sample_tokens_per_s']:.1f} tok/s")


def _table(result: StepResult | None) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for label, render in ROWS:
        table.add_row(Text(label), Text(render(result.metrics) if result else "…"))
    if result and "peak_gpu_mem_gib" in result.metrics:
        table.add_row(Text("peak GPU memory"), Text(f"{result.metrics['peak_gpu_mem_gib']:.2f} GiB"))
    return table


def _example_panel(result: StepResult) -> Panel:
    example = result.example
    end = "cut at --max-new-tokens" if example["truncated"] else "ended with EOS"
    body = Text.assemble(("prompt: ", "bold"), example["prompt"].strip(), "\n", ("completion: ", "bold"),
                         example["completion"].strip())
    return Panel(body, title=f"step {result.step}: {example['length']} tokens, {end}", title_align="left")


def show_training(steps: Iterable[StepResult], console: Console, start_step: int, max_steps: int) -> StepResult | None:
    """Consume the training generator, drawing as it goes; returns the last step's result."""
    last = None
    if not console.is_terminal:
        for last in steps:
            console.print(plain_line(last), highlight=False, soft_wrap=True)
            if last.example:
                console.print(f"  example: {last.example['completion'].strip()[:300]!r}", highlight=False,
                              soft_wrap=True)
        return last
    progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
    task = progress.add_task("train", total=max_steps, completed=start_step)
    with Live(Group(progress, _table(None)), console=console, refresh_per_second=4) as live:
        for last in steps:
            progress.update(task, completed=last.step)
            if last.example:
                live.console.print(_example_panel(last))
            live.update(Group(progress, _table(last)))
    return last
