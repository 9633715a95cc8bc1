"""The output directory (docs/design.md section 8): checkpoints written atomically, resume, final adapter.

    OUT/config.yaml, OUT/metrics.jsonl
    OUT/checkpoint-N/   adapter_model.safetensors, adapter_config.json, z_head.safetensors,
                        optimizer.safetensors + optimizer.json, scheduler.json, trainer_state.json
                        (+ replay.safetensors with --replay-steps)
    OUT/adapter/        the final adapter (PEFT format) + z_head.safetensors

A checkpoint is written under a temporary name, synced to disk and renamed into
place, and `trainer_state.json` is its last file, so a directory named
checkpoint-N is always complete; old ones are renamed away before they are
deleted (--keep-checkpoints). There is no data loader or RNG state to save: the
random draws of step s are functions of (seed, s) (seeds.py) and its
prompts of (seed, fresh steps so far) (`seeds.prompt_indices`), so the run's
live state (state.TrainState: the step, the count of fresh steps, ... and, with
--replay-steps, the buffer) puts a resumed run back on track. Nothing is
pickled: tensors go to safetensors, the rest of the optimizer and scheduler
state to JSON.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import PowerflowError, first_line
from .log_z import LogZHead, save_head
from .modelcard import adapter_card, copy_template, write_card
from .replay import FILENAME as REPLAY_FILE
from .replay import ReplayBuffer
from .state import TrainState

STATE_FILE = "trainer_state.json"
RUN_MARKERS = ("config.yaml", "metrics.jsonl")


def refuse_to_replace(out: Path, shown: str, overwrite: bool, markers: tuple[str, ...], what: str,
                      also: str = "") -> None:
    """A non-empty --output is replaced only with --overwrite, and only when it holds one of `markers` (what a
    powerflow command writes there); otherwise one line, and nothing deleted. `also`: another way out, named."""
    if out.exists() and not out.is_dir():
        raise PowerflowError(f"--output {shown!r} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise PowerflowError(f"output directory {shown!r} already exists: pass {also}--overwrite to replace it, "
                             "or choose another --output")
    if not any((out / marker).exists() for marker in markers):
        raise PowerflowError(f"--overwrite refused: {shown!r} does not look like {what} (no {' or '.join(markers)}), "
                             "so nothing was deleted")


def check_output_dir(output: str, resume: bool, overwrite: bool) -> Path:
    """Refuse an unusable --output before anything is loaded or written (no side effects)."""
    out = Path(output).expanduser()
    if resume:
        if out.exists() and not out.is_dir():
            raise PowerflowError(f"--output {output!r} exists and is not a directory")
        if not (out.is_dir() and any(out.iterdir())):
            raise PowerflowError(f"--resume: {output!r} holds no run to resume")
    else:
        refuse_to_replace(out, output, overwrite, RUN_MARKERS, "a powerflow output directory",
                          also="--resume to continue it, ")
    check_writable(out)
    return out


def check_writable(path: Path) -> None:
    """The directory `path` (or the nearest parent that exists) must be writable; creates nothing."""
    nearest = _nearest_existing(path)
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise PowerflowError(f"cannot write to --output {str(path)!r}: {str(nearest)!r} is not writable")


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest parent that exists: what will hold it once created."""
    while not path.exists():
        path = path.parent
    return path


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


def resume_checkpoint(out: Path, resume_from: str = "") -> Path | None:
    """The checkpoint to resume: --resume-from (inside --output, with nothing newer) or the newest complete one.

    None for a run stopped before its first checkpoint: it restarts from step 0.
    """
    if not resume_from:
        path = latest_checkpoint(out)
        if path is None and not (out / "config.yaml").is_file():
            raise PowerflowError(f"--resume: {str(out)!r} holds no powerflow run (no config.yaml); "
                                 "drop --resume to start one there")
        if path is None and (out / "adapter").is_dir():
            raise PowerflowError(f"--resume: {str(out)!r} has a final adapter but no checkpoint to continue from "
                                 "(were they deleted?); use --overwrite to train it again from the start")
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


