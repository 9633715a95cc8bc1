"""`powerflow sample`: completions from the base model or base + adapter, with their log-probs.

    for record in sample_completions(SampleConfig(model="runs/x/merged", prompt="Tell me a joke.", n=3)):
        print(record["completion"])

Each record carries the policy's log-prob of the completion and, when an
adapter is loaded, the base model's log-prob of the same text (adapter off,
same weights), so you can see how far the adapter moved the distribution.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator

import torch

from .config import SampleConfig
from .data import encode_prompts, load_prompts, prompt_input
from .faults import BatchSize, halve_on_oom
from .logprobs import score
from .model import context_length, eval_mode, load_policy, load_tokenizer, resolve_device
from .samplers import SAMPLERS, resolve_sampler
from .samplers.rollouts import SamplingSettings
from .seeds import row_uniforms


def sample_completions(cfg: SampleConfig, notes: list[str] | None = None) -> Iterator[dict]:
    """The completions of `powerflow sample`, as records (generate_records); a batch halved after running out of
    memory is said in `notes`."""
    rows = [{"prompt": cfg.prompt}] if cfg.prompt else load_prompts(cfg.prompts, cfg.prompt_field, cfg.split)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    prompt_ids = encode_prompts(tokenizer, [prompt_input(row) for row in rows], cfg.chat_template, cfg.system_prompt,
                                cfg.max_new_tokens, context_length(cfg.model, cfg.trust_remote_code),
                                cfg.prompts or "--prompt", getattr(rows, "lines", None))
    model = load_policy(cfg, device)
    settings = SamplingSettings.from_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    for record in generate_records(model, tokenizer, prompt_ids, cfg.n, settings, cfg.batch_size,
                                   score_base=bool(cfg.adapter), sampler=cfg.sampler, notes=notes):
        yield {**rows[record["prompt_index"]], **record}


def generate_records(model, tokenizer, prompt_ids: list[list[int]], n: int, settings: SamplingSettings,
                     rows_per_batch: int, adapter: bool = True, score_base: bool = True,
                     sampler: str = "auto", seed: int | None = None, first_row: int = 0,
                     score_rows: int | None = None, size: BatchSize | None = None, notes: list[str] | None = None,
                     what: str = "while sampling", hint: str = "lower --max-new-tokens") -> Iterator[dict]:
    """n completions per prompt, as records: text, length, how it ended, log pi and (score_base) log p_base.

    With `adapter=False` the adapter is off for sampling and scoring alike, so
    the records are the base model's own and "logp" is already its log-prob.
    `sampler` is a name of samplers.SAMPLERS or auto (samplers.resolve_sampler); a
    sampler that returns log pi with the samples has nothing scored twice.
    With a `seed`, a seeded-rows sampler (static) draws row r (counted from `first_row`: a rank's share of a larger set)
    from uniforms of its own (seeds.row_uniforms), whatever batch it is sampled in.
    Up to `rows_per_batch` rows are sampled together and `score_rows` (default the same) scored together; out of
    memory, both halve (`size`, the flag it names, keeps the halving; each halving is said once in `notes`).
    """
    device = next(model.parameters()).device
    sampler = SAMPLERS[resolve_sampler(sampler, device, settings.top_p)[0]]
    rows = [(index, ids) for index, ids in enumerate(prompt_ids) for _ in range(n)]  # n rows per prompt, in order
    size = size if size is not None else BatchSize("--batch-size", rows_per_batch)
    notes = notes if notes is not None else []

    def records(first: int, count: int) -> list[dict]:
        batch = rows[first:first + count]  # a batch may split a prompt's n samples: -k > batch
        draws = None if seed is None or not sampler.seeded_rows else row_uniforms(
            seed, first_row + first, len(batch), settings.max_new_tokens, device)
        rollouts = sampler.sample(model, tokenizer, [ids for _, ids in batch], 1, settings, uniforms=draws)
        texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        scored = min(score_rows or count, count)
        if rollouts.sampled_logps is None:
            logps = score(model, rollouts, scored, adapter=True)[0].sum(-1).tolist()
        else:
            logps = rollouts.sampled_logps.sum(-1).tolist()
        base_logps = (score(model, rollouts, scored, adapter=False)[0].sum(-1).tolist()
                      if adapter and score_base else None)
        made = []
        for row, (text, (index, _)) in enumerate(zip(texts, batch)):
            record = {"prompt_index": index, "sample": (first + row) % n, "completion": text,
                      "tokens": int(rollouts.lengths[row]),
                      "finish_reason": "length" if rollouts.truncated[row] else "eos", "logp": logps[row]}
            if base_logps is not None:
                record["logp_base"] = base_logps[row]
            if rollouts.sampled_tokens is not None:  # a power sampler: what the answer cost, and its weights' ESS
                record["sampled_tokens"] = int(rollouts.sampled_tokens[row])
            if rollouts.ess is not None:
                record["ess"] = float(rollouts.ess[row])
            if rollouts.resamples is not None:  # power-smc: its particles' resamplings and ESS at each token
                record["resamples"] = int(rollouts.resamples[row])
                steps = rollouts.ess_trace[row]
                record["ess_trace"] = [round(float(e), 2) for e in steps[steps > 0]]
            made.append(record)
        return made

    with eval_mode(model, adapter=adapter):
        first = 0
        while first < len(rows):
            made = halve_on_oom(partial(records, first), size, len(rows) - first, 1, what, hint, notes)
            first += len(made)
            yield from made
