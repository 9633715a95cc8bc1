"""Data parallel over torch.distributed (`torchrun`, `accelerate launch`): R processes train what one trains.

    torchrun --nproc-per-node 2 -m powerflow_lite train --model M --prompts P --prompts-per-step 8 ...
    ranks = Ranks.from_environment()      # RANK, WORLD_SIZE, LOCAL_RANK: set by both launchers
    ranks.start(device)                   # gloo on the CPU, nccl on GPUs; a no-op in one process

Every rank holds the whole (4-bit) base and LoRA and takes a contiguous share of each step's prompts. The
loop reads as the one-process algorithm: every helper here is the identity in one process, and under a
launcher makes the ranks' work add up to it:

1. accumulate with the step's global denominators, then `sum_gradients` (one all-reduce per optimizer step);
2. `pad_to_step` pads a share as one process pads the whole step (same shapes, same rounding);
3. `concat_columns` gathers per-row figures in rank order, which is the one-process row order;
4. decisions are shared (`agree` for bad input, `any` for a non-finite step or a stop signal), and
   `main_writes` lets rank 0 alone write while the others wait.

docs/design.md section 13 has the contract and what is refused under a launcher.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import Tensor

from .errors import PowerflowError
from .samplers.rollouts import Rollouts

T = TypeVar("T")

JOINED = False  # this process joined a process group (stays True after it is destroyed: cli.py's error lines)
TIMEOUT = datetime.timedelta(hours=2)  # a collective waits this long for a rank (an eval on rank 0, a long step)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @staticmethod
    def from_environment() -> "Ranks":
        """The ranks a launcher describes in the environment (torchrun and accelerate set the same variables);
        one process without one."""
        env = os.environ
        try:
            return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                         int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))
        except ValueError:
            raise PowerflowError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes and prints."""
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on the CPU, nccl on CUDA) and -> this rank's device (cuda:LOCAL_RANK)."""
        if not self.active:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        elif "OMP_NUM_THREADS" not in os.environ:  # ranks sharing the cores would otherwise each take them all
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        global JOINED
        JOINED = True
        return device

    def stop(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # --- collectives: each is the identity in one process

    def gather(self, value) -> list:
        """[value of rank 0, value of rank 1, ...] (any picklable value)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def cat(self, values: list) -> list:
        """The ranks' lists, concatenated in rank order: the one-process list."""
        return values if not self.active else [v for part in self.gather(values) for v in part]

    def cat_tensor(self, tensor: Tensor) -> Tensor:
        """The ranks' 1-D tensors concatenated in rank order (on this rank's device)."""
        if not self.active:
            return tensor
        return torch.cat([t.to(tensor.device) for t in self.gather(tensor.detach().cpu())])

    def sum(self, value: float) -> float:
        return value if not self.active else sum(self.gather(value))

    def max(self, value: float) -> float:
        return value if not self.active else max(self.gather(value))

    def any(self, flag: bool) -> bool:
        return flag if not self.active else any(self.gather(bool(flag)))

    def concat_columns(self, columns: dict[str, list]) -> dict[str, list]:
        """Every rank's values of each column, in rank order: the rows one process would have."""
        if not self.active:
            return columns
        parts = self.gather(columns)
        return {key: [value for part in parts for value in part[key]] for key in columns}

    def elementwise(self, values: list[float], reduce: Callable[[list[float]], float]) -> list[float]:
        """[reduce(the ranks' values[i])] for each i (e.g. a step's losses added, its timings the slowest rank's)."""
        return values if not self.active else [reduce(list(each)) for each in zip(*self.gather(values))]

    def agree(self, error: PowerflowError | None) -> None:
        """Raise on every rank if any rank failed (the lowest rank's message), else return on all."""
        errors = self.gather(None if error is None else str(error))
        failed = next((message for message in errors if message is not None), None)
        if failed is None:
            return
        if error is None:
            raise PowerflowError(failed, shared=True)
        error.shared = True  # every rank knows it: rank 0 says it (cli.py)
        raise error

    def agreed(self, prepare: Callable[[], T]) -> T:
        """prepare() on every rank, which checks input and writes nothing; if it failed on any rank it raises on
        all (the lowest rank's message), so that no rank goes on to wait for the others in a collective."""
        try:
            result = prepare()
        except PowerflowError as err:
            self.agree(err)
            raise
        self.agree(None)
        return result

    def main_writes(self, write: Callable[[], T]) -> T | None:
        """write() on rank 0 alone (its result; None on the others), then every rank waits until it is done."""
        result = write() if self.main else None
        self.barrier()
        return result

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Add up the ranks' gradients of `parameters` (a missing one counts as zero): one all-reduce."""
        if not self.active:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def pad_to_step(self, rollouts: Rollouts, prompt_width: int, pad_id: int) -> Rollouts:
        """This rank's rollouts padded to the whole step's widths (`prompt_width`: its longest prompt; completions:
        the longest on any rank), as one process pads them: the same shapes, so the same float rounding."""
        if not self.active:
            return rollouts
        widths = (prompt_width, self.max(rollouts.completion_ids.shape[1]))
        return Rollouts.concat([rollouts], pad_id, rollouts.group_ids, widths)

    def share(self, items: list) -> slice:
        """This rank's contiguous share of `items`: equal shares when their count is a multiple of the world size
        (a training step's prompts), else the first ranks take one fewer (an eval's)."""
        return slice(self.rank * len(items) // self.world, (self.rank + 1) * len(items) // self.world)


SINGLE = Ranks()  # one process