def save_checkpoint(out: Path, model, head: LogZHead, optimizer, scheduler, state: TrainState) -> Path:
    """checkpoint-N (N: state.step), atomically: the weights, the optimizer and scheduler, and the live state whole
    (its replay buffer, when it has one, in a file of its own)."""
    step = state.step
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_adapter(tmp, model, head)
        save_state(optimizer.state_dict(), tmp / "optimizer")
        (tmp / "scheduler.json").write_text(json.dumps(encode(scheduler.state_dict())))
        if state.replay is not None:
            tensors, meta = state.replay.state()
            save_file(tensors, str(tmp / REPLAY_FILE), metadata=meta)
        (tmp / STATE_FILE).write_text(state.to_json())
        sync_tree(tmp)
        replace_dir(tmp, final)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a failed write
        shutil.rmtree(tmp, ignore_errors=True)
        if not disk_full(err):
            raise
        latest = latest_checkpoint(out)
        raise PowerflowError(f"the disk of --output is full: checkpoint-{step} was not written; the newest complete "
                             f"one is {latest.name if latest else 'none'}. Free space (or pass --keep-checkpoints N) "
                             f"and continue with --resume") from None
    return final


def disk_full(err: BaseException) -> bool:
    """No space or over quota, as an OSError or as safetensors' own error (which only says "os error 28")."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(f"os error {code}" in str(err) for code in (errno.ENOSPC, errno.EDQUOT))


def write_atomically(path: Path, text: str) -> None:
    """A kill mid-write leaves the old file, never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints; each is renamed away first, so none is half-deleted."""
    complete = sorted((checkpoint_step(p), p) for p in out.glob("checkpoint-*") if checkpoint_step(p) is not None)
    for _, path in complete[:-keep] if keep else []:
        doomed = path.with_name(f".{path.name}.deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def remove_leftovers(out: Path) -> None:
    """Half-written or half-deleted checkpoints of a run that was killed: never complete, never used."""
    for path in [*out.glob(".checkpoint-*.tmp"), *out.glob(".checkpoint-*.deleting")]:
        shutil.rmtree(path, ignore_errors=True)


def checkpoint_bytes(trainable: int) -> int:
    """About what one checkpoint takes: fp32 LoRA weights and AdamW's two moments (12 bytes per parameter)."""
    return 12 * trainable + 2**20


def check_free_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(_nearest_existing(out)).free
    if free < needed:
        raise PowerflowError(f"not enough disk space for --output {str(out)!r}: {free / 2**20:.0f} MiB free, the "
                             f"run's checkpoints and adapter need about {needed / 2**20:.0f} MiB "
                             "(pass --keep-checkpoints N or a larger --save-every, or free space)")


def sync_tree(directory: Path) -> None:
    """fsync every file of `directory` and the directory itself, so that what a rename publishes is on disk."""
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    sync_dir(directory)


def sync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_state(state: dict, stem: Path) -> None:
    """A state dict as stem.safetensors (its tensors) + stem.json (the rest, tensors replaced by their names)."""
    tensors: dict[str, torch.Tensor] = {}
    stem.with_suffix(".json").write_text(json.dumps(encode(state, tensors)))
    # Copies on the CPU: an optimizer may share one tensor between states, which safetensors refuses.
    save_file({name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()},
              str(stem.with_suffix(".safetensors")))


def load_state(stem: Path, device: torch.device | str = "cpu") -> dict:
    return decode(json.loads(stem.with_suffix(".json").read_text()), load_file(str(stem.with_suffix(".safetensors")),
                                                                                device=str(device)))


def encode(value, tensors: dict | None = None):
    """JSON for nested dicts/lists/tuples of numbers, strings and tensors, keeping int keys and tuples."""
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise TypeError("a tensor needs a tensors dict to go to")
        name = str(len(tensors))
        tensors[name] = value
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [encode(v, tensors) for v in value]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a checkpoint")


def decode(value, tensors: dict | None = None):
    if not isinstance(value, dict):
        return value
    (kind, inner), = value.items()
    if kind == "tensor":
        return tensors[inner]
    if kind == "dict":
        return {decode(k): decode(v, tensors) for k, v in inner}
    if kind == "float":
        return float(inner)
    items = [decode(v, tensors) for v in inner]
    return tuple(items) if kind == "tuple" else items


