"""The log Z'(q) head: starts constant, bias init from residuals, save/load, scale invariance."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from powerflow_lite.errors import PowerflowError
from powerflow_lite.log_z import LogZHead, batch_log_z_estimate, load_head, save_head
from powerflow_lite.objectives import OBJECTIVES

HIDDEN = 16


def features(batch: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, HIDDEN, generator=torch.Generator().manual_seed(seed))  # [B, H]


def test_fresh_head_is_the_constant_zero():
    torch.manual_seed(0)
    head = LogZHead(HIDDEN, width=8)
    out = head(features())  # [B]
    assert out.shape == (5,)
    # Zero output weight and bias: every prompt gets log Z' = 0 whatever its features.
    assert torch.equal(out, torch.zeros(5))
    assert torch.equal(head(features(seed=1) * 7 + 3), torch.zeros(5))


def test_init_bias_from_residuals_zeroes_the_mean_residual():
    head = LogZHead(HIDDEN, width=8)
    head.init_bias_from_residuals(torch.tensor([1.0, 2.0, 6.0]))
    # mean(1, 2, 6) = 9 / 3 = 3, so log Z' = -3 for every input.
    torch.testing.assert_close(head(features()), torch.full((5,), -3.0), atol=0, rtol=0)
    torch.testing.assert_close(head(features(batch=2, seed=4)), torch.full((2,), -3.0), atol=0, rtol=0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    head = LogZHead(HIDDEN, width=8)
    # Give the output layer non-zero weights so that the round trip is checked on a non-constant function.
    torch.nn.init.normal_(head.output.weight)
    head.init_bias_from_residuals(torch.tensor([0.5, -2.5]))
    save_head(head, tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == ["z_head.safetensors"]
    stored = load_file(str(tmp_path / "z_head.safetensors"))
    assert stored.keys() == head.state_dict().keys()
    for name, tensor in head.state_dict().items():
        assert torch.equal(stored[name], tensor)

    loaded = load_head(tmp_path)
    assert (loaded.hidden_size, loaded.width) == (HIDDEN, 8)
    x = features()
    assert not torch.equal(head(x), head(x)[:1].expand(5))  # really input-dependent
    assert torch.equal(loaded(x), head(x))


def test_load_head_without_file_raises(tmp_path):
    with pytest.raises(PowerflowError, match="z_head.safetensors"):
        load_head(tmp_path)


def test_output_is_invariant_to_feature_scale():
    # The head layer-normalises its input (intended: hidden-state scales differ a lot between models).
    torch.manual_seed(0)
    head = LogZHead(HIDDEN, width=8)
    torch.nn.init.normal_(head.output.weight)
    x = features()
    torch.testing.assert_close(head(x * 100), head(x), atol=1e-5, rtol=1e-5)
    # ... but not to a change of direction, so the check above is not vacuous.
    assert not torch.allclose(head(x.flip(-1)), head(x), atol=1e-3)


def test_recenter_moves_the_mean_and_keeps_the_differences_between_prompts():
    torch.manual_seed(0)
    head = LogZHead(HIDDEN, width=8)
    torch.nn.init.normal_(head.output.weight)
    x = features(3)
    before = head(x)
    targets = torch.tensor([-2.0, -1.0, -6.0])  # mean -3
    head.recenter(before, targets)
    after = head(x)
    torch.testing.assert_close(after.mean(), torch.tensor(-3.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(after - after.mean(), before - before.mean(), atol=1e-6, rtol=0)  # a shift only


# --- each prompt's batch estimate (log_z.batch_log_z_estimate)


def _log_z_inputs(policy, mask, group_ids):
    policy = torch.tensor(policy)
    return policy, dict(old_logps=policy, base_logps=torch.zeros_like(policy), mask=torch.tensor(mask),
                        psi=torch.zeros(len(policy)), group_ids=torch.tensor(group_ids), alpha=1.0, clip_eps=0.2)


def test_batch_log_z_is_minus_each_groups_mean_residual():
    # latb, |y| = 1, alpha = 1, base 0: the residual without log Z is log pi itself.
    # group 0: -1, -3 -> log Z = 2;  group 1: -2, -4 -> log Z = 3
    policy, inputs = _log_z_inputs([[-1.0], [-3.0], [-2.0], [-4.0]], [[1], [1], [1], [1]], [0, 0, 1, 1])
    estimate = batch_log_z_estimate(OBJECTIVES["latb"], policy, inputs)
    torch.testing.assert_close(estimate, torch.tensor([2.0, 2.0, 3.0, 3.0]), rtol=0, atol=1e-6)


def test_batch_log_z_for_tb_token_averages_over_tokens_not_completions():
    # per-token residuals without log Z: -1, -3 (first completion), -5 (second): log Z = -(-9)/3 = 3
    # (an average of the completions' mean residuals would give -(-2 - 5)/2 = 3.5)
    policy, inputs = _log_z_inputs([[-1.0, -3.0], [-5.0, 0.0]], [[1, 1], [1, 0]], [0, 0])
    estimate = batch_log_z_estimate(OBJECTIVES["tb-token"], policy, inputs)
    torch.testing.assert_close(estimate, torch.tensor([3.0, 3.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("objective", ["latb", "tb-traj", "tb-token"])
def test_batch_log_z_minimises_the_loss(objective):
    torch.manual_seed(0)
    policy = torch.randn(6, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    inputs = dict(old_logps=policy + 0.1 * torch.randn(6, 4), base_logps=torch.randn(6, 4), mask=mask,
                  psi=torch.zeros(6), group_ids=torch.tensor([0, 0, 0, 1, 1, 1]), alpha=2.0, clip_eps=0.2)
    loss_fn = OBJECTIVES[objective].loss
    best = batch_log_z_estimate(OBJECTIVES[objective], policy, inputs)
    at_best = loss_fn(policy_logps=policy, log_z=best, **inputs)[0]
    for shift in ([0.05, 0.05, 0.05, 0, 0, 0], [0, 0, 0, -0.05, -0.05, -0.05]):
        assert loss_fn(policy_logps=policy, log_z=best + torch.tensor(shift), **inputs)[0] > at_best
