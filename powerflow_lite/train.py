"""The training loop: sample from the policy, score with the adapter off, update with LA-TB.

    run = setup(cfg)           # run.py: output dir, prompts, model + LoRA, log Z head, optimizer, resume
    for result in train(run):  # one StepResult per step; metrics.jsonl and checkpoints written here
        print(result.metrics.get("loss"))  # step 0, with --eval-data: the eval before training, no loss

`train` is a generator so that the CLI can draw its live display between steps
without the loop knowing about terminals. Nothing here prints.

Reproducibility: step s reseeds torch from (seed, s) and takes the prompts
`data.prompt_indices(seed, f)`, f the number of steps that sampled before it
(all of them without --replay-steps); a replay step draws its prompts from
(seed, s) and the buffer. A checkpoint holds f and the buffer, so a run resumed
from checkpoint-s draws exactly what the uninterrupted run would have drawn.

Under torchrun or accelerate launch (distributed.py, docs/design.md section 13) each rank runs this loop on
its share of every step's prompts; the gradients, the log Z' start and re-centring, the metrics and the
stop decisions are shared, and rank 0 alone writes.

Faults (faults.py): a CUDA out-of-memory error halves the sampling batch or the
micro-batch and retries the stage; a step whose loss or gradient is not finite
is not applied (with K inner epochs: from the bad epoch on) and is counted, and
--max-bad-steps of them in a row stop the run; `should_stop` (a signal) ends the
loop after a step, with a checkpoint.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .batch import ScoredBatch
from .data import prompt_indices
from .distributed import uniforms
from .engine import SAMPLERS
from .errors import PowerflowError
from .evaluate import EVALS, before_after, training_metrics, write_training_eval
from .faults import halve_on_oom
from .metrics import mean, peak_rss_gib, reset_peak_rss, std
from .model import trainable_parameters
from .replay import replay_batch
from .rewards import format_penalties
from .run import Run, lr_lambda, setup  # noqa: F401 - setup and lr_lambda are re-exported: train.setup(cfg)
from .sampling import Rollouts, SamplingSettings, group_ids_of, sample_in_batches
from .scoring import completion_logprobs, score


@dataclass(frozen=True)
class StepResult:
    step: int  # steps completed
    max_steps: int
    metrics: dict
    example: dict | None  # one prompt and completion, every --show-every steps
    checkpoint: Path | None
    notes: tuple[str, ...] = ()  # things the user should read once, e.g. a batch halved after running out of memory


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Step `step`'s random stream; under a launcher each rank's its own (dropout masks, generate's draws)."""
    torch.manual_seed(seed * 1_000_003 + step + rank * 2**56)


CPU_EVAL_ROWS = 128  # completions sampled together by an eval during training on the CPU


