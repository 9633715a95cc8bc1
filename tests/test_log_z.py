"""The log Z'(q) head: starts constant, bias init from residuals, save/load, scale invariance."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from powerflow_lite.errors import PowerflowError
from powerflow_lite.log_z import LogZHead, load_head, save_head

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
