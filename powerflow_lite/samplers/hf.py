"""`--sampler hf`: Hugging Face `generate`, reshaped to pure ancestral sampling.

    rollouts = sample(model, tokenizer, [ids_q1, ids_q2], samples_per_prompt=4,
                      settings=SamplingSettings(max_new_tokens=128))

The maths assumes the behaviour policy is the model itself at the given
temperature, so `generate` gets a configuration in which nothing else reshapes
the distribution: the model's own `generation_config.json` (top_k=20,
repetition penalties, ...) is swapped out for the call, and `top_k=0`
overrides the library's global default of 50.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from ..model import eval_mode, hf_model
from .rollouts import Rollouts, SamplingSettings, group_ids_of, left_pad, per_sample, stop_token_ids


def sample(model, tokenizer, prompts: list[list[int]], samples_per_prompt: int, settings: SamplingSettings,
           uniforms: Tensor | None = None) -> Rollouts:
    """G = samples_per_prompt completions for each prompt (rows grouped by prompt), adapter as it is set.
    `generate` draws from torch's own stream: `uniforms` (the static sampler's) is not used."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(per_sample(prompts, samples_per_prompt), tokenizer.pad_token_id, device)
    stop_ids = stop_token_ids(model, tokenizer, settings)
    generation_config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=0,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens or None,
        eos_token_id=stop_ids,  # an empty list, not None: None would fall back to the model's EOS
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    with eval_mode(model), _neutral_generation_config(model):
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config)
    completion_ids = output[:, prompt_ids.shape[1]:]  # [N, L]
    completion_mask, truncated = _completion_mask(completion_ids, stop_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    group_ids = group_ids_of(len(prompts), samples_per_prompt, device)
    temperature = torch.full((len(completion_ids),), settings.temperature, device=device)
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, group_ids, truncated,
                    temperature=temperature)


def _completion_mask(completion_ids: Tensor, stop_ids: list[int]) -> tuple[Tensor, Tensor]:
    """1 up to and including the first stop token; rows without one run to the end (truncated)."""
    length = completion_ids.shape[1]
    if not stop_ids:
        full = torch.ones_like(completion_ids)
        return full, torch.ones(completion_ids.shape[0], dtype=torch.bool, device=completion_ids.device)
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))  # [N, L]
    stopped = is_stop.any(-1)  # [N]
    first_stop = is_stop.int().argmax(-1)  # [N], 0 where there is none
    lengths = torch.where(stopped, first_stop + 1, torch.full_like(first_stop, length))  # [N]
    positions = torch.arange(length, device=completion_ids.device)
    return (positions[None, :] < lengths[:, None]).long(), ~stopped


@contextmanager
def _neutral_generation_config(model):
    """Hide the model's own generation defaults (top_k, penalties, ...) for the duration of a call."""
    from transformers import GenerationConfig

    inner = hf_model(model)
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved
