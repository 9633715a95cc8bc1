"""Chunked per-token log-probs equal a full log-softmax, with and without grad, and never build full logits."""

import pytest
import torch

from powerflow_lite.logprobs import completion_logprobs, score, score_temperatures
from powerflow_lite.model import add_lora, eval_mode, load_base_model
from powerflow_lite.samplers.rollouts import Rollouts


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


def grouped_rollouts() -> Rollouts:
    """Two prompts (2 and 4 tokens, left-padded) answered 3 and 2 times, completions of 1-4 tokens, rows shuffled."""
    prompts = torch.tensor([[0, 0, 40, 41], [42, 43, 44, 45]])
    masks = (torch.arange(4)[None, :] >= torch.tensor([2, 0])[:, None]).long()
    rows = torch.tensor([0, 1, 0, 1, 0])  # rows of one prompt need not be next to each other
    completion_ids = torch.tensor([[10, 11, 12, 0], [13, 0, 0, 0], [14, 15, 16, 2], [17, 18, 0, 0], [19, 0, 0, 0]])
    lengths = torch.tensor([3, 1, 4, 2, 1])
    completion_mask = (torch.arange(4)[None, :] < lengths[:, None]).long()
    return Rollouts(prompts[rows], masks[rows], completion_ids, completion_mask, rows, lengths < 4)


@pytest.mark.parametrize("grad", [False, True])
def test_a_shared_prompt_pass_gives_what_one_pass_per_row_gives(tiny_model_dir, grad, monkeypatch):
    import powerflow_lite.logprobs as logprobs

    torch.manual_seed(0)
    policy = add_lora(load_base_model(str(tiny_model_dir), "none", torch.device("cpu")), r=4,
                      gradient_checkpointing=False)  # the update without checkpointing keeps the cache
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    rollouts = grouped_rollouts()
    weights = torch.randn(5, 4)
    policy.train()

    def run(shared: bool):
        monkeypatch.setattr(logprobs, "_keeps_a_cache", lambda decoder: shared)
        calls = []
        hook = policy.get_base_model().get_decoder().register_forward_hook(lambda m, args, kw, out: calls.append(
            kw["input_ids"].shape), with_kwargs=True)
        policy.zero_grad()
        with torch.set_grad_enabled(grad):
            logps, features = completion_logprobs(policy, rollouts)
            if grad:
                (logps * weights).sum().backward()
        hook.remove()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        return logps.detach(), features, grads, calls

    shared, separate = run(True), run(False)
    assert shared[3] == [torch.Size([2, 4]), torch.Size([5, 4])]  # the 2 distinct prompts, then the 5 completions
    assert separate[3] == [torch.Size([5, 8])]  # every row with its own prompt
    torch.testing.assert_close(shared[0], separate[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1], separate[1], atol=1e-5, rtol=0)
    assert torch.equal(shared[1][0], shared[1][2])  # rows of one prompt share its features
    assert len(shared[2]) == len(separate[2]) == (len([p for p in policy.parameters() if p.requires_grad]) if grad
                                                 else 0)
    for got, want in zip(shared[2], separate[2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_checkpointed_layers_under_grad_do_not_share_the_prompt(tiny_model_dir):
    # Hugging Face drops a cache passed to a checkpointed layer in training mode: each row must run its prompt
    from powerflow_lite.logprobs import _keeps_a_cache

    torch.manual_seed(0)
    model = add_lora(load_base_model(str(tiny_model_dir), "none", torch.device("cpu")), r=4,
                     gradient_checkpointing=True)
    decoder = model.get_base_model().get_decoder()
    model.train()
    assert not _keeps_a_cache(decoder)
    with torch.no_grad():
        assert _keeps_a_cache(decoder)  # no backward to replay: the cache is used
    model.eval()
    assert _keeps_a_cache(decoder)


def test_one_pass_at_several_temperatures_equals_one_pass_each(policy):
    """score_temperatures (the preview's: one decoder pass, the logits divided by each temperature) against
    score at each temperature, adapter off, shared prompts included."""
    for rollouts in (ragged_rollouts(), grouped_rollouts()):
        together = score_temperatures(policy, rollouts, 2, (1.0, 0.5, 2.0))  # [3, N, L]
        for found, temperature in zip(together, (1.0, 0.5, 2.0)):
            torch.testing.assert_close(found, score(policy, rollouts, 2, adapter=False, temperature=temperature)[0],
                                       atol=1e-5, rtol=1e-5)
        assert not torch.allclose(together[0], together[1])  # the temperatures do differ
