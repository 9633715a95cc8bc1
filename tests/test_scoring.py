"""Chunked per-token log-probs equal a full log-softmax, with and without grad, and never build full logits."""

import pytest
import torch

from powerflow_lite.model import add_lora, eval_mode, load_base_model
from powerflow_lite.sampling import Rollouts
from powerflow_lite.scoring import completion_logprobs, score


@pytest.fixture
def policy(tiny_model_dir):
    torch.manual_seed(0)
    model = add_lora(load_base_model(str(tiny_model_dir), "none", torch.device("cpu")), r=4)
    with torch.no_grad():  # PEFT starts lora_B at 0; make the adapter do something
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def ragged_rollouts() -> Rollouts:
    """Three rows: prompts of 2, 4, 3 tokens (left-padded), completions of 3, 1, 4 tokens (right-padded)."""
    prompt_ids = torch.tensor([[0, 0, 40, 41], [42, 43, 44, 45], [0, 46, 47, 48]])
    prompt_mask = (torch.arange(4)[None, :] >= torch.tensor([2, 0, 1])[:, None]).long()
    completion_ids = torch.tensor([[10, 11, 12, 0], [13, 0, 0, 0], [14, 15, 16, 2]])
    completion_mask = (torch.arange(4)[None, :] < torch.tensor([3, 1, 4])[:, None]).long()
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.tensor([0, 1, 2]),
                    torch.tensor([True, False, False]))


def full_logprobs(model, rollouts: Rollouts) -> torch.Tensor:
    """The naive reference: the whole logits tensor, log_softmax, gather."""
    prompt_len = rollouts.prompt_ids.shape[1]
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, prompt_len - 1:-1]
    logps = logits.float().log_softmax(-1).gather(-1, rollouts.completion_ids[..., None]).squeeze(-1)
    return logps * rollouts.completion_mask


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_chunked_equals_full_log_softmax(policy, chunk):
    rollouts = ragged_rollouts()
    with torch.no_grad(), eval_mode(policy):
        expected = full_logprobs(policy, rollouts)
        got, _ = completion_logprobs(policy, rollouts, chunk_positions=chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[rollouts.completion_mask == 0] == 0).all()


def test_chunked_gradients_equal_full_gradients(policy):
    rollouts = ragged_rollouts()
    policy.eval()  # no dropout; grad still flows
    weights = torch.randn(3, 4)

    def lora_grads(logps):
        policy.zero_grad()
        (logps * weights).sum().backward()
        return [p.grad.clone() for p in policy.parameters() if p.requires_grad]

    chunked = lora_grads(completion_logprobs(policy, rollouts, chunk_positions=2)[0])
    full = lora_grads(full_logprobs(policy, rollouts))
    for a, b in zip(chunked, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lm_head_never_sees_more_than_one_chunk(policy):
    seen = []
    head = policy.get_base_model().lm_head
    handle = head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        completion_logprobs(policy, ragged_rollouts(), chunk_positions=3)
    finally:
        handle.remove()
    # 8 completion tokens in chunks of 3 -> 3, 3, 2 (and recomputation in backward would repeat them)
    assert seen == [3, 3, 2]


def test_left_padding_does_not_change_scores(policy):
    rollouts = ragged_rollouts()
    alone = Rollouts(rollouts.prompt_ids[2:, 1:], rollouts.prompt_mask[2:, 1:], rollouts.completion_ids[2:],
                     rollouts.completion_mask[2:], rollouts.group_ids[2:], rollouts.truncated[2:])
    with torch.no_grad(), eval_mode(policy):
        padded, _ = completion_logprobs(policy, rollouts)
        unpadded, _ = completion_logprobs(policy, alone)
    torch.testing.assert_close(padded[2:], unpadded, atol=1e-5, rtol=1e-5)


def test_prompt_features_are_the_masked_mean_of_prompt_states(policy):
    rollouts = ragged_rollouts()
    with torch.no_grad(), eval_mode(policy):
        _, features = completion_logprobs(policy, rollouts)
        hidden = policy(input_ids=rollouts.prompt_ids[1:2], output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(features[1], hidden[0].mean(0), atol=1e-5, rtol=1e-5)
    assert not features.requires_grad


def test_score_in_batches_matches_one_batch(policy):
    rollouts = ragged_rollouts()
    one, features_one = score(policy, rollouts, batch_size=3)
    many, features_many = score(policy, rollouts, batch_size=1)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features_one, features_many, atol=1e-5, rtol=1e-5)
