"""Fail in the first minute, not after hours: before step 1 on a GPU, the worst-case shapes once.

    if probes(run): notes += worst_case(run)   # halvings said in notes; a run that cannot fit stops here

The longest training prompt, every completion at --max-new-tokens (EOS ignored), a sampling call of the step's
size, scoring and one micro-batch's forward and backward at --micro-batch-size, and the evaluation's sampling batch
with its longest prompt: each through the step's own functions and their out-of-memory halving, so a size that does
not fit is halved (and kept, as a halving during training is) or the run stops with the flags to change, before any
step has spent time. Nothing is learnt: the gradients are dropped and no optimizer step is taken; the random
draws are the probe's own, and each step seeds its own anyway (seeds.py). On by default on a GPU
(--no-probe skips it); on the CPU it does not run.

Also here: the time estimate of the run's own card, from the rehearsal (rehearse.py), recorded beside the measured
seconds of each phase in metrics.jsonl.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from . import rollout, scoring
from .cards import find_card
from .estimate import step_estimate
from .faults import halve_on_oom
from .inference import generate_records
from .logprobs import completion_logprobs
from .memory_plan import model_config
from .record import eval_sizes
from .rehearse import rehearse, step_costs

if TYPE_CHECKING:
    from .setup import Run


def probes(run: Run) -> bool:
    """Whether the probe runs: on a GPU, unless --no-probe."""
    return run.cfg.probe and run.device.type == "cuda"


def worst_case(run: Run) -> list[str]:
    """Run the worst-case shapes once; -> the notes of what was halved."""
    cfg, state, notes = run.cfg, run.state, []
    longest = max(run.prompt_ids, key=len)
    full_length = replace(run, sampling=replace(run.sampling, ignore_eos=True, min_new_tokens=0))
    step = range(cfg.prompts_per_step)
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        rollouts = rollout._sample(full_length, [longest] * len(step[run.ranks.share(step)]), 0, notes)
        scoring._score(run, rollouts, notes)
        halve_on_oom(lambda rows: _forward_backward(run, rollouts, rows), state.micro_batch, len(rollouts),
                     cfg.micro_batch_group, "in the update (worst-case probe)", "lower --max-new-tokens", notes)
        if run.evals:
            _evaluation(full_length, notes)
    return notes


def _forward_backward(run: Run, rollouts, rows: int) -> None:
    """One micro-batch of the update, its gradients dropped."""
    run.model.train()
    try:
        logps, _ = completion_logprobs(run.model, rollouts.select(slice(0, rows)))
        logps.sum().backward()
    finally:
        run.model.zero_grad(set_to_none=True)
        run.model.eval()


def _evaluation(run: Run, notes: list[str]) -> None:
    """The evaluation's sampling batch on its longest prompt, at full length; a halving carries over to training's
    sampling, as in record.evaluate_policy."""
    longest = max((ids for each in run.evals for ids in each.eval_set.prompt_ids), key=len)
    with eval_sizes(run) as (size, score_rows):
        count = -(-size.value // run.cfg.eval_k)  # enough prompts for one full batch
        for _ in generate_records(run.model, run.tokenizer, [longest] * count, run.cfg.eval_k, run.sampling,
                                  size.value, score_rows=score_rows, size=size, notes=notes,
                                  what="in the evaluation (worst-case probe)", hint="lower --max-new-tokens"):
            pass


# --- the time estimate of this card


def card_estimate(run: Run, name: str) -> dict:
    """The estimated seconds of each phase on the card called `name` (torch.cuda.get_device_name), from the
    rehearsal at the run's shape and its longest prompt: {"estimate_time_sample", ...}; {} for a card the table
    (cards.py) does not have."""
    card = find_card(name)
    if card is None:
        return {}
    longest = max(len(ids) for ids in run.prompt_ids)
    rehearsal = rehearse(run.cfg, model_config(run.cfg.model, run.cfg.trust_remote_code), longest)
    times = {phase.name: phase.estimate for phase in step_estimate(step_costs(rehearsal), card).phases}
    return {"estimate_time_sample": times["prefill"] + times["decode"], "estimate_time_score": times["scoring"],
            "estimate_time_update": times["update"]}
