"""--report-to tensorboard,wandb: every metrics row, and the shown samples, also go to TensorBoard or W&B.

    reporters = open_reporters("tensorboard,wandb", out, cfg_dict)   # [] for ""
    for r in reporters: r.log(row); r.samples(step, examples); r.close()

metrics.jsonl stays the record of a run (`powerflow plot` reads it); these are views of the same rows for the tools
users already watch during a long run. TensorBoard writes event files to OUT/tensorboard (`tensorboard --logdir
OUT/tensorboard`). W&B runs offline unless you are logged in (WANDB_API_KEY, or `wandb login`) or WANDB_MODE says
otherwise; an offline run lies in OUT/wandb and `wandb sync OUT/wandb/offline-run-*` uploads it later. Its id is
kept in OUT/wandb_run_id so that --resume continues the same W&B run. Only numbers are logged as scalars; the rows'
other fields stay in metrics.jsonl. Only the main process reports (metrics.MetricsLog has no path elsewhere).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import PowerflowError

REPORTERS = ("tensorboard", "wandb")
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def parse_report_to(value: str) -> tuple[str, ...]:
    """The reporters named in --report-to (comma-separated; "" or "none": none), checked."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise PowerflowError(f"--report-to {value!r}: unknown {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(REPORTERS)} (comma-separated) or none")
    return names


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers (not 'step', not booleans), the ones a dashboard can draw."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PowerflowError(f"--report-to tensorboard needs TensorBoard: {INSTALL['tensorboard']}") from None
        self.path = out / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.where = f"tensorboard: {self.path} (tensorboard --logdir {self.path})"

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()  # a crash loses at most the step in flight, as in metrics.jsonl

    def samples(self, step: int, examples: list[dict]) -> None:
        lines = ["| step | prompt | completion | tokens |", "|---|---|---|---|"]
        lines += [f"| {e['step']} | {_cell(e['prompt'])} | {_cell(e['completion'])} | {e['length']} |"
                  for e in examples]
        self.writer.add_text("samples", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise PowerflowError(f"--report-to wandb needs W&B: {INSTALL['wandb']}") from None
        self.wandb = wandb
        id_file = out / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "powerflow-lite"), name=out.name, id=run_id,
                              resume="allow", dir=str(out), config=config, mode=mode,
                              settings=wandb.Settings(silent=True, console="off"))
        id_file.write_text(run_id + "\n")
        folder = Path(self.run.dir).parent  # OUT/wandb/<mode>-run-<time>-<id>; run.dir is its files/
        self.where = (f"wandb, offline: {folder} (upload it later: wandb sync {folder})" if mode == "offline"
                      else f"wandb, {mode}: {self.run.url or folder}")

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def samples(self, step: int, examples: list[dict]) -> None:
        table = self.wandb.Table(columns=["step", "prompt", "completion", "tokens"],
                                 data=[[e["step"], e["prompt"], e["completion"], e["length"]] for e in examples])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


def _logged_in() -> bool:
    """Whether W&B has a key without asking for one (an interactive prompt would stall a background run)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped, long texts cut."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:300] + ("..." if len(text) > 300 else "")


def open_reporters(report_to: str, out: Path, config: dict) -> list:
    """The reporters --report-to names, opened on OUT (each checks its package is installed)."""
    return [TensorBoard(out) if name == "tensorboard" else WandB(out, config) for name in parse_report_to(report_to)]
