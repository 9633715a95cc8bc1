"""Data parallel over torch.distributed: `torchrun` or `accelerate launch`, equal to one process.

    torchrun --nproc-per-node 2 -m powerflow_lite train --model M --prompts P --prompts-per-step 8 ...
    ranks = Ranks.from_environment()      # RANK, WORLD_SIZE, LOCAL_RANK: set by both launchers
    ranks.start(device)                   # gloo on the CPU, nccl on GPUs; a no-op in one process

Every rank holds the whole (4-bit) base and LoRA, and takes a contiguous share of each step's prompts
(`share`): rank r of R the r-th B/R of them. It samples, scores and accumulates gradients over its share
with the step's *global* denominators, so the sum of the ranks' gradients is the one-process gradient;
`sum_gradients` adds them (one all-reduce per optimizer step, after all micro-batches), and every rank
applies the same optimizer step to the same weights. What the loop needs from all rows (the head's start
and re-centring, metrics) is gathered in rank order, which is the one-process row order.

The static sampler draws each token from a uniform number fixed by (seed, step, row of the global batch)
(`uniforms`), so a row's completion does not depend on which rank samples it or how many ranks there are:
R ranks sample what one process samples (up to float rounding of batched matmuls). With `--sampler hf`
each rank draws from its own stream (seed, step, rank): the same distribution, other draws.

Rank 0 alone writes (the output directory, metrics.jsonl, checkpoints, the adapter, evals) and prints; all
ranks read the same checkpoint to resume. A decision one rank makes alone would leave the others waiting
in a collective, so the decisions are shared: bad input (`agree`), a non-finite loss or gradient, a stop
signal (`any`). docs/design.md section 13.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import PowerflowError

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

    def agree(self, error: PowerflowError | None) -> None:
        """Raise on every rank if any rank failed (the lowest rank's message), else return on all."""
        errors = self.gather(None if error is None else str(error))
        failed = next((message for message in errors if message is not None), None)
        if failed is None:
            return
        shared = error if error is not None else PowerflowError(failed)
        shared.shared = True  # every rank knows it: rank 0 says it (cli.py)
        raise shared

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

    def share(self, items: list) -> slice:
        """This rank's contiguous share of `items`: equal shares when their count is a multiple of the world size
        (a training step's prompts), else the first ranks take one fewer (an eval's)."""
        return slice(self.rank * len(items) // self.world, (self.rank + 1) * len(items) // self.world)


SINGLE = Ranks()  # one process


def uniforms(seed: int, step: int, stream: int, rows: int, length: int, device: torch.device) -> Tensor:
    """[rows, length] float64 uniforms for the step's global batch (`stream` tells apart draws of one step,
    e.g. the explored share): row i's numbers are the same in one process and on any rank that samples it."""
    generator = torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 8 + stream)
    return torch.rand(rows, length, dtype=torch.float64, device=device, generator=generator)


def row_uniforms(seed: int, first_row: int, rows: int, length: int, device: torch.device) -> Tensor:
    """[rows, length] float64 uniforms for rows first_row, first_row + 1, ... of an evaluation, each row's from a
    generator of its own (seed, row): the same numbers whichever call, batch or rank samples the row, and for
    every variant (base, adapter) evaluated with the same seed."""
    out = torch.empty(rows, length, dtype=torch.float64, device=device)
    for i in range(rows):
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first_row + i)
        out[i] = torch.rand(length, dtype=torch.float64, device=device, generator=generator)
    return out
