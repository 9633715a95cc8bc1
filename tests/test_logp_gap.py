"""The log-prob gap |log pi - log pi_old| of the update's first epoch: its arithmetic, ~0 on the CPU in float32,
and a note said once per invocation when it is large."""

import math
from dataclasses import replace

import pytest
import torch
from helpers import config

import powerflow_lite.train as train_module
import powerflow_lite.update as update_module
from powerflow_lite.metrics import read_metrics
from powerflow_lite.setup import setup
from powerflow_lite.train import train
from powerflow_lite.update import LOGP_GAP_WARN, combine_gaps, logp_gap


class OneProcess:
    def sum(self, value):
        return value

    def max(self, value):
        return value


class BesideAnother:
    """ranks.sum / ranks.max as if a second process held 2 tokens whose gaps add up to 3.0, the largest 2.5."""

    def __init__(self):
        self.others = iter([3.0, 2.0])  # its sum, then its count

    def sum(self, value):
        return value + next(self.others)

    def max(self, value):
        return max(value, 2.5)


POLICY = torch.tensor([[-1.0, -2.0, -3.0],
                       [-0.5, -0.5, 0.0]])  # [2, 3]
OLD = torch.tensor([[-1.5, -2.0, -1.0],
                    [-0.25, 9.0, -math.inf]])  # [2, 3]: padding may hold anything
MASK = torch.tensor([[1, 1, 1],
                     [1, 0, 0]])  # [2, 3]


def test_the_gap_is_the_mean_and_max_over_completion_tokens_alone():
    # |gaps| on the 4 completion tokens: 0.5, 0, 2.0 and 0.25 (9.5 and inf on padding do not count)
    torch.testing.assert_close(logp_gap(POLICY, OLD, MASK), torch.tensor([2.75, 4.0, 2.0]), rtol=0, atol=0)
    assert combine_gaps([logp_gap(POLICY, OLD, MASK)], OneProcess()) == (2.75 / 4, 2.0)
    # micro-batches add up their sums and counts: row by row gives the same figures as the whole batch
    parts = [logp_gap(POLICY[rows], OLD[rows], MASK[rows]) for rows in (slice(0, 1), slice(1, 2))]
    assert combine_gaps(parts, OneProcess()) == (2.75 / 4, 2.0)


def test_processes_add_up_their_sums_and_counts_and_take_the_largest_gap():
    # (2.75 + 3.0) / (4 + 2) = 0.958..., not the mean of the means (0.6875 + 1.5) / 2 = 1.09375
    assert combine_gaps([logp_gap(POLICY, OLD, MASK)], BesideAnother()) == pytest.approx((5.75 / 6, 2.5), abs=1e-7)


def test_no_completion_token_gives_nan():
    mean, worst = combine_gaps([logp_gap(POLICY, OLD, torch.zeros_like(MASK))], OneProcess())
    assert math.isnan(mean) and math.isnan(worst)


def test_a_float32_cpu_run_recomputes_log_pi_old_to_rounding(tiny_model_dir, prompts_file, tmp_path):
    results = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=2, lora_dropout=0.0))))
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(0 <= row["logp_gap_mean"] <= row["logp_gap_max"] < 1e-4 for row in rows), rows
    assert all(result.notes == () for result in results)


def shift_old_logps(monkeypatch, rows: slice, by: float) -> list:
    """Every step's log pi_old moved by `by` nats on the completion tokens of `rows`; -> the batches scored."""
    real, batches = train_module.score_step, []

    def shifted(run, taken, notes):
        batch = real(run, taken, notes)
        shift = torch.zeros_like(batch.old_logps)  # [N, L]
        shift[rows] = by
        batches.append(replace(batch, old_logps=batch.old_logps + shift * batch.mask))
        return batches[-1]

    monkeypatch.setattr(train_module, "score_step", shifted)
    return batches


def test_a_large_gap_is_logged_every_step_and_said_once_per_invocation(tiny_model_dir, prompts_file, tmp_path,
                                                                      monkeypatch):
    shift_old_logps(monkeypatch, slice(None), 2 * LOGP_GAP_WARN)  # 0.1 nats on every token
    results = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=3))))
    assert [row["logp_gap_mean"] for row in read_metrics(tmp_path / "out" / "metrics.jsonl")] == pytest.approx(
        [0.1] * 3, abs=1e-5)
    assert all(result.metrics["logp_gap_max"] == pytest.approx(0.1, abs=1e-5) for result in results)
    assert [len(result.notes) for result in results] == [1, 0, 0]
    [note] = results[0].notes
    assert "0.100 nats/token" in note and "static sampler" in note and "--sampler hf" in note
    # the flag is the invocation's, not the checkpoint's: a resumed run says it again
    resumed = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=4, resume=True))))
    assert [result.step for result in resumed] == [4] and len(resumed[0].notes) == 1


def test_a_micro_batch_retried_after_out_of_memory_is_counted_once(tiny_model_dir, prompts_file, tmp_path,
                                                                  monkeypatch):
    # row 0 alone is 1 nat off: the mean is its share of the tokens, which counting the first attempt's
    # micro-batch (rows 0-3) again would change
    batches = shift_old_logps(monkeypatch, slice(0, 1), 1.0)
    real, calls = update_module.completion_logprobs, []

    def flaky(model, rollouts, *args):
        calls.append(len(rollouts))
        if len(calls) == 2:  # the second micro-batch of the first attempt, after the first one's backward
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, rollouts, *args)

    monkeypatch.setattr(update_module, "completion_logprobs", flaky)
    [result] = list(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "out", max_steps=1, log_z="head"))))
    assert calls == [4, 2, 2, 2, 2]  # 4 + (2: out of memory), then three of 2
    tokens = batches[0].mask.sum(-1)  # [N]
    assert result.metrics["logp_gap_mean"] == pytest.approx(float(tokens[0] / tokens.sum()), abs=1e-5)
    assert result.metrics["logp_gap_max"] == pytest.approx(1.0, abs=1e-5)