def save_final_adapter(out: Path, model, head: LogZHead) -> Path:
    """OUT/adapter, atomically; in a run's directory with its model card (README.md) in place of PEFT's template."""
    final, tmp = out / "adapter", out / ".adapter.tmp"
    card = adapter_card(out)  # before anything is written: a run whose files it cannot read keeps its old adapter
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_adapter(tmp, model, head)
        if card is not None:
            write_card(tmp, card)
            copy_template(out, tmp)
        sync_tree(tmp)
    except Exception as err:  # noqa: BLE001 - see save_checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        if not disk_full(err):
            raise
        raise PowerflowError("the disk of --output is full: the final adapter was not written (the last "
                             "checkpoint holds the same weights); free space and run again with --resume") from None
    replace_dir(tmp, final)
    return final


def replace_dir(tmp: Path, final: Path) -> None:
    """Put a fully written `tmp` in place of `final`; a crash at any point leaves one complete copy on disk."""
    old = final.with_name("." + final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    sync_dir(final.parent)  # the rename itself, for a power cut
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, head: LogZHead, optimizer, scheduler) -> TrainState:
    """Restore adapter, head, optimizer and scheduler in place; returns the live state as saved, its replay buffer
    with it when the checkpoint has one (TrainState.under applies an invocation's settings)."""
    if checkpoint_step(path) is None:
        raise PowerflowError(f"{str(path)!r} is not a complete checkpoint directory")
    if not (path / "optimizer.safetensors").is_file():
        raise PowerflowError(f"checkpoint {str(path)!r} has no optimizer.safetensors (an older powerflow-lite "
                             "pickled it): its adapter still works with sample and merge-adapter, but it cannot be "
                             "resumed")
    try:
        set_adapter_weights(model, path / "adapter_model.safetensors")
        head.load_state_dict(load_file(str(path / "z_head.safetensors")))
        device = next(head.parameters()).device
        optimizer.load_state_dict(load_state(path / "optimizer", device))
        scheduler.load_state_dict(decode(json.loads((path / "scheduler.json").read_text())))
        state = TrainState.from_json((path / STATE_FILE).read_text())
    except (RuntimeError, ValueError, KeyError, OSError, TypeError) as err:
        raise PowerflowError(f"checkpoint {str(path)!r} does not match this run's model, LoRA or head settings "
                             f"(was --model, --lora-r, --lora-targets or --z-hidden changed?): {first_line(err)}"
                             ) from None
    state.replay = load_replay(path)
    return state


def set_adapter_weights(model, file: Path) -> None:
    """Load a saved adapter's weights into the model's adapter of the same shape (PEFT's own loading); raises when
    a weight is missing, left over or of another size."""
    from peft import set_peft_model_state_dict  # peft is slow to import: not for every command that saves files

    result = set_peft_model_state_dict(model, load_file(str(file)))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected adapter weights {result.unexpected_keys[:3]}")
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    if missing:
        raise ValueError(f"no saved weights for {missing[:3]}")


def load_adapter_weights(model, directory: Path, flag: str) -> None:
    """A saved adapter's weights (`flag` names the option that gave it), or one line saying why they do not fit."""
    file = directory / "adapter_model.safetensors"
    if not file.is_file():
        raise PowerflowError(f"{flag} {str(directory)!r} has no adapter_model.safetensors (powerflow-lite reads "
                             "safetensors weights only)")
    try:
        set_adapter_weights(model, file)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise PowerflowError(f"{flag} {str(directory)!r} does not fit this model (was it trained on another base?): "
                             f"{first_line(err)}") from None


def load_replay(path: Path) -> ReplayBuffer | None:
    """The replay buffer saved in checkpoint `path`, or None when it has none."""
    file = path / REPLAY_FILE
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata()
        return ReplayBuffer.from_state(load_file(str(file)), meta)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise PowerflowError(f"the replay buffer {str(file)!r} cannot be read: {first_line(err)}") from None


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
    write_atomically(path, "".join(line + "\n" for line in kept))
