"""What a long run on one flaky card survives: out-of-memory errors and stop signals.

    result = halve_on_oom(lambda rows: update(rows), run.state.micro_batch, total=len(batch), minimum=G,
                          what="in the update", hint="lower --max-new-tokens", notes=notes)
    with StopSignals() as stop:   # SIGINT / SIGTERM set stop.signal; the loop checks it between steps
        for result in train(run, should_stop=stop.requested): ...

A CUDA out-of-memory error is recoverable: nothing in the model changed, only
the attempt's activations are lost. We free them and try again with half the
rows; at the smallest size we stop with settings that would fit.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from .errors import PowerflowError

T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


@dataclass
class BatchSize:
    """A batch size that an out-of-memory error halves; the run keeps (and checkpoints) what it became."""

    flag: str  # the option that sets it, named in the note: --micro-batch-size, --sample-batch-size ("": none)
    value: int  # rows per call; 0: all of them

    def rows(self, total: int, minimum: int) -> int:
        """Rows per call for `total` rows: at most `value` (all when 0), a multiple of `minimum`, at least it."""
        return max(minimum, min(self.value or total, total) // minimum * minimum)


def halve_on_oom(attempt: Callable[[int], T], size: BatchSize, total: int, minimum: int, what: str, hint: str,
                 notes: list[str]) -> T:
    """attempt(rows), retried with half the rows (a multiple of `minimum`) after each out-of-memory error.

    Each halving is kept in `size` (later steps and checkpoints start there) and said once in `notes`.
    At `minimum` the error becomes a PowerflowError that names `hint`, the settings that shrink the work.
    """
    rows = size.rows(total, minimum)
    while True:
        try:
            return attempt(rows)
        except Exception as err:  # noqa: BLE001 - anything but out-of-memory is re-raised as it is
            if not is_out_of_memory(err):
                raise
            if rows <= minimum:
                raise PowerflowError(f"out of GPU memory {what} even at {rows} completion(s) at a time: {hint}"
                                     ) from None
        # Outside the except block: the exception's frames (and the tensors they hold) are gone by now.
        release_memory()
        rows = max(minimum, rows // 2 // minimum * minimum)
        size.value = rows
        notes.append(f"out of GPU memory {what}: retrying with {size.flag} {rows} (pass it to start there next time)"
                     if size.flag else f"out of GPU memory {what}: retrying with {rows} completions at a time")


def release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class StopSignals:
    """Turn the first SIGINT or SIGTERM into a request to stop between steps; a second Ctrl-C stops at once.

    Installed only in the main thread (Python delivers signals there); elsewhere it
    does nothing and the defaults stay. A signal that was ignored when the run
    started stays ignored, as Unix programs leave it: a shell starts background
    jobs with SIGINT ignored (so Ctrl-C at the terminal does not reach them), and
    such a run is stopped with SIGTERM. On leaving, every handler is the one before.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or 0)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        # os.write is safe inside a handler, unlike print (which may hold the stream's lock).
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                    "(Ctrl-C again to quit now, losing this step)\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