def micro_batches(n: int, size: int, group_size: int) -> list[slice]:
    """Consecutive row slices of at most `size` rows (a multiple of `group_size`: whole groups stay together)."""
    size = max(1, size // group_size) * group_size
    return [slice(start, start + size) for start in range(0, n, size)]


def train(run: Run, should_stop: Callable[[], bool] = lambda: False) -> Iterator[StepResult]:
    """The steps from run.start_step; stops early, after a checkpoint, once `should_stop()` is true."""
    cfg, tokenizer, ranks = run.cfg, run.tokenizer, run.ranks
    settings = SamplingSettings.from_config(cfg, tokenizer)
    G = cfg.samples_per_prompt
    stop_requested = should_stop
    should_stop = lambda: ranks.any(stop_requested())  # noqa: E731 - all ranks stop after the same step
    if run.eval_set is not None and run.start_step == 0:  # where the curves start: the base model itself
        run.info["eval_before"] = {"step": 0, **_evaluate(run, settings.stop_ids, 0)}
        run.metrics.write(run.info["eval_before"])
        yield StepResult(0, cfg.max_steps, run.info["eval_before"], None, None)  # shown before step 1 starts
        if should_stop():  # a signal during that eval: nothing trained yet, so no checkpoint to write
            run.info["stopped"] = True  # (under a launcher the signal may have reached another rank only)
            return

    for step in range(run.start_step, cfg.max_steps):
        _reset_peak_memory(run.device)
        notes: list[str] = []  # said once, e.g. a batch halved after running out of memory

        # --- 1. sample G completions per prompt from the policy (adapter on, temperature 1), or, on a replay
        #        step (--replay-steps), take G stored completions of each of B prompts from the buffer
        started = time.perf_counter()
        seed_step(cfg.seed, step, ranks.rank)  # a replay step's random draws (dropout) too: (seed, step, rank)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # a replay step's draws
        replayed = _replay_prompts(run, step, generator)  # None: a fresh step
        if replayed is None:
            every = prompt_indices(len(run.prompts), run.fresh_steps, cfg.prompts_per_step, cfg.seed)
            share = ranks.share(every)  # under a launcher this rank's part of the step's prompts; else all
            batch = every[share]
            rollouts = _sample(run, [run.prompt_ids[i] for i in batch], settings, step, notes, share.start, len(every))
            if ranks.active:  # padded as one process pads the whole step: the same shapes, the same rounding
                widths = (max(len(run.prompt_ids[i]) for i in every), ranks.max(rollouts.completion_ids.shape[1]))
                rollouts = Rollouts.concat([rollouts], tokenizer.pad_token_id, rollouts.group_ids, widths)
            run.fresh_steps += 1
        else:
            batch = replayed
            entries = [entry for prompt in batch for entry in run.replay.draw(prompt, G, generator)]
            rollouts, stored_base, stored_behaviour, stored_features = replay_batch(
                entries, run.prompt_ids, G, tokenizer.pad_token_id, run.device)
        texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        sampled = _clock(run.device)

        # --- 2. score without grad: log pi_old, log p_base (same weights, adapter off), psi(y), and the
        #        behaviour log-probs (explored rows: the policy at --explore-temperature); a replayed completion
        #        keeps its log p_base, behaviour log-probs and features and needs only log pi under today's weights
        prompt_texts = [run.prompts[batch[g]]["prompt"] for g in rollouts.group_ids.tolist()]
        if replayed is None:
            old_logps, behaviour_logps, base_logps, features = _score(run, rollouts, notes)  # 3 x [N, L], [N, H]
        else:
            old_logps = _score(run, rollouts, notes, base=False)[0]  # [N, L]
            behaviour_logps, base_logps, features = stored_behaviour, stored_base, stored_features
        # psi under this invocation's --format-penalty and --truncation-penalty, replayed completions included
        formats = torch.tensor(format_penalties(run.psi, cfg.format_penalty, texts, prompt_texts),
                               device=run.device)  # [N]
        psi = formats - cfg.truncation_penalty * rollouts.truncated.float()  # [N]
        scored_batch = ScoredBatch(rollouts, old_logps, base_logps, psi, features, behaviour_logps)
        if replayed is None and run.replay is not None:
            run.replay.add(scored_batch, batch, step + 1, cfg.alpha)
        scored = _clock(run.device)

        # --- 3. log Z' before the update (partition.py): each prompt's batch estimate from its G samples; the
        #        first finite batch starts the head, and with --log-z batch or hybrid every batch re-centres it
        before = run.log_z.before_update(scored_batch, G)

        # --- 4. K inner epochs of updates over micro-batches; a non-finite loss or gradient skips the rest
        update = _update(run, scored_batch, notes, cfg.replay_lr_scale if replayed is not None else 1.0)
        if update.skipped and len(update.losses) == 1:  # not even a first epoch applied: nor is the re-centring
            run.log_z.undo(before)
        run.bad_in_row = run.bad_in_row + 1 if update.skipped else 0
        updated = _clock(run.device)

        # --- 5. log, stop after too many bad steps, checkpoint (under a launcher: over every rank's rows)
        times = [sampled - started, scored - sampled, updated - scored]
        row = _metrics_row(run, step, scored_batch, formats, update, before, replayed is not None, times)
        if run.device.type == "cuda":
            row["peak_gpu_mem_gib"] = ranks.max(torch.cuda.max_memory_allocated(run.device) / 2**30)
        else:
            row["peak_rss_gib"] = ranks.max(peak_rss_gib())
        if run.eval_set is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            row.update(_evaluate(run, settings.stop_ids, step + 1))
        run.metrics.write(row)
        if run.bad_in_row >= cfg.max_bad_steps:  # counted alike on every rank: rank 0 says it
            error = PowerflowError(_bad_steps_message(run, step + 1))
            error.shared = True
            raise error

        stopping = should_stop()
        saved = None
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.max_steps or stopping:
            saved = _save(run, step + 1)
        show = cfg.show_every and (step == run.start_step or (step + 1) % cfg.show_every == 0)
        example = {"prompt": prompt_texts[0], "completion": texts[0], "length": int(rollouts.lengths[0]),
                   "truncated": bool(rollouts.truncated[0])} if show else None
        yield StepResult(step + 1, cfg.max_steps, row, example, saved, tuple(notes))
        if (stopping or should_stop()) and step + 1 < cfg.max_steps:  # a signal: checkpoint this step and leave
            if saved is None:
                _save(run, step + 1)
            run.info["stopped"] = True
            return

    # Also when there was nothing left to do: a run killed between its last checkpoint and this write.
    if ranks.main:
        ckpt.save_final_adapter(run.out, run.model, run.head)
    ranks.barrier()
    if ranks.main and run.eval_set is not None and (run.out / EVALS / f"step-{cfg.max_steps}.json").is_file():
        compared = before_after(run.out, cfg.eval_data, cfg.eval_k, cfg.max_steps)
        run.info["before_after" if isinstance(compared, dict) else "before_after_note"] = compared


def _replay_prompts(run: Run, step: int, generator: torch.Generator) -> list[int] | None:
    """The prompts a replay step draws from the buffer, or None for a fresh step.

    With --replay-steps K, K steps replay after each fresh one (the first step is fresh); a replay step takes
    up to --prompts-per-step prompts, chosen at random (a function of (seed, step)) among those with at least
    two completions stored (a prompt with fewer than G distinct ones repeats them) and, with --replay-window N,
    sampled in the last N steps."""
    K = run.cfg.replay_steps
    if run.replay is None or step % (K + 1) == 0:
        return None
    ready = run.replay.ready(min(2, run.cfg.samples_per_prompt), step)
    if not ready:
        return None
    order = torch.randperm(len(ready), generator=generator)[:run.cfg.prompts_per_step]
    return [ready[i] for i in order.tolist()]


def _sample(run: Run, prompts: list[list[int]], settings: SamplingSettings, step: int, notes: list[str],
            first: int = 0, step_prompts: int | None = None) -> Rollouts:
    """G completions per prompt, the last --explore-fraction of each prompt's at --explore-temperature; out of
    memory, again with half as many per sampling call. `prompts` are the step's `step_prompts` from its `first`
    on (a rank's share; default all): the static sampler draws row i of the step from uniforms fixed by
    (seed, step, i), whichever rank samples it."""
    cfg, ranks = run.cfg, run.ranks
    G, explored = cfg.samples_per_prompt, cfg.explored_per_prompt
    total = len(prompts) * G
    shares = [(settings, G - explored), (replace(settings, temperature=cfg.explore_temperature), explored)]
    shares = [(stream, share, count) for stream, (share, count) in enumerate(shares) if count]
    static = cfg.sampler == "static"

    def draws(stream: int, count: int):
        """The uniforms of this rank's rows of one share, or None (generate draws from torch's stream)."""
        if not static:
            return None
        every = uniforms(cfg.seed, step, stream, (step_prompts or len(prompts)) * count, settings.max_new_tokens,
                         run.device)
        return every[first * count:(first + len(prompts)) * count]

    def attempt(size: int) -> Rollouts:
        seed_step(cfg.seed, step, ranks.rank)  # a retry draws as a first attempt with that batch size would
        try:
            parts = [sample_in_batches(SAMPLERS[cfg.sampler], run.model, run.tokenizer, prompts, count, share, size,
                                       draws(stream, count))
                     for stream, share, count in shares]
        except RuntimeError as err:
            if "probability tensor contains" not in str(err):
                raise
            raise PowerflowError(f"the policy's probabilities are not finite at step {step + 1} (the adapter's "
                                 "weights overflow): lower --lr, or use a GPU with bf16 rather than fp16; "
                                 "resume from an earlier checkpoint") from None
        if len(parts) == 1:
            return parts[0]
        # each prompt's G rows together: its G - m at temperature 1, then its m explored ones
        group_ids = group_ids_of(len(prompts), G, parts[0].device)
        order = torch.cat([torch.arange(len(prompts))[:, None] * (G - explored) + torch.arange(G - explored),
                           len(prompts) * (G - explored) + torch.arange(len(prompts))[:, None] * explored
                           + torch.arange(explored)], dim=1).flatten()
        merged = Rollouts.concat(parts, run.tokenizer.pad_token_id, group_ids)
        return replace(merged.select(order.to(merged.device)), group_ids=group_ids)

    return halve_on_oom(attempt, run.sample_batch, total, 1, "while sampling",
                        "lower --samples-per-prompt, --prompts-per-step or --max-new-tokens", notes)


def _score(run: Run, rollouts: Rollouts, notes: list[str], base: bool = True) -> tuple[Tensor, ...]:
    """log pi_old [N, L] (from the sampler when it returns it), and with `base` the behaviour log-probs [N, L]
    (those of the row's sampling temperature), log p_base [N, L] and prompt features [N, H]."""

    def attempt(size: int):
        old = rollouts.sampled_logps  # the static sampler returns it; HF generate does not
        if old is None:
            old, _ = score(run.model, rollouts, size, adapter=True)
        if not base:
            return (old,)
        return (old, _behaviour_logps(run, rollouts, old, size), *score(run.model, rollouts, size, adapter=False))

    return halve_on_oom(attempt, run.micro_batch, len(rollouts), 1, "while scoring",
                        "lower --max-new-tokens (scoring holds one micro-batch's logits)", notes)


def _behaviour_logps(run: Run, rollouts: Rollouts, old: Tensor, size: int) -> Tensor:
    """[N, L] log-probs of the distribution each row was drawn from: from the sampler when it returns them, else
    `old` (temperature 1) with the rows sampled at another temperature scored at theirs."""
    if rollouts.behaviour_logps is not None:
        return rollouts.behaviour_logps
    temperatures = rollouts.temperatures()
    behaviour = old
    for temperature in temperatures.unique().tolist():
        if temperature != 1.0:
            rows = (temperatures == temperature).nonzero().squeeze(-1)
            behaviour = behaviour.index_copy(0, rows, score(run.model, rollouts.select(rows), size, adapter=True,
                                                            temperature=temperature)[0])
    return behaviour


@dataclass
class Update:
    losses: list[float]  # one per inner epoch run
    residuals: list[float]  # of the last epoch applied
    clipped: list[float]  # of every epoch applied
    grad_norm: float  # of the last epoch run (nan when its loss was not finite)
    skipped: bool  # an epoch's loss or gradient was not finite: it and the epochs after it were not applied


def _update(run: Run, batch: ScoredBatch, notes: list[str], lr_scale: float = 1.0) -> Update:
    """K epochs of gradient accumulation and an optimizer step each; the schedule advances K steps regardless.
    `lr_scale` multiplies the learning rates of these optimizer steps (--replay-lr-scale on a replay step)."""
    cfg, objective, ranks = run.cfg, run.objective, run.ranks
    group = cfg.samples_per_prompt if objective.grouped or run.log_z.from_batch else 1  # the smallest micro-batch
    lora_params = trainable_parameters(run.model)
    # the whole step's counts, every rank's rows: the ranks' summed gradients are then the one-process gradient
    step_rows = ranks.sum(len(batch))
    denominator = ranks.sum(float(batch.mask.sum())) if objective.per_token else float(step_rows)
    update = Update([], [], [], float("nan"), False)

    def accumulate(size: int) -> tuple[float, list[float] | None, list[float]]:
        """One epoch's gradients: (loss, residuals, clipped); residuals None once the loss is not finite."""
        run.optimizer.zero_grad(set_to_none=True)
        total, residuals, clipped = 0.0, [], []
        for rows in micro_batches(len(batch), size, group):
            part = batch.select(rows)
            policy_logps, _ = completion_logprobs(run.model, part.rollouts)  # [n, L] with grad
            log_z, head_loss = run.log_z.for_loss(policy_logps, part, step_rows)  # [n], scalar
            loss, stats = objective.loss(policy_logps=policy_logps, log_z=log_z, denominator=denominator,
                                         alpha=cfg.alpha, clip_eps=cfg.clip_eps, **part.objective_inputs())
            if not torch.isfinite(loss + head_loss):
                return (loss + head_loss).item(), None, clipped
            (loss + head_loss).backward()
            total += loss.item()
            residuals += stats["residual"].tolist()
            clipped += stats["clipped"].tolist()
        return total, residuals, clipped

    hint = "lower --max-new-tokens" + ("" if cfg.gradient_checkpointing else ", or turn --gradient-checkpointing on")
    run.model.train()
    for epoch in range(cfg.inner_epochs):
        loss, residuals, clipped = halve_on_oom(accumulate, run.micro_batch, len(batch), group, "in the update",
                                                hint, notes)
        update.losses.append(loss)
        if ranks.any(residuals is None):  # a rank's loss was not finite: no rank applies this epoch
            residuals = None
        else:  # one all-reduce per optimizer step, after every micro-batch
            ranks.sum_gradients(lora_params + (list(run.head.parameters()) if objective.uses_log_z else []))
        if residuals is not None:
            update.grad_norm = float(torch.nn.utils.clip_grad_norm_(lora_params, cfg.max_grad_norm or float("inf")))
        if residuals is None or not (math.isfinite(update.grad_norm) and _finite_grads(run.head)):
            update.skipped = True
            run.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # torch warns when a schedule steps before any optimizer step
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(epoch, cfg.inner_epochs):
                    run.scheduler.step()
            break
        scheduled = [param_group["lr"] for param_group in run.optimizer.param_groups]
        for param_group in run.optimizer.param_groups:
            param_group["lr"] *= lr_scale
        run.optimizer.step()
        for param_group, lr in zip(run.optimizer.param_groups, scheduled):
            param_group["lr"] = lr
        run.scheduler.step()
        update.residuals, update.clipped = residuals, update.clipped + clipped
    # Sampling and scoring run in eval mode (eval_mode() skips the switch when there is nothing to switch):
    # back to it now rather than walking every module twice more per step.
    run.model.eval()
    return update


def _save(run: Run, step: int) -> Path:
    """checkpoint-N, written by rank 0 (every rank holds the same weights); the others wait for it."""
    path = run.out / f"checkpoint-{step}"
    if run.ranks.main:
        state = ckpt.TrainerState(step, run.cfg.seed, run.log_z.initialized, run.bad_in_row, run.micro_batch.value,
                                  run.sample_batch.value, run.fresh_steps)
        path = ckpt.save_checkpoint(run.out, run.model, run.head, run.optimizer, run.scheduler, state, run.replay)
        ckpt.prune_checkpoints(run.out, run.cfg.keep_checkpoints)
    run.ranks.barrier()
    return path


def _metrics_row(run: Run, step: int, batch: ScoredBatch, formats: Tensor, update: "Update", before,
                 replayed: bool, times: list[float]) -> dict:
    """The step's metrics.jsonl row. Per-row figures are gathered over the ranks in rank order (the one-process
    row order), sums added and times the slowest rank's, so that R ranks write what one process writes."""
    cfg, ranks, G = run.cfg, run.ranks, run.cfg.samples_per_prompt
    mask = batch.mask
    tokens = mask.sum(-1)  # [N]
    per_row = {
        "lengths": tokens.tolist(),
        "truncated": batch.rollouts.truncated.float().tolist(),
        "format_ok": (formats >= 0).float().tolist(),
        "psi": batch.psi.tolist(),
        "old": (batch.old_logps * mask).sum(-1).tolist(),
        "base": (batch.base_logps * mask).sum(-1).tolist(),
        "behaviour": (batch.behaviour_logps * mask).sum(-1).tolist(),
        "explored": (batch.rollouts.temperatures() == cfg.explore_temperature).float().tolist(),
        "residuals": update.residuals,
        "clipped": update.clipped,
        "log_z": run.log_z.values(batch, G),  # one value per prompt
        "estimates": [] if before.estimates is None else before.estimates.tolist(),
        "head": before.head.tolist(),
    }
    per_step = {"losses": update.losses, "times": times}
    if ranks.active:
        parts = ranks.gather((per_row, per_step))
        per_row = {key: [v for rows, _ in parts for v in rows[key]] for key in per_row}
        per_step = {"losses": [sum(values) for values in zip(*(s["losses"] for _, s in parts))],
                    "times": [max(values) for values in zip(*(s["times"] for _, s in parts))]}
    lengths, count = per_row["lengths"], sum(per_row["lengths"])
    estimates, head = per_row["estimates"], per_row["head"]
    time_sample, time_score, time_update = per_step["times"]
    row = {
        "step": step + 1,
        "loss": mean(per_step["losses"]),
        "log_z_mean": mean(per_row["log_z"]),
        "log_z_std": std(per_row["log_z"]),
        "log_z_batch_mean": mean(estimates) if estimates else float("nan"),
        "log_z_gap": mean([h - e for h, e in zip(head, estimates)]) if estimates else float("nan"),
        "residual_mean": mean(per_row["residuals"]),
        "residual_std": std(per_row["residuals"]),
        "length_mean": mean(lengths),
        "length_min": min(lengths),
        "length_max": max(lengths),
        "truncated_frac": mean(per_row["truncated"]),
        "format_frac": mean(per_row["format_ok"]),
        "psi_mean": mean(per_row["psi"]),
        "policy_logp_per_token": sum(per_row["old"]) / count,
        "base_logp_per_token": sum(per_row["base"]) / count,
        "clip_frac": mean(per_row["clipped"]),
        "grad_norm": update.grad_norm,
        "update_skipped": int(update.skipped),
        "lr": run.scheduler.get_last_lr()[0],
        "sampled_tokens": 0 if replayed else count,
        "sample_tokens_per_s": float("nan") if replayed else count / max(time_sample, 1e-9),
        "time_sample": time_sample,
        "time_score": time_score,
        "time_update": time_update,
    }
    if run.replay is not None:
        row["replayed"] = int(replayed)
    if run.replay is not None or cfg.explored_per_prompt:
        row["explored_frac"] = mean(per_row["explored"]) if cfg.explored_per_prompt else 0.0
        # mean over tokens of log pi(y_t) - log b(y_t): 0 on-policy; its negation estimates KL(b || pi) per token
        row["behaviour_log_ratio"] = (sum(per_row["old"]) - sum(per_row["behaviour"])) / count
    return row


def _bad_steps_message(run: Run, step: int) -> str:
    latest = ckpt.latest_checkpoint(run.out)
    back = (f"The last checkpoint is {latest}: continue from it with a lower --lr (--resume-from {latest})"
            if latest else "No checkpoint was written yet")
    return (f"stopped at step {step}: the loss or gradient was not finite in {run.bad_in_row} steps in a row "
            f"(--max-bad-steps {run.cfg.max_bad_steps}), and their updates were skipped. Likely causes: --lr or "
            f"--z-lr too high, an extreme --alpha or format penalty, or fp16 overflow on a GPU without bf16. {back}")


def _evaluate(run: Run, stop_ids: tuple[int, ...], step: int) -> dict:
    """eval_* metrics of the policy now (temperature 1, stopping at EOS, whatever the training sampler does);
    the figures and samples also go to OUT/evals/step-N.*. At step 0 the adapter is fresh: the policy is the base."""
    cfg = run.cfg
    rows = cfg.prompts_per_step * cfg.samples_per_prompt  # what sampling a step takes: fits on a GPU
    if run.device.type == "cpu":  # a CPU decode step costs far less than in proportion to its rows: 96 rows at
        rows = max(rows, CPU_EVAL_ROWS)  # once took 22 s where four calls of 24 took 36 s (SmolLM2-135M)
    row, summary, records = training_metrics(run.model, run.tokenizer, run.eval_set, cfg.eval_k,
                                             SamplingSettings(cfg.max_new_tokens, stop_ids=stop_ids), cfg.seed,
                                             run.embed, rows, policy_is_base=step == 0, ranks=run.ranks)
    if not run.ranks.main:  # rank 0 graded every rank's samples
        return row
    setting = {"data": cfg.eval_data, "task": run.eval_set.task, "k": cfg.eval_k, "limit": cfg.eval_limit,
               "max_new_tokens": cfg.max_new_tokens, "chat_template": cfg.chat_template,
               "system_prompt": cfg.system_prompt}
    write_training_eval(run.out, step, summary, records, setting)
    return row


def _finite_grads(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()
