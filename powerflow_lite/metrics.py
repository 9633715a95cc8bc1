"""One JSON object per training step in OUT/metrics.jsonl, and what each key means.

A new key is described once, here (the eval_* keys: tasks.EVAL_METRICS); docs/training-guide.md's metric table
lists them all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS: dict[str, str] = {
    "step": "Training steps completed.",
    "loss": "Objective value over the step's completions (mean over inner epochs).",
    "log_z_mean": "Mean of log Z'(q) over the step's prompts; settles in a healthy run.",
    "log_z_std": "Spread of log Z'(q) across prompts.",
    "log_z_batch_mean": "Mean of the prompts' batch estimates of log Z' (from their G samples, before the update): "
                        "where log Z' should be (needs G >= 2).",
    "log_z_gap": "Mean of the head's log Z'(q) minus the batch estimate, before the update: how far the head lags "
                 "(with --log-z head the residual mean is about this; batch and hybrid then re-centre the head).",
    "residual_mean": "Mean mismatch r (0 at the optimum; for rl-* it is -R = S_pi - alpha (S_base + psi), per token "
                     "for rl-token).",
    "residual_std": "Spread of r: what the loss is made of once the mean is absorbed by log Z.",
    "length_mean": "Mean completion length in tokens (EOS included).",
    "length_min": "Shortest completion.",
    "length_max": "Longest completion.",
    "truncated_frac": "Fraction of completions cut at --max-new-tokens without EOS.",
    "format_frac": "Fraction of completions the format penalty accepts (for boxed: those with a \\boxed{} answer).",
    "psi_mean": "Mean psi(y): the format penalty plus the truncation penalty.",
    "policy_logp_per_token": "Mean log pi(y_t) of the sampled tokens under the policy that sampled them.",
    "base_logp_per_token": "Mean log p_base(y_t) of the same tokens with the adapter off.",
    "clip_frac": "Fraction of importance weights that hit the clip (0 with --inner-epochs 1).",
    "logp_gap_mean": "Mean over completion tokens of |log pi - log pi_old|, log pi recomputed by the update's first "
                     "epoch under the weights that gave log pi_old (nats/token): numerics alone (kernels, dtype, "
                     "batch shapes) and LoRA dropout. ~1e-7 on the CPU in float32; on a GPU with bf16/NF4 below "
                     "~0.01 is expected (not measured here); above 0.05 (said once) the sampler's and the trainer's "
                     "numerics disagree and every importance ratio is biased.",
    "logp_gap_max": "Largest |log pi - log pi_old| over the step's completion tokens (as logp_gap_mean); above 1 a "
                    "token's importance ratio is off by e.",
    "grad_norm": "LoRA gradient norm before clipping (last inner epoch).",
    "update_skipped": "1 when the loss or gradient was not finite and the step's update was skipped (see "
                      "--max-bad-steps), else 0.",
    "lr": "LoRA learning rate after this step's scheduler update.",
    "sampled_tokens": "Tokens the step sampled (0 on a replay step).",
    "replayed": "With --replay-steps: 1 when the step trained on stored completions instead of fresh ones.",
    "explored_frac": "With --replay-steps or --explore-temperature: share of the step's completions drawn at "
                     "--explore-temperature.",
    "behaviour_log_ratio": "With --replay-steps or --explore-temperature: mean over tokens of log pi - log b, b the "
                           "distribution that drew them; 0 on-policy, its negation estimates KL(b || pi) per token.",
    "sample_tokens_per_s": "Generated tokens per second while sampling (nan on a replay step).",
    "time_sample": "Seconds spent sampling.",
    "time_score": "Seconds spent computing log pi_old, log p_base and psi.",
    "time_update": "Seconds spent in forward/backward/optimizer updates.",
    "estimate_time_sample": "On a GPU in the card table (cards.py): time_sample as estimated before step 1 from the "
                            "rehearsal (data-sheet peaks x assumed efficiencies), beside the measured one.",
    "estimate_time_score": "As estimate_time_sample, for time_score.",
    "estimate_time_update": "As estimate_time_sample, for time_update (the optimizer step not included).",
    "peak_gpu_mem_gib": "Peak GPU memory allocated during the step (GPU runs only).",
    "peak_rss_gib": "Peak resident memory of the process during the step (CPU runs; on Linux, else since start).",
}

def reset_peak_rss() -> None:
    """Start a new peak of resident memory (Linux: writing 5 to clear_refs resets VmHWM; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gib() -> float:
    """Peak resident memory since `reset_peak_rss` (Linux), else since the process started, in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB elsewhere


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def stderr(values: list[float]) -> float:
    """Standard error of the mean of `values` (0 for fewer than two)."""
    return std(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


class MetricsLog:
    """Appends one row per step and flushes it, so a crash loses at most the step in flight; with no path (a
    rank other than 0) it writes nothing. `reporters` (reporting.py: TensorBoard, W&B) get every row too, and the
    samples shown so far."""

    def __init__(self, path: Path | None, reporters: list | None = None):
        self.path, self.reporters = path, reporters or []
        self.examples: list[dict] = []

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")
            handle.flush()
        for reporter in self.reporters:
            reporter.log(row)

    def example(self, step: int, example: dict | None) -> None:
        """A shown prompt and completion: the reporters get the table of those shown in this invocation."""
        if example is None or not self.reporters:
            return
        self.examples.append({"step": step, **example})
        for reporter in self.reporters:
            reporter.samples(step, self.examples)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
