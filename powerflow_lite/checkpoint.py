"""The output directory (DESIGN section 8): checkpoints written atomically, resume, final adapter.

    OUT/config.yaml, OUT/metrics.jsonl
    OUT/checkpoint-N/   adapter_model.safetensors, adapter_config.json, z_head.safetensors,
                        optimizer.pt, scheduler.pt, trainer_state.json
    OUT/adapter/        the final adapter (PEFT format) + z_head.safetensors

A checkpoint is written under a temporary name and renamed into place, and
`trainer_state.json` is its last file, so a directory named checkpoint-N is
always complete. There is no data loader or RNG state to save: the prompts and
the random draws of step s are functions of (seed, s) (see `data.prompt_indices`
and `train.seed_step`), so the step number alone puts a resumed run back on track.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from .errors import PowerflowError, first_line
from .partition import LogZHead, save_head

STATE_FILE = "trainer_state.json"
RUN_MARKERS = ("config.yaml", "metrics.jsonl")


def check_output_dir(output: str, resume: bool, overwrite: bool) -> Path:
    """Refuse an unusable --output before anything is loaded or written (no side effects)."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise PowerflowError(f"--output {output!r} exists and is not a directory")
    exists = out.is_dir() and any(out.iterdir())
    if resume and not exists:
        raise PowerflowError(f"--resume: {output!r} holds no run to resume")
    if exists and not resume and not overwrite:
        raise PowerflowError(f"output directory {output!r} already exists: pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --output")
    if exists and not resume and not any((out / marker).exists() for marker in RUN_MARKERS):
        raise PowerflowError(f"--overwrite refused: {output!r} does not look like a powerflow output "
                             "directory (no config.yaml or metrics.jsonl), so nothing was deleted")
    check_writable(out)
    return out


def check_writable(path: Path) -> None:
    """The directory `path` (or the nearest parent that exists) must be writable; creates nothing."""
    nearest = path
    while not nearest.exists():
        nearest = nearest.parent
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PowerflowError(f"cannot write to --output {str(path)!r}: {str(nearest)!r} is not writable")


def create_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """After all inputs are checked: delete a previous run (--overwrite) and make the directory."""
    if overwrite and not resume and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PowerflowError(f"cannot write to --output {str(out)!r}: {err.strerror}") from None


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match and (path / STATE_FILE).is_file() else None


def resume_checkpoint(out: Path, resume_from: str = "") -> Path:
    """The checkpoint to resume: --resume-from (inside --output, with nothing newer) or the newest complete one."""
    if not resume_from:
        path = latest_checkpoint(out)
        if path is None:
            raise PowerflowError(f"--resume: {str(out)!r} has no complete checkpoint yet")
        return path
    path = Path(resume_from).expanduser()
    step = checkpoint_step(path)
    if step is None:
        raise PowerflowError(f"--resume-from {resume_from!r} is not a complete checkpoint directory")
    if path.resolve().parent != out.resolve():
        raise PowerflowError(f"--resume-from {resume_from!r} is not inside --output {str(out)!r}")
    newer = sorted(p.name for p in out.glob("checkpoint-*") if (checkpoint_step(p) or 0) > step)
    if newer:
        raise PowerflowError(f"--resume-from {resume_from!r}: {', '.join(newer)} would be overwritten by the "
                             "resumed run; move them away (or copy the run) to branch from an older checkpoint")
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    complete = [(checkpoint_step(p), p) for p in out.glob("checkpoint-*") if checkpoint_step(p) is not None]
    return max(complete)[1] if complete else None


def save_adapter(directory: Path, model, head: LogZHead) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    save_head(head, directory)


def save_checkpoint(out: Path, step: int, model, head: LogZHead, optimizer, scheduler, state: dict) -> Path:
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapter(tmp, model, head)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    replace_dir(tmp, final)
    return final


def save_final_adapter(out: Path, model, head: LogZHead) -> Path:
    final, tmp = out / "adapter", out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(tmp, model, head)
    replace_dir(tmp, final)
    return final


def replace_dir(tmp: Path, final: Path) -> None:
    """Put a fully written `tmp` in place of `final`; a crash at any point leaves one complete copy on disk."""
    old = final.with_name("." + final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, head: LogZHead, optimizer, scheduler) -> dict:
    """Restore adapter, head, optimizer and scheduler in place; returns trainer_state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if checkpoint_step(path) is None:
        raise PowerflowError(f"{str(path)!r} is not a complete checkpoint directory")
    try:
        result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"unexpected adapter weights {result.unexpected_keys[:3]}")
        head.load_state_dict(load_file(str(path / "z_head.safetensors")))
        device = next(head.parameters()).device
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        return json.loads((path / STATE_FILE).read_text())
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise PowerflowError(f"checkpoint {str(path)!r} does not match this run's model, LoRA or head settings "
                             f"(was --model, --lora-r, --lora-targets or --z-hidden changed?): {first_line(err)}"
                             ) from None


def _row_step(line: str) -> int | None:
    """The step of a metrics line, or None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows after `last_step` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if (row_step := _row_step(line)) is not None and row_step <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
