"""Every random stream of a run, as a function of --seed and of where it is drawn: the formulas in one place.

    seed_step(seed, step, rank)               # torch's stream for step `step` (dropout masks, generate's draws)
    step_uniforms(seed, step, 0, N, L, dev)   # the static sampler's numbers for the N rows of a training step
    prompt_indices(P, fresh_steps, B, seed)   # the prompts of the next sampled step
    weighted_prompt_indices(w, fresh_steps, B, seed)  # the same from a mixture of prompt sources
    row_uniforms(seed, first_row, n, L, dev)  # an evaluation's numbers, one generator per row

Why functions of (seed, step, row) rather than one stream: a checkpoint then
needs no RNG state (a resumed run draws what the uninterrupted one would), and
a row's draws do not depend on the batch or the rank that samples it, so R
processes train what one process trains (docs/design.md sections 8 and 13).
"""

from __future__ import annotations

import torch
from torch import Tensor

EVAL_SEED_OFFSET = 2**32  # evaluations during training draw apart from the (seed, step) streams: --seed < 2**32


def step_seed(seed: int, step: int) -> int:
    """The base of every stream of training step `step` (0-based)."""
    return seed * 1_000_003 + step


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Step `step`'s torch stream; under a launcher each rank's its own (dropout masks, generate's draws)."""
    torch.manual_seed(step_seed(seed, step) + rank * 2**56)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator for the step's own choices (which prompts a replay step draws, and which of their completions)."""
    return torch.Generator().manual_seed(step_seed(seed, step))


def step_uniforms(seed: int, step: int, stream: int, rows: int, length: int, device: torch.device) -> Tensor:
    """[rows, length] float64 uniforms for the step's global batch (`stream` tells apart draws of one step,
    e.g. the explored share): row i's numbers are the same in one process and on any rank that samples it."""
    generator = torch.Generator(device=device).manual_seed(step_seed(seed, step) * 8 + stream)
    return torch.rand(rows, length, dtype=torch.float64, device=device, generator=generator)


def row_uniforms(seed: int, first_row: int, rows: int, length: int, device: torch.device) -> Tensor:
    """[rows, length] float64 uniforms for rows first_row, first_row + 1, ... of an evaluation, each row's from a
    generator of its own (seed, row): the same numbers whichever call, batch or rank samples the row, and for
    every variant (base, adapter) evaluated with the same seed."""
    out = torch.empty(rows, length, dtype=torch.float64, device=device)
    for i in range(rows):
        generator = torch.Generator(device=device).manual_seed(step_seed(seed, first_row + i))
        out[i] = torch.rand(length, dtype=torch.float64, device=device, generator=generator)
    return out


def epoch_order(seed: int, epoch: int, count: int) -> Tensor:
    """The shuffle of `count` prompts for one pass over them (prompt_indices)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def prompt_indices(num_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """The prompts of training step `step` (0-based): consecutive slices of one shuffle per epoch, so a resumed run
    takes the prompts an uninterrupted one would without saving a data loader."""
    orders: dict[int, Tensor] = {}
    indices = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, num_prompts)
        if epoch not in orders:
            orders[epoch] = epoch_order(seed, epoch, num_prompts)
        indices.append(int(orders[epoch][offset]))
    return indices


def weighted_prompt_indices(weights: list[float], step: int, per_step: int, seed: int) -> list[int]:
    """The prompts of training step `step` from a mixture of sources (data.Prompts.weights): drawn with probability
    proportional to each row's weight, without repeats within the step while there are rows enough, from a
    generator of (seed, step) alone, so a resumed run draws what an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 100_003 + 2**40 + step)
    chances = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(chances, per_step, replacement=per_step > len(weights), generator=generator).tolist()


def seed_eval(seed: int, rank: int = 0) -> None:
    """torch's stream for an evaluation's `generate` draws (the static sampler's come from `row_uniforms`)."""
    torch.manual_seed(seed + rank * 2**40)
