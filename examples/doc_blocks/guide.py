"""The training guide's figures outside its healthy run (doc_blocks.demos has that one): the loss and the log-prob
gap of the committed demo run (examples/results/demo_run/metrics.jsonl, written by examples/demo_seeds.py)."""

from __future__ import annotations

from doc_blocks import Block, wrap
from doc_blocks.demos import demo_metrics


def sci(x: float) -> str:
    """A small figure as the docs write it: 8e-6, not 8e-06."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def guide_loss(metrics: list[dict]) -> str:
    """The training guide's bullet on the loss: the demo's at step 1, its lowest, and the highest after it."""
    steps = demo_metrics(metrics)["steps"]
    first, low = steps[0], min(steps, key=lambda row: row["loss"])
    later = [row for row in steps if row["step"] > low["step"]]
    spike = max(later, key=lambda row: row["loss"]) if later else None
    demo = f"the demo's: {first['loss']:.2f} at step 1, {low['loss']:.2f} at step {low['step']}"
    if spike:
        demo += f", back up to {spike['loss']:.2f} at step {spike['step']}"
    return wrap(f"* `loss` falls fast over the first steps, with spikes ({demo}; 18 completions a step is a "
                   "small batch); `residual_mean` is 0 by construction under the default `--log-z batch`. Under "
                   "`--log-z head`, a `log_z_gap` of several nats (the head lagging behind the batch estimate) and "
                   "a loss that climbs mean the head cannot keep up (see [how log Z' enters the "
                   "loss](results.md#how-log-z-enters-the-loss)).")


def guide_logp_parity(metrics: list[dict]) -> str:
    """The training guide's paragraph on log-prob parity, with the demo run's gaps on the CPU."""
    steps = demo_metrics(metrics)["steps"]
    means = [row["logp_gap_mean"] for row in steps]
    worst = max(row["logp_gap_max"] for row in steps)
    return wrap("Before its first optimizer step the update recomputes log pi under the weights that gave log "
                   "pi_old, so `logp_gap_mean` measures only how the sampler's (or scoring pass's) kernels and the "
                   "trainer's disagree, plus LoRA dropout when `--lora-dropout` is above 0 (on in the update, off "
                   "when sampling). On the CPU in float32 it is rounding: below 1e-4 nats/token, the max too, on the "
                   "tiny test model (`tests/test_logp_gap.py` checks it), and in the demo's run on "
                   f"SmolLM2-135M-Instruct a mean of {sci(min(means))} to {sci(max(means))} per step, the max at "
                   f"most {sci(worst)}. On a GPU with bf16 or NF4 a mean below about 0.01 is what we expect, though "
                   "not yet measured here; a mean above 0.05 (the run says so once per invocation) or a max above 1 "
                   "means the two disagree and every importance ratio is biased: with `--lora-dropout 0`, compare "
                   "`--sampler hf`, whose log pi_old comes from a forward pass like the update's.")


BLOCKS = {
    "guide-loss": Block(("demo_run/metrics.jsonl",), guide_loss),
    "guide-logp-parity": Block(("demo_run/metrics.jsonl",), guide_logp_parity),
}
