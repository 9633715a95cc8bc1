"""samplers/hf.py (Hugging Face generate) and Rollouts: grouping, EOS and truncation masks, seeds, sampling."""

import pytest
import torch

from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.samplers.hf import _completion_mask, sample
from powerflow_lite.samplers.rollouts import SamplingSettings, eos_token_ids, left_pad

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), "none", CPU), load_tokenizer(str(tiny_model_dir))


def prompts(tokenizer):
    return [tokenizer("hi").input_ids, tokenizer("a longer prompt").input_ids]


def test_rows_are_grouped_by_prompt_and_left_padded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = prompts(tokenizer)
    rollouts = sample(model, tokenizer, ids, 3, SamplingSettings(max_new_tokens=6))
    assert rollouts.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    width = len(ids[1])
    for row in range(3):
        assert rollouts.prompt_ids[row, width - len(ids[0]):].tolist() == ids[0]
        assert rollouts.prompt_mask[row].tolist() == [0] * (width - len(ids[0])) + [1] * len(ids[0])
    assert rollouts.prompt_ids[4].tolist() == ids[1]


def test_ignore_eos_gives_exactly_max_new_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rollouts = sample(model, tokenizer, prompts(tokenizer), 4, SamplingSettings(max_new_tokens=9, ignore_eos=True))
    assert rollouts.completion_ids.shape == (8, 9)
    assert rollouts.lengths.tolist() == [9] * 8
    assert rollouts.truncated.all()


def test_completion_mask_stops_after_the_first_stop_token():
    eos, other_eos = 2, 0
    ids = torch.tensor([[5, eos, 7, eos], [5, 6, 7, 8], [other_eos, 6, 7, 8], [5, 6, 7, eos]])
    mask, truncated = _completion_mask(ids, [other_eos, eos])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True, False, False]


def test_rows_end_at_eos_and_padding_follows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    # 64 rows of up to 40 tokens from a near-uniform 103-token model: EOS (p ~ 1/103) appears in some
    rollouts = sample(model, tokenizer, prompts(tokenizer), 32, SamplingSettings(max_new_tokens=40))
    stops = eos_token_ids(model, tokenizer)
    ended = ~rollouts.truncated
    assert ended.any() and rollouts.truncated.any()
    for row in range(len(rollouts)):
        length = int(rollouts.lengths[row])
        tokens = rollouts.completion_ids[row].tolist()
        if ended[row]:
            assert tokens[length - 1] in stops and not set(tokens[:length - 1]) & set(stops)
        assert set(tokens[length:]) <= {tokenizer.pad_token_id}


def test_same_seed_same_samples_other_seed_other_samples(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSettings(max_new_tokens=8)

    def draw(seed):
        torch.manual_seed(seed)
        return sample(model, tokenizer, prompts(tokenizer), 2, settings).completion_ids

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_model_generation_defaults_do_not_reshape_the_distribution(model_and_tokenizer):
    """A generation_config.json with top_k=1 would make every sample identical; ours must ignore it."""
    model, tokenizer = model_and_tokenizer
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 5.0
    try:
        torch.manual_seed(0)
        rollouts = sample(model, tokenizer, prompts(tokenizer)[:1], 8, SamplingSettings(max_new_tokens=6))
        assert len({tuple(row) for row in rollouts.completion_ids.tolist()}) > 1
        assert model.generation_config.top_k == 1  # restored afterwards
    finally:
        model.generation_config.top_k = None
        model.generation_config.repetition_penalty = None


def test_sampling_is_not_cut_to_the_top_50_tokens(model_and_tokenizer):
    """transformers' global default is top_k=50; with 103 near-equiprobable tokens we must see more than 50."""
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    rollouts = sample(model, tokenizer, prompts(tokenizer)[:1], 1500, SamplingSettings(max_new_tokens=1))
    assert len(set(rollouts.completion_ids[:, 0].tolist())) > 80


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device=CPU)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_extra_stop_ids_end_completions(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    stop = tokenizer.convert_tokens_to_ids("e")  # an ordinary token, p ~ 1/103 per position
    torch.manual_seed(0)
    rollouts = sample(model, tokenizer, prompts(tokenizer), 32, SamplingSettings(max_new_tokens=60, stop_ids=(stop,)))
    ended = ~rollouts.truncated
    assert ended.sum() > 10
    last = rollouts.completion_ids[ended, rollouts.lengths[ended] - 1]
    assert set(last.tolist()) <= {stop, *eos_token_ids(model, tokenizer)} and stop in last.tolist()
