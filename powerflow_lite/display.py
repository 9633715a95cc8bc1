"""What `powerflow train` and `powerflow eval` show: the CLI's presentation layer, used only by cli.py.

train, on a terminal: a progress bar with ETA above a live table of the latest
step's key figures, and every --show-every steps one prompt with its completion.
Elsewhere (CI logs, `| tee`): one plain line per step.
eval: a progress bar over the completions, then one table (base and adapter side by side).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .tasks import COMMON_ROWS, POWER_ROWS, TASKS, Row, percent
from .train import StepResult

ROWS = [  # (label, how to render the metrics row)
    ("loss", lambda m: f"{m['loss']:.4g}"),
    ("log Z' mean ± std", lambda m: f"{m['log_z_mean']:.3f} ± {m['log_z_std']:.3f}"),
    ("log Z' batch estimate | head lag", lambda m: f"{m.get('log_z_batch_mean', float('nan')):.3f} | "
                                                   f"{m.get('log_z_gap', float('nan')):+.3f}"),
    ("residual mean ± std", lambda m: f"{m['residual_mean']:+.3f} ± {m['residual_std']:.3f}"),
    ("length mean [min, max]", lambda m: f"{m['length_mean']:.1f} [{m['length_min']}, {m['length_max']}]"),
    ("truncated / with format", lambda m: f"{m['truncated_frac']:.0%} / {m['format_frac']:.0%}"),
    ("log-prob/token policy | base", lambda m: f"{m['policy_logp_per_token']:.3f} | {m['base_logp_per_token']:.3f}"),
    ("IS clipped / grad norm", lambda m: f"{m['clip_frac']:.0%} / {m['grad_norm']:.3g}"),
    ("lr", lambda m: f"{m['lr']:.2e}"),
    ("sample tok/s", lambda m: _rate(m)),
    ("seconds sample/score/update",
     lambda m: f"{m['time_sample']:.1f} / {m['time_score']:.1f} / {m['time_update']:.1f}"),
]


def eval_text(m: dict) -> str:
    """The eval figures of a metrics row in a few words ("" when the step did not evaluate)."""
    return next((text for task in TASKS.values() if (text := task.line(m))), "")


def plain_line(result: StepResult) -> str:
    m = result.metrics
    evaluated = f"\n  eval: {eval_text(m)}" if eval_text(m) else ""
    return (f"step {result.step}/{result.max_steps}  loss {m['loss']:.4g}  log_z {m['log_z_mean']:.3f}"
            f"±{m['log_z_std']:.3f}  len {m['length_mean']:.1f}  trunc {m['truncated_frac']:.0%}  "
            f"logp pi/base {m['policy_logp_per_token']:.3f}/{m['base_logp_per_token']:.3f}  "
            f"grad {m['grad_norm']:.3g}  {_rate(m)}{' tok/s' if not m.get('replayed') else ''}{_skipped(m)}"
            f"{evaluated}")


def _rate(m: dict) -> str:
    """Sampled tokens per second, or what a replay step did instead of sampling."""
    return "replayed" if m.get("replayed") else f"{m['sample_tokens_per_s']:.1f}"


def _skipped(m: dict) -> str:
    return "  update skipped: not finite" if m.get("update_skipped") else ""


def _notes(result: StepResult) -> list[str]:
    return [f"warning: {note}" for note in result.notes]


def _table(result: StepResult | None) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for label, render in ROWS:
        table.add_row(Text(label), Text(render(result.metrics) if result else "…"))
    if result and "peak_gpu_mem_gib" in result.metrics:
        table.add_row(Text("peak GPU memory"), Text(f"{result.metrics['peak_gpu_mem_gib']:.2f} GiB"))
    elif result and "peak_rss_gib" in result.metrics:
        table.add_row(Text("peak memory (RSS)"), Text(f"{result.metrics['peak_rss_gib']:.2f} GiB"))
    return table


def _eval_title(result: StepResult) -> str:
    return "eval before training" if result.step == 0 else f"eval after step {result.step}"


def _eval_panel(result: StepResult) -> Panel:
    return Panel(Text(eval_text(result.metrics)), title=_eval_title(result), title_align="left")


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
            if last.step == 0:  # the eval before training: no loss yet
                console.print(f"{_eval_title(last)}: {eval_text(last.metrics)}", highlight=False, soft_wrap=True)
                continue
            for note in _notes(last):
                console.print(note, highlight=False, soft_wrap=True, markup=False)
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
            if last.step == 0:  # the eval before training: no loss yet
                live.console.print(_eval_panel(last))
                continue
            progress.update(task, completed=last.step)
            for note in [*_notes(last), _skipped(last.metrics).strip()]:
                if note:
                    live.console.print(Text(f"step {last.step}: {note}", style="yellow"))
            if last.example:
                live.console.print(_example_panel(last))
            if eval_text(last.metrics):
                live.console.print(_eval_panel(last))
            live.update(Group(progress, _table(last)))
    return last


def eval_rows(summary: dict) -> list[Row]:
    """(label, summary key, format) for the figures this summary has, in reading order: the task's, then every
    task's."""
    some = next(iter(summary["results"].values()))
    cost = [(label, key, render) for label, key, render in POWER_ROWS
            if any(key in result for result in summary["results"].values())]
    return TASKS[summary["task"]].rows(some, summary["k"]) + COMMON_ROWS + cost


