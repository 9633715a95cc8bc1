"""How long a training step takes on each card: an estimate from FLOPs and bytes moved, never a measurement.

    costs = [PhaseCost("rollout", flops=2e13, bytes=3e12, steps=256), PhaseCost("update", flops=6e13, bytes=5e10)]
    step_estimate(costs, card("rtx4090")).seconds, format_estimate(costs, CARDS, steps=200)

A phase can go no faster than its FLOPs at the card's peak bf16 rate, nor than its bytes at full memory bandwidth
(the roofline floor). The estimate runs each at the fraction of peak assumed below; decode reads every weight once
per token for a few rows, so it comes out bandwidth-bound. Left out: kernel launch and Python overhead (which can
dominate decode at small batch), host work (tokenising, the reward), communication between processes, overlap of
phases, and clocks that throttle below boost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .cards import Card

# Large training matmuls reach 30-50% of peak FLOP/s (PaLM: 46% MFU, https://arxiv.org/abs/2204.02311); NF4
# dequantisation and LoRA's thin matmuls pull toward the low end. An assumption, not measured here.
MATMUL_EFFICIENCY = 0.4
# Streaming kernels reach 60-80% of peak bandwidth; decode's many small reads at small batch sit at the low end.
# An assumption, not measured here.
BANDWIDTH_EFFICIENCY = 0.6


@dataclass(frozen=True)
class PhaseCost:
    name: str
    flops: float
    """FLOPs of the whole phase."""
    bytes: float
    """Bytes read from accelerator memory over the whole phase (weights, KV cache, activations); for decode, the
    total over all its steps."""
    steps: int = 1
    """Sequential passes that make up the phase (decode: one per generated token); flops and bytes cover them all."""

    def __post_init__(self):
        if self.flops < 0 or self.bytes < 0 or self.steps < 1:
            raise ValueError(f"phase {self.name!r}: flops and bytes must be >= 0 and steps >= 1")


@dataclass(frozen=True)
class PhaseTime:
    name: str
    floor: float
    """Seconds at 100% of peak FLOP/s and bandwidth: no run is faster."""
    estimate: float
    """Seconds at MATMUL_EFFICIENCY of peak FLOP/s and BANDWIDTH_EFFICIENCY of peak bandwidth."""
    bound: str
    """What sets the estimate: "compute" (FLOPs) or "memory" (bytes)."""


@dataclass(frozen=True)
class StepEstimate:
    card: Card
    phases: tuple[PhaseTime, ...]

    @property
    def seconds(self) -> float:
        """Estimated seconds per step: the phases run one after another."""
        return sum(p.estimate for p in self.phases)

    @property
    def floor_seconds(self) -> float:
        """Seconds per step at the cards' peaks."""
        return sum(p.floor for p in self.phases)

    def hours(self, steps: int) -> float:
        """Estimated hours for `steps` training steps."""
        return self.seconds * steps / 3600


def phase_seconds(cost: PhaseCost, card: Card) -> PhaseTime:
    """The phase's floor and estimated time on this card, and which of compute or memory sets the estimate."""
    compute = cost.flops / card.bf16_flops
    memory = cost.bytes / card.bandwidth
    compute_est = compute / MATMUL_EFFICIENCY
    memory_est = memory / BANDWIDTH_EFFICIENCY
    return PhaseTime(cost.name, max(compute, memory), max(compute_est, memory_est),
                     "compute" if compute_est >= memory_est else "memory")


def step_estimate(costs: Sequence[PhaseCost], card: Card) -> StepEstimate:
    """Every phase's time on this card, and their sum."""
    return StepEstimate(card, tuple(phase_seconds(c, card) for c in costs))


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def format_estimate(costs: Sequence[PhaseCost], cards: Sequence[Card], steps: int) -> list[str]:
    """A text table for the dry run: a row per card, the estimated seconds of each phase (c: compute-bound,
    m: memory-bound), seconds per step, hours for `steps` steps and the floor at peak."""
    head = ["card"] + [f"{c.name} s" for c in costs] + ["s/step", f"h/{steps:,} steps", "floor s/step"]
    rows = []
    for card in cards:
        est = step_estimate(costs, card)
        rows.append([card.name] + [f"{_num(p.estimate)} {p.bound[0]}" for p in est.phases]
                    + [_num(est.seconds), _num(est.hours(steps)), _num(est.floor_seconds)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return [f"Estimated time per step, not measured: data-sheet peaks x {MATMUL_EFFICIENCY:.0%} of bf16 FLOP/s, "
            f"x {BANDWIDTH_EFFICIENCY:.0%} of memory bandwidth",
            "(assumed efficiencies; c: compute-bound, m: memory-bound; floor: at 100% of both peaks)",
            line(head), *map(line, rows)]
