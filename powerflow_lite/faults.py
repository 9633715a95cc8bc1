"""What a long run on one flaky card survives: out-of-memory errors and stop signals.

    result = halve_on_oom(lambda n: update(micro_batch=n), size, minimum=1, what="in the update",
                          hint="lower --max-new-tokens", on_halve=log)
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
from typing import Callable, TypeVar

import torch

from .errors import PowerflowError

T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def halve_on_oom(attempt: Callable[[int], T], size: int, minimum: int, what: str, hint: str,
                 on_halve: Callable[[int], None]) -> T:
    """attempt(size), retried with half the size (a multiple of `minimum`) after each out-of-memory error.

    `on_halve(new_size)` hears of each retry. At `minimum` the error becomes a
    PowerflowError that names `hint`, the settings that shrink the work.
    """
    while True:
        try:
            return attempt(size)
        except Exception as err:  # noqa: BLE001 - anything but out-of-memory is re-raised as it is
            if not is_out_of_memory(err):
                raise
            if size <= minimum:
                raise PowerflowError(f"out of GPU memory {what} even at {size} completion(s) at a time: {hint}"
                                     ) from None
        # Outside the except block: the exception's frames (and the tensors they hold) are gone by now.
        release_memory()
        size = max(minimum, size // 2 // minimum * minimum)
        on_halve(size)


def release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class StopSignals:
    """Turn the first SIGINT or SIGTERM into a request to stop between steps; a second Ctrl-C stops at once.

    Installed only in the main thread (Python delivers signals there); elsewhere it
    does nothing and the defaults stay.
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
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
