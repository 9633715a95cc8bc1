"""Objectives against numbers worked out by hand, and the invariants docs/design.md section 3 promises."""

import math

import pytest
import torch

from powerflow_lite.objectives import (
    OBJECTIVES,
    group_mean,
    importance_weights,
    latb,
    rl_token,
    rl_traj,
    tb_token,
    tb_traj,
)

PAD = -99.0  # junk in padded positions: it must never reach a loss


def batch(**overrides):
    """Two completions: |y| = 2 and |y| = 3, alpha = 2, log Z = 0.5, psi = (0, -0.5), on-policy (w = 1)."""
    policy = torch.tensor([[-1.0, -2.0, PAD], [-1.0, -1.0, -2.0]], requires_grad=True)
    tensors = dict(
        policy_logps=policy,
        old_logps=policy.detach().clone(),
        base_logps=torch.tensor([[-2.0, -2.0, PAD], [-3.0, -1.0, -2.0]]),
        mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        log_z=torch.tensor([0.5, 0.5]),
        psi=torch.tensor([0.0, -0.5]),
        group_ids=torch.tensor([0, 0]),
        alpha=2.0,
        clip_eps=0.2,
    )
    tensors.update(overrides)
    return tensors


def test_latb_by_hand():
    # row 0: r = 0.5 + (-3)/2 - 2 * ((-4)/2 + 0)    = 0.5 - 1.5 + 4       = 3
    # row 1: r = 0.5 + (-4)/3 - 2 * ((-6)/3 - 0.5)  = 0.5 - 4/3 + 5       = 25/6
    # loss = (3^2 + (25/6)^2) / 2 = (9 + 625/36) / 2 = 949/72
    inputs = batch()
    loss, stats = latb(**inputs)
    assert loss.item() == pytest.approx(949 / 72, abs=1e-6)
    torch.testing.assert_close(stats["residual"], torch.tensor([3.0, 25 / 6]))
    # d loss / d log pi_t = 2 w r / (|y| N) on real tokens, 0 on padding
    loss.backward()
    expected = torch.tensor([[2 * 3 / 2 / 2, 2 * 3 / 2 / 2, 0.0], [(2 * 25 / 6 / 3 / 2)] * 3])
    torch.testing.assert_close(inputs["policy_logps"].grad, expected)


def test_tb_traj_by_hand():
    # row 0: r = 0.5 + (-3) - 2 * (-4 + 0)   = 5.5
    # row 1: r = 0.5 + (-4) - 2 * (-6 - 0.5) = 9.5      loss = (30.25 + 90.25) / 2 = 60.25
    loss, stats = tb_traj(**batch())
    assert loss.item() == pytest.approx(60.25, abs=1e-6)
    torch.testing.assert_close(stats["residual"], torch.tensor([5.5, 9.5]))


def test_tb_token_by_hand():
    # r_t = 0.5 + log pi_t - 2 * (log p_base_t + psi/|y|)
    # row 0 (psi/|y| = 0):    0.5 - 1 + 4 = 3.5,  0.5 - 2 + 4 = 2.5
    # row 1 (psi/|y| = -1/6): 0.5 - 1 + 6 + 1/3 = 35/6,  0.5 - 1 + 2 + 1/3 = 11/6,  0.5 - 2 + 4 + 1/3 = 17/6
    # loss = mean of the 5 squares = (12.25 + 6.25 + (1225 + 121 + 289)/36) / 5
    loss, stats = tb_token(**batch())
    assert loss.item() == pytest.approx((18.5 + 1635 / 36) / 5, abs=1e-6)
    torch.testing.assert_close(stats["residual"], torch.tensor([3.0, (35 + 11 + 17) / 6 / 3]))


def test_rl_traj_by_hand():
    # R = 2 (S_base + psi) - S_pi:  row 0: -8 + 3 = -5,  row 1: -13 + 4 = -9;  group mean -7 -> A = (2, -2)
    # loss = -(A . S_pi) / 2 = -(2 * -3 + -2 * -4) / 2 = -1
    inputs = batch()
    loss, stats = rl_traj(**inputs)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    torch.testing.assert_close(stats["residual"], torch.tensor([5.0, 9.0]))  # -R
    loss.backward()  # d loss / d log pi_t = -A_n / N on every real token
    torch.testing.assert_close(inputs["policy_logps"].grad, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]))


def test_rl_token_by_hand():
    # R/|y| = 2 (S_base/|y| + psi) - S_pi/|y|:  row 0: -4 + 3/2 = -5/2,  row 1: -5 + 4/3 = -11/3
    # mean -37/12 -> A = (7/12, -7/12);  loss = -(7/12 * -3/2 + -7/12 * -4/3) / 2 = 7/144
    loss, _ = rl_token(**batch())
    assert loss.item() == pytest.approx(7 / 144, abs=1e-6)


