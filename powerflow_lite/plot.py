"""`powerflow plot OUT`: the training curves of a run as one PNG, for people who would rather look than read.

    powerflow plot runs/powerflow                 # writes runs/powerflow/training.png
    powerflow plot runs/powerflow --out a.png

Panels: loss; log Z'(q) (mean ± std over the step's prompts); completion
length (mean, min-max band, and the eval samples' mean); log-prob per token of
the samples under the policy and the base; and, when the run evaluated with
--eval-every, the eval figures against the step (step 0 is before training).
Needs matplotlib: pip install 'powerflow-lite[plot]'.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import PowerflowError, first_line
from .tasks import TASKS

EVAL_PANELS = [  # (title, keys): eval_* keys of metrics.jsonl, drawn where the run has them
    *(panel for task in TASKS.values() for panel in task.plot_panels),
    ("eval: base log-prob / token", ("eval_base_logp_per_token",)),
]


def read_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise PowerflowError(f"{str(run)!r} holds no metrics.jsonl: give a powerflow train output directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise PowerflowError(f"cannot read {path}: {first_line(err)}") from None
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the rest of the file is still worth drawing
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    if not rows:
        raise PowerflowError(f"{path} has no metric rows yet")
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that have a finite `key`."""
    pairs = [(r["step"], float(r[key])) for r in rows
             if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed), or None when matplotlib is
    not installed. The example scripts' plots use it too."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_run(run: str, out: str = "", overwrite: bool = False) -> Path:
    """Draw the panels the run has data for; returns the PNG's path."""
    directory = Path(run).expanduser()
    rows = read_rows(directory)
    target = Path(out).expanduser() if out else directory / "training.png"
    if target.is_dir():
        raise PowerflowError(f"--out {str(target)!r} is a directory")
    if target.exists() and not overwrite:
        raise PowerflowError(f"{target} exists: pass --overwrite to replace it, or --out another file")
    if target.suffix.lower() != ".png":
        raise PowerflowError(f"--out {str(target)!r}: powerflow plot writes PNG files (end the name in .png)")
    plt = pyplot()
    if plt is None:
        raise PowerflowError("powerflow plot needs matplotlib: pip install 'powerflow-lite[plot]'")
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in _training_panels(rows) if p[1]] + [
        (title, [(k.removeprefix("eval_"), *series(rows, k), "o-") for k in keys if series(rows, k)[0]])
        for title, keys in EVAL_PANELS]
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        raise PowerflowError(f"{directory / 'metrics.jsonl'} has no finite values to draw yet")
    columns = 2
    figure_rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(figure_rows, columns, figsize=(11, 3.2 * figure_rows), squeeze=False)
    for axis, (title, lines) in zip(axes.flat, panels):
        for label, steps, values, style in lines:
            if label.endswith(" band"):
                axis.fill_between(steps, values[0], values[1], alpha=0.2, label=label.removesuffix(" band"))
            else:
                axis.plot(steps, values, style, label=label, markersize=3)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle(_title(directory), fontsize=11)
    figure.tight_layout()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=110, metadata={"Software": "powerflow-lite"})
    except OSError as err:
        raise PowerflowError(f"cannot write {target}: {err.strerror or first_line(err)}") from None
    finally:
        plt.close(figure)
    return target


def _training_panels(rows: list[dict]) -> list[tuple[str, list]]:
    def band(low_key: str, high_key: str, label: str):
        steps, low = series(rows, low_key)
        _, high = series(rows, high_key)
        return (label + " band", steps, (low, high), "") if steps and len(low) == len(high) else None

    def mean_std(key: str, spread: str):
        steps, mu = series(rows, key)
        _, sd = series(rows, spread)
        if not steps or len(sd) != len(mu):
            return None
        return ("± std band", steps, ([m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)]), "")

    def line(key: str, label: str, style: str = "-"):
        steps, values = series(rows, key)
        return (label, steps, values, style) if steps else None

    panels = [
        ("loss", [line("loss", "loss")]),
        ("log Z'(q)", [line("log_z_mean", "mean"), mean_std("log_z_mean", "log_z_std")]),
        ("completion length (tokens)", [line("length_mean", "mean"), band("length_min", "length_max", "min-max"),
                                        line("eval_length_mean", "eval samples", "o--")]),
        ("log-prob per token", [line("policy_logp_per_token", "policy"), line("base_logp_per_token", "base", "--")]),
    ]
    return [(title, [entry for entry in lines if entry]) for title, lines in panels]


def _title(directory: Path) -> str:
    config = directory / "config.yaml"
    if not config.is_file():
        return str(directory)
    import yaml

    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return str(directory)
    if not isinstance(saved, dict):
        return str(directory)
    return f"{directory}: {saved.get('model', '?')}, alpha={saved.get('alpha', '?')}, {saved.get('objective', '?')}"


def plot_preview(table: dict, path: str) -> None:
    """`powerflow preview --plot`: its estimates against alpha, one panel per kind of figure."""
    plt = pyplot()
    if plt is None:
        raise PowerflowError("--plot needs matplotlib: pip install 'powerflow-lite[plot]'")
    alphas = [float(a) for a in table["alphas"]]
    rows = list(table["alphas"].values())
    panels = [("agreement and accuracy", ("modal_share", "answered_share", "avg_at_1", "maj_at_k"), 100.0, "%"),
              ("length", ("length_mean",), 1.0, "tokens"), ("truncated", ("truncated_frac",), 100.0, "%"),
              ("base log-prob / token", ("base_logp_per_token",), 1.0, "nats"),
              ("semantic diversity", ("diversity",), 1.0, "0-100"), ("effective sample size", ("ess", "ess_min"), 1.0,
                                                                   f"of {table['candidates']}")]
    panels = [panel for panel in panels if any(key in rows[0] for key in panel[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys, scale, unit) in zip(axes[0], panels):
        for key in keys:
            if key in rows[0]:
                ax.plot(alphas, [scale * row[key] for row in rows], marker="o", label=key)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("alpha")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=9)
        if len(keys) > 1:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with open(path, "xb") as handle:  # a file that appeared since the check is never overwritten
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
