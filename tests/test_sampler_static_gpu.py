"""The static-cache sampler on a CUDA GPU with NF4 + LoRA (skipped without one; run by examples/gpu_checks.sh)."""

from __future__ import annotations

import pytest
import torch

from powerflow_lite.logprobs import score
from powerflow_lite.model import add_lora, load_base_model, load_tokenizer
from powerflow_lite.samplers.hf import sample
from powerflow_lite.samplers.rollouts import SamplingSettings
from powerflow_lite.samplers.static import sample_static
from powerflow_lite.tiny import write_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_policy(tmp_path_factory):
    model_dir = write_tiny_model(tmp_path_factory.mktemp("gpu") / "model", logit_scale=4.0)
    torch.manual_seed(0)
    model = add_lora(load_base_model(str(model_dir), "nf4", torch.device("cuda")), 8, 16, 0.0, "all-linear", False)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    tokenizer = load_tokenizer(str(model_dir))
    prompts = [tokenizer("hello there, how are you").input_ids, tokenizer("a b").input_ids]
    return model.eval(), tokenizer, prompts


def test_sampled_logps_match_teacher_forcing_on_cuda(cuda_policy):
    model, tokenizer, prompts = cuda_policy
    torch.manual_seed(0)
    rollouts = sample_static(model, tokenizer, prompts, 4, SamplingSettings(24))
    teacher_forced, _ = score(model, rollouts, 8, adapter=True)
    # bf16 compute: the cached decode and the full forward round differently, but only in the last bits
    assert (rollouts.sampled_logps - teacher_forced).abs().max() < 0.05
    assert rollouts.sampled_logps.device.type == "cuda"


def test_greedy_agrees_with_generate_on_cuda(cuda_policy):
    model, tokenizer, prompts = cuda_policy
    from transformers import GenerationConfig

    from powerflow_lite.samplers.rollouts import eos_token_ids, left_pad

    ids, mask = left_pad([p for p in prompts for _ in range(2)], tokenizer.pad_token_id, torch.device("cuda"))
    reference = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=16, eos_token_id=eos_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id))[:, ids.shape[1]:]
    ours = sample_static(model, tokenizer, prompts, 2, SamplingSettings(16), greedy=True).completion_ids
    width = min(ours.shape[1], reference.shape[1])
    assert torch.equal(ours[:, 0], reference[:, 0])  # the first token comes from the same prefill
    assert (ours[:, :width] == reference[:, :width]).float().mean() >= 0.95  # bf16 ties may flip a late argmax


def test_both_samplers_fill_the_same_shapes_on_cuda(cuda_policy):
    model, tokenizer, prompts = cuda_policy
    settings = SamplingSettings(12, ignore_eos=True)
    ours, theirs = (fn(model, tokenizer, prompts, 3, settings) for fn in (sample_static, sample))
    assert ours.completion_ids.shape == theirs.completion_ids.shape == (6, 12)