def test_rl_baseline_is_per_group():
    # Two groups of one completion each: every advantage is zero, so is the loss.
    loss, _ = rl_traj(**batch(group_ids=torch.tensor([0, 1])))
    assert loss.item() == 0.0


@pytest.mark.parametrize("name", ["latb", "tb-traj", "tb-token"])
def test_zero_loss_at_balance(name):
    # Each objective's balanced policy: log pi_t = alpha (log p_base_t + psi_share) - c with log Z = c,
    # where psi enters per token in latb (added to the mean base log-prob) and spread as psi/|y| otherwise.
    inputs = batch()
    mask, psi, alpha, c = inputs["mask"], inputs["psi"], inputs["alpha"], 0.7
    length = mask.sum(-1, keepdim=True)
    psi_share = psi[:, None] if name == "latb" else psi[:, None] / length
    policy = alpha * (inputs["base_logps"] + psi_share) - c
    log_z = c * mask.sum(-1) if name == "tb-traj" else torch.full((2,), c)  # TB's log Z absorbs c |y|
    loss, stats = OBJECTIVES[name].loss(**batch(policy_logps=policy, old_logps=policy, log_z=log_z))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert stats["residual"].abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_padding_is_ignored(name):
    changed = batch()
    for key in ("policy_logps", "old_logps", "base_logps"):
        changed[key] = changed[key].detach().clone()
        changed[key][0, 2] = 123.0
    assert OBJECTIVES[name].loss(**changed)[0].item() == pytest.approx(OBJECTIVES[name].loss(**batch())[0].item())


def test_latb_is_invariant_to_length_and_tb_traj_is_not():
    """A constant per-token mismatch d gives the same LA-TB residual at every length; TB's grows with |y|."""
    d, log_z = -0.3, 0.1
    latb_residuals, tb_residuals = [], []
    for length in range(1, 6):
        base = torch.linspace(-3.0, -1.0, length)[None, :]
        policy = 2.0 * base + d  # log pi - alpha log p_base = d on every token
        inputs = batch(policy_logps=policy, old_logps=policy, base_logps=base, mask=torch.ones(1, length),
                       log_z=torch.tensor([log_z]), psi=torch.zeros(1), group_ids=torch.zeros(1))
        latb_residuals.append(latb(**inputs)[1]["residual"].item())
        tb_residuals.append(tb_traj(**inputs)[1]["residual"].item())
    assert latb_residuals == pytest.approx([log_z + d] * 5, abs=1e-6)
    assert tb_residuals == pytest.approx([log_z + d * n for n in range(1, 6)], abs=1e-5)


def test_importance_weight_is_length_normalised_and_clipped():
    policy = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # row 0: S_pi - S_old = 2 * 0.5 = 1 over |y| = 2 -> exp(0.5) = 1.65 -> clipped to 1.2
    # row 1: one real token, S_pi - S_old = -0.1 -> exp(-0.1) = 0.905, inside [0.8, 1.2]
    old = torch.tensor([[-1.5, -1.5], [-0.9, 7.0]])
    weight, clipped = importance_weights(policy, old, mask, clip_eps=0.2)
    torch.testing.assert_close(weight, torch.tensor([1.2, math.exp(-0.1)]))
    assert clipped.tolist() == [True, False]


def test_weights_scale_latb_terms():
    inputs = batch(old_logps=batch()["policy_logps"].detach() + 0.05)  # ratio exp(-0.05) on both rows
    loss, stats = latb(**inputs)
    assert loss.item() == pytest.approx(math.exp(-0.05) * 949 / 72, rel=1e-6)
    assert not stats["clipped"].any()


@pytest.mark.parametrize("name", ["latb", "tb-token", "rl-traj"])
def test_micro_batch_losses_add_up_to_the_full_batch(name):
    """With the whole step's denominator, losses of row slices sum to the full-batch loss."""
    objective = OBJECTIVES[name]
    inputs = batch(group_ids=torch.tensor([0, 1]) if not objective.grouped else torch.tensor([0, 0]))
    full, _ = objective.loss(**inputs)
    denominator = inputs["mask"].sum().item() if objective.per_token else 2
    rows = [slice(0, 2)] if objective.grouped else [slice(0, 1), slice(1, 2)]
    parts = sum(objective.loss(denominator=denominator,
                               **{k: v[r] if torch.is_tensor(v) else v for k, v in inputs.items()})[0] for r in rows)
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_group_mean():
    values = torch.tensor([1.0, 3.0, 10.0, 5.0, 20.0])
    groups = torch.tensor([7, 7, 2, 7, 2])
    torch.testing.assert_close(group_mean(values, groups), torch.tensor([3.0, 3.0, 15.0, 3.0, 15.0]))
