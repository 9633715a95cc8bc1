"""The time estimate per step: roofline floors and efficiency-scaled estimates against hand arithmetic, the card
table's sources and units, the lookup, and the dry run's table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from powerflow_lite.cards import CARDS, Card, card
from powerflow_lite.errors import PowerflowError
from powerflow_lite.estimate import (
    BANDWIDTH_EFFICIENCY,
    MATMUL_EFFICIENCY,
    PhaseCost,
    format_estimate,
    phase_seconds,
    step_estimate,
)

# A made-up card with round rates: 1e14 FLOP/s, 1e12 B/s
TOY = Card("toy", "Toy 1 GB", 1, 1e14, 1e12, "https://example.com/toy.pdf")
UPDATE = PhaseCost("update", flops=1e15, bytes=1e9)
DECODE = PhaseCost("decode", flops=1e12, bytes=6e12, steps=256)


def test_the_assumed_efficiencies_are_the_stated_ones():
    assert (MATMUL_EFFICIENCY, BANDWIDTH_EFFICIENCY) == (0.4, 0.6)


def test_a_compute_bound_phase():
    t = phase_seconds(UPDATE, TOY)
    # compute 1e15 / 1e14 = 10 s; memory 1e9 / 1e12 = 0.001 s; floor 10 s; estimate 10 / 0.4 = 25 s
    assert t.floor == pytest.approx(10.0, rel=1e-12)
    assert t.estimate == pytest.approx(25.0, rel=1e-12)
    assert t.bound == "compute"


def test_a_bandwidth_bound_decode():
    t = phase_seconds(DECODE, TOY)
    # compute 1e12 / 1e14 = 0.01 s (0.025 s at 40%); memory 6e12 / 1e12 = 6 s; estimate 6 / 0.6 = 10 s
    assert t.floor == pytest.approx(6.0, rel=1e-12)
    assert t.estimate == pytest.approx(10.0, rel=1e-12)
    assert t.bound == "memory"


def test_the_bound_follows_the_estimate_not_the_floor():
    t = phase_seconds(PhaseCost("mixed", flops=1e14, bytes=1.2e12), TOY)
    # at peak: compute 1 s, memory 1.2 s, floor 1.2 s; assumed: compute 1 / 0.4 = 2.5 s, memory 1.2 / 0.6 = 2 s
    assert t.floor == pytest.approx(1.2, rel=1e-12)
    assert t.estimate == pytest.approx(2.5, rel=1e-12)
    assert t.bound == "compute"


def test_a_step_sums_its_phases():
    est = step_estimate([UPDATE, DECODE], TOY)
    assert [p.name for p in est.phases] == ["update", "decode"]
    assert est.seconds == pytest.approx(25.0 + 10.0, rel=1e-12)
    assert est.floor_seconds == pytest.approx(10.0 + 6.0, rel=1e-12)
    assert est.hours(360) == pytest.approx(35.0 * 360 / 3600, rel=1e-12)  # 3.5 h
    assert step_estimate([], TOY).seconds == 0


def test_a_faster_card_takes_less_time():
    slow, fast = card("rtx3060"), card("h100-80gb")
    assert step_estimate([UPDATE, DECODE], fast).seconds < step_estimate([UPDATE, DECODE], slow).seconds


def test_a_phase_cost_must_be_non_negative():
    with pytest.raises(ValueError, match="update"):
        PhaseCost("update", flops=-1, bytes=0)
    with pytest.raises(ValueError, match="decode"):
        PhaseCost("decode", flops=0, bytes=0, steps=0)


def test_every_card_has_a_source_and_positive_rates():
    assert {"rtx3060", "rtx4090", "a100-40gb", "h100-80gb"} <= {c.key for c in CARDS}
    assert len({c.key for c in CARDS}) == len(CARDS)
    for c in CARDS:
        assert c.source.startswith("https://"), c.key
        assert c.memory_gib > 0 and c.bf16_flops > 0 and c.bandwidth > 0, c.key


def test_the_table_holds_dense_fp32_accumulate_peaks_in_decimal_units():
    # The usual slips: H100's 1,979 TFLOPS is with sparsity (989.4 dense); the 4090's 82.6 is its non-tensor FP32
    # rate, its bf16 tensor rate with FP32 accumulate is 165.2; bandwidth is decimal (3.35 TB/s = 3.35e12 B/s).
    assert card("h100-80gb").bf16_flops == pytest.approx(989.4e12)
    assert card("rtx4090").bf16_flops == pytest.approx(165.2e12)
    assert card("a100-40gb").bf16_flops == pytest.approx(312e12)
    assert card("rtx3060").bf16_flops == pytest.approx(28 * 512 * 1.777e9, rel=2e-3)  # SMs x FLOP/clk x boost
    assert card("h100-80gb").bandwidth == pytest.approx(3.35e12)
    assert card("rtx3060").bandwidth == pytest.approx(192 / 8 * 15e9)  # bus bytes x 15 Gbps
    assert [c.memory_gib for c in map(card, ["rtx3060", "rtx4090", "a100-40gb", "h100-80gb"])] == [12, 24, 40, 80]


def test_a_card_checks_its_figures():
    with pytest.raises(ValueError, match="positive"):
        Card("bad", "Bad", 8, 0.0, 1e12, "https://example.com")
    with pytest.raises(ValueError, match="https"):
        Card("bad", "Bad", 8, 1e14, 1e12, "www.example.com")


def test_an_unknown_card_names_the_known_ones():
    assert card("rtx4090").name == "RTX 4090 24 GB"
    with pytest.raises(PowerflowError, match="unknown card 'rtx9999'.*rtx3060, rtx4090, a100-40gb, h100-80gb"):
        card("rtx9999")


def test_the_table_names_every_card_and_says_estimate():
    lines = format_estimate([UPDATE, DECODE], [TOY, *CARDS], steps=360)
    text = "\n".join(lines)
    assert "estimate" in lines[0].lower() and "not measured" in lines[0]
    assert f"{MATMUL_EFFICIENCY:.0%}" in lines[0] and f"{BANDWIDTH_EFFICIENCY:.0%}" in lines[0]
    for c in CARDS:
        assert c.name in text
    assert all(len(line) < 120 for line in lines)
    header = next(line for line in lines if line.startswith("card"))
    assert "update s" in header and "decode s" in header and "h/360 steps" in header
    toy = next(line for line in lines if line.startswith("Toy")).split()
    # update 25 s (compute), decode 10 s (memory), 35 s/step, 35 x 360 / 3600 = 3.5 h, floor 10 + 6 = 16 s
    assert toy[3:] == ["25", "c", "10", "m", "35", "3.5", "16"]


def test_importing_the_estimate_loads_no_heavy_library():
    probe = ("import sys, powerflow_lite.estimate, powerflow_lite.cards\n"
             "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