def _lookup(result: dict, key: str) -> float | None:
    for part in key.split("."):
        result = result.get(part) if isinstance(result, dict) else None
    return result


def eval_table(summary: dict) -> Table:
    """One column per variant (base and adapter, or before and after training, with the base at T = 1/alpha
    between them under --eval-tempered); then the last one's change from the first (and from the tempered base)."""
    results = summary["results"]
    title = (f"{summary['task']}: {summary['data']}, {summary['prompts']} prompts x {summary['k']} samples"
             f" ({summary['seconds']:.0f} s)")
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for variant in results:
        table.add_column(variant, justify="right")
    names = list(results)
    changes = []  # (the figures compared with the last variant's, their paired changes)
    if len(results) >= 2 and "change" in summary:  # base and adapter, or before and after training
        changes.append((names[0], summary["change"]))
        table.add_column("change", justify="right")
    if "change_vs" in summary:
        changes.append((summary["change_vs"]["name"], summary["change_vs"]["change"]))
        table.add_column(f"vs {summary['change_vs']['name'].removeprefix('base, ')}", justify="right")
    for label, key, render in eval_rows(summary):
        values = {name: _lookup(result, key) for name, result in results.items()}
        cells = [render(v) if v is not None else "-" for v in values.values()]
        for name, paired_changes in changes:
            if values[name] is None or values[names[-1]] is None or key.endswith("_stderr"):
                cells.append("")  # a figure one variant lacks, or a standard error's own change: no change
                continue
            paired = paired_changes.get("pass_at_k" if key == f"pass_at.{summary['k']}" else key)
            # with a paired entry, its mean: the change its ± belongs to (for base log-prob / token, the mean of the
            # per-prompt changes, which differs a little from the change of the token-weighted figures beside it)
            delta = paired["mean"] if paired else values[names[-1]] - values[name]
            cells.append(_change(delta, render, paired))
        table.add_row(label, *cells)
    return table


def samples_text(summary: dict, width: int = 160) -> str:
    """Two completions of the first eval prompt per variant of a before/after summary, one line each."""
    samples = summary.get("samples") or {}
    prompt = next((s["prompt"] for s in samples.values() if s["prompt"]), "")
    if not prompt:
        return ""
    lines = [f"samples for the first eval prompt, {prompt!r}:"]
    for name, found in samples.items():
        for completion in found["completions"]:
            text = " ".join(completion.split())
            lines.append(f"  {name}: {text[:width] + ('...' if len(text) > width else '')}")
    return "\n".join(lines)


def _change(delta: float, render, paired: dict | None) -> str:
    """The adapter's change, with the paired standard error where the summary has one."""
    if render is percent:
        text = f"{100 * delta:+.1f}" if round(100 * delta, 1) else "0.0"
        error = f" ± {100 * paired['stderr']:.1f}" if paired else ""
        return f"{text}{error} pts"
    magnitude = render(abs(delta))
    sign = "" if float(magnitude) == 0 else ("+" if delta > 0 else "-")
    return sign + magnitude + (f" ± {render(paired['stderr'])}" if paired else "")


@contextmanager
def eval_progress(console: Console):
    """A progress bar over the completions, as a callback for evaluate(); silent off a terminal."""
    if not console.is_terminal:
        yield None
        return
    progress = Progress(TextColumn("[bold]sampling {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("completions"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, transient=True)
    task = progress.add_task("", total=None)

    def update(done: int, total: int, variant: str) -> None:
        progress.update(task, completed=done, total=total, description=variant)

    with progress:
        yield update


PREVIEW_COLUMNS = [  # (header, key, render): the preview table's columns, when the preview has the figure
    ("ESS", "ess", lambda v: f"{v:.1f}"), ("min ESS", "ess_min", lambda v: f"{v:.1f}"),
    ("length", "length_mean", lambda v: f"{v:.1f}"), ("cut", "truncated_frac", lambda v: f"{v:.0%}"),
    ("logp/token", "base_logp_per_token", lambda v: f"{v:.3f}"), ("answered", "answered_share", lambda v: f"{v:.0%}"),
    ("modal", "modal_share", lambda v: f"{v:.1%}"), ("avg@1", "avg_at_1", lambda v: f"{v:.1%}"),
    ("maj@k", "maj_at_k", lambda v: f"{v:.1%}"), ("diversity", "diversity", lambda v: f"{v:.1f}"),
]


def preview_table(table: dict, min_ess: float) -> Table:
    """One row per alpha: what p_alpha would be like, estimated from the base's samples (* : an alpha whose
    estimates rest on fewer than `min_ess` samples per prompt)."""
    rows = table["alphas"]
    first = next(iter(rows.values()))
    title = (f"p_base^alpha, previewed: {table['prompts']} prompts x {table['candidates']} base samples at "
             f"temperatures {', '.join(f'{t:g}' for t in table['temperatures'])} ({table['seconds']:.0f} s)")
    out = Table(title=title, title_justify="left")
    out.add_column("alpha", justify="right")
    columns = [(header.replace("@k", f"@{table['k']}"), key, render) for header, key, render in PREVIEW_COLUMNS
               if key in first]
    for header, _, _ in columns:
        out.add_column(header, justify="right")
    for alpha, row in rows.items():
        cells = [render(row[key]) if row[key] == row[key] else "-" for _, key, render in columns]  # NaN: "-"
        out.add_row(alpha + (" *" if row["ess"] < min_ess else ""), *cells)
    return out
