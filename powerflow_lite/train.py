"""The training loop: sample from the policy, score with the adapter off, update with LA-TB.

    run = setup(cfg)           # output dir, prompts, model + LoRA, log Z head, optimizer, resume
    for result in train(run):  # one StepResult per step; metrics.jsonl and checkpoints written here
        print(result.metrics["loss"])

`train` is a generator so that the CLI can draw its live display between steps
without the loop knowing about terminals. Nothing here prints.

Reproducibility: step s reseeds torch from (seed, s) and takes the prompts
`data.prompt_indices(seed, s)`, so a run resumed from checkpoint-s draws exactly
what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import checkpoint as ckpt
from .config import TrainConfig
from .config_files import to_yaml
from .data import chat_stop_ids, encode_prompts, load_prompts, prompt_indices
from .engine import sample_static
from .errors import PowerflowError
from .evaluate import EvalSet, setup_training_eval, training_metrics
from .metrics import MetricsLog, mean, std
from .model import (
    add_lora,
    load_base_model,
    load_tokenizer,
    parameter_count,
    resolve_device,
    trainable_parameters,
)
from .objectives import OBJECTIVES, Objective, batch_log_z_estimate
from .partition import LogZHead
from .rewards import FormatPenalty, format_penalties, load_format_penalty
from .sampling import SamplingSettings, sample
from .scoring import completion_logprobs, score


@dataclass
class Run:
    """Everything `setup` builds for the loop."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    model: object  # PeftModel
    tokenizer: object
    head: LogZHead
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: Objective
    psi: FormatPenalty
    prompts: list[dict]  # rows from the prompt file; row["prompt"] is the text
    prompt_ids: list[list[int]]  # the rendered, tokenized prompts
    metrics: MetricsLog
    start_step: int = 0
    z_initialized: bool = False
    resumed_from: Path | None = None
    info: dict = field(default_factory=dict)
    eval_set: EvalSet | None = None  # with --eval-data
    embed: Callable | None = None  # sentence embedder of creative evals


@dataclass(frozen=True)
class StepResult:
    step: int  # steps completed
    max_steps: int
    metrics: dict
    example: dict | None  # one prompt and completion, every --show-every steps
    checkpoint: Path | None


def _set_learning_rates(optimizer, scheduler, base_lrs: list[float]) -> None:
    """After restoring a scheduler, use this run's --lr / --z-lr (LambdaLR's state would keep the old ones)."""
    scheduler.base_lrs = list(base_lrs)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base_lr in zip(optimizer.param_groups, base_lrs):
        group["initial_lr"], group["lr"] = base_lr, base_lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


SAMPLERS = {"hf": sample, "static": sample_static}


def seed_step(seed: int, step: int) -> None:
    torch.manual_seed(seed * 1_000_003 + step)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base learning rates at optimizer step n: linear warmup, then the schedule."""
    total = cfg.max_steps * cfg.inner_epochs
    warmup = cfg.warmup_steps * cfg.inner_epochs

    def factor(n: int) -> float:
        if n < warmup:
            return (n + 1) / (warmup + 1)
        progress = min(1.0, (n - warmup) / max(1, total - warmup))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def build_optimizer(cfg: TrainConfig, lora_params, head: LogZHead, device: torch.device):
    """AdamW over the LoRA weights (first group) and the head; bitsandbytes' paged 8-bit AdamW on CUDA."""
    groups = [{"params": lora_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}, *head.param_groups(cfg.z_lr)]
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(groups)
        except Exception:  # no usable CUDA build of bitsandbytes: plain AdamW is correct, only larger
            pass
    return torch.optim.AdamW(groups)


def micro_batches(n: int, size: int, group_size: int) -> list[slice]:
    """Consecutive row slices of at most `size` rows (a multiple of `group_size`: whole groups stay together)."""
    size = max(1, size // group_size) * group_size
    return [slice(start, start + size) for start in range(0, n, size)]


def setup(cfg: TrainConfig) -> Run:
    """Check inputs cheaply first (output dir, prompts), then load the model and restore a checkpoint."""
    resuming = cfg.resume or bool(cfg.resume_from)
    out = ckpt.check_output_dir(cfg.output, resume=resuming, overwrite=cfg.overwrite)
    resume_path = ckpt.resume_checkpoint(out, cfg.resume_from) if resuming else None
    rows = load_prompts(cfg.prompts, cfg.prompt_field, cfg.split)
    psi = load_format_penalty(cfg.format_penalty)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)

    eval_set, embed = setup_training_eval(cfg, tokenizer, device) if cfg.eval_data else (None, None)

    torch.manual_seed(cfg.seed)  # LoRA and head initialisation
    base = load_base_model(cfg.model, cfg.quant, device, cfg.trust_remote_code)
    prompt_ids = encode_prompts(tokenizer, [row["prompt"] for row in rows], cfg.chat_template, cfg.system_prompt,
                                cfg.max_new_tokens, getattr(base.config, "max_position_embeddings", None), cfg.prompts)
    model = add_lora(base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                     cfg.gradient_checkpointing)
    head = LogZHead(base.config.get_text_config().hidden_size, cfg.z_hidden).to(device)
    lora_params = trainable_parameters(model)
    optimizer = build_optimizer(cfg, lora_params, head, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    run = Run(cfg, out, device, model, tokenizer, head, optimizer, scheduler, OBJECTIVES[cfg.objective], psi,
              rows, prompt_ids, MetricsLog(out / "metrics.jsonl"), eval_set=eval_set, embed=embed)
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path, model, head, optimizer, scheduler)
        run.start_step, run.z_initialized, run.resumed_from = state["step"], state["z_initialized"], resume_path
        _set_learning_rates(optimizer, scheduler, [cfg.lr, *(g["lr"] for g in head.param_groups(cfg.z_lr))])
    # Every input is valid by now: only here may --overwrite delete a previous run.
    ckpt.create_output_dir(out, resume=resuming, overwrite=cfg.overwrite)
    if resume_path is not None:
        ckpt.truncate_metrics(out / "metrics.jsonl", run.start_step)
    # The saved config describes the run, not how this invocation started it: never `overwrite: true`.
    (out / "config.yaml").write_text(to_yaml(replace(cfg, resume=False, resume_from="", overwrite=False)))
    run.info = {
        "device": str(device),
        "quant": cfg.quant,
        "trainable_params": sum(p.numel() for p in lora_params),
        "total_params": parameter_count(model),
        "prompts": len(rows),
        "start_step": run.start_step,
    }
    return run


def train(run: Run) -> Iterator[StepResult]:
    cfg, model, tokenizer, head, objective = run.cfg, run.model, run.tokenizer, run.head, run.objective
    settings = SamplingSettings(cfg.max_new_tokens, cfg.min_new_tokens, cfg.temperature, cfg.top_p, cfg.ignore_eos,
                                tuple(chat_stop_ids(tokenizer, cfg.chat_template)))
    sampler = SAMPLERS[cfg.sampler]
    lora_params = trainable_parameters(model)
    G = cfg.samples_per_prompt
    batch_log_z = objective.uses_log_z and cfg.log_z == "batch"
    whole_groups = objective.grouped or batch_log_z
    last_saved = None
    if run.eval_set is not None and run.start_step == 0:  # where the curves start: the base model itself
        run.info["eval_before"] = {"step": 0, **_evaluate(run, settings.stop_ids)}
        run.metrics.write(run.info["eval_before"])

    for step in range(run.start_step, cfg.max_steps):
        seed_step(cfg.seed, step)
        _reset_peak_memory(run.device)

        # --- 1. sample G completions per prompt from the policy (adapter on, temperature 1)
        started = time.perf_counter()
        batch = prompt_indices(len(run.prompts), step, cfg.prompts_per_step, cfg.seed)
        rollouts = sampler(model, tokenizer, [run.prompt_ids[i] for i in batch], G, settings)
        texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        sampled = _clock(run.device)

        # --- 2. score without grad: log pi_old, log p_base (same weights, adapter off), psi(y)
        old_logps = rollouts.sampled_logps  # [N, L] from the static sampler; HF generate leaves it None
        if old_logps is None:
            old_logps, _ = score(model, rollouts, cfg.micro_batch_size, adapter=True)  # [N, L]
        base_logps, features = score(model, rollouts, cfg.micro_batch_size, adapter=False)  # [N, L], [N, H]
        prompt_texts = [run.prompts[batch[g]]["prompt"] for g in rollouts.group_ids.tolist()]
        psi = torch.tensor(format_penalties(run.psi, cfg.format_penalty, texts, prompt_texts),
                           device=run.device)  # [N]
        mask = rollouts.completion_mask  # [N, L]
        tensors = dict(old_logps=old_logps, base_logps=base_logps, mask=mask, psi=psi,
                       group_ids=rollouts.group_ids, alpha=cfg.alpha, clip_eps=cfg.clip_eps)
        scored = _clock(run.device)

        # --- 3. the first batch sets log Z's starting value (see partition.py)
        if objective.uses_log_z and not run.z_initialized:
            if cfg.z_init == "batch":
                _, stats = objective.loss(policy_logps=old_logps, log_z=torch.zeros_like(psi), **tensors)
                head.init_bias_from_residuals(stats["residual"])
            run.z_initialized = True

        # --- 4. K inner epochs of updates over micro-batches (gradient accumulation)
        model.train()
        denominator = float(mask.sum()) if objective.per_token else float(len(rollouts))
        losses, residuals, clipped = [], [], []
        for _ in range(cfg.inner_epochs):
            run.optimizer.zero_grad(set_to_none=True)
            epoch_loss, epoch_residuals, epoch_clipped = 0.0, [], []
            for rows in micro_batches(len(rollouts), cfg.micro_batch_size, G if whole_groups else 1):
                policy_logps, _ = completion_logprobs(model, rollouts.select(rows))  # [n, L] with grad
                inputs = {k: (v[rows] if torch.is_tensor(v) else v) for k, v in tensors.items()}
                log_z = head(features[rows])  # [n]
                head_loss = 0.0
                if batch_log_z:
                    target = batch_log_z_estimate(objective, policy_logps.detach(), inputs)  # [n]
                    head_loss = (log_z - target).square().sum() / len(rollouts)
                    log_z = target
                loss, stats = objective.loss(policy_logps=policy_logps, log_z=log_z, denominator=denominator, **inputs)
                if not torch.isfinite(loss):
                    raise PowerflowError(
                        f"the loss became {loss.item()} at step {step + 1}: nothing was updated or saved from this "
                        "step; likely causes: --lr or --z-lr too high, an extreme --alpha or format penalty, or "
                        "fp16 overflow (use bf16 or --quant none on the CPU)")
                (loss + head_loss).backward()
                epoch_loss += loss.item()
                epoch_residuals += stats["residual"].tolist()
                epoch_clipped += stats["clipped"].tolist()
            grad_norm = torch.nn.utils.clip_grad_norm_(lora_params, cfg.max_grad_norm or float("inf"))
            run.optimizer.step()
            run.scheduler.step()
            losses.append(epoch_loss)
            residuals, clipped = epoch_residuals, clipped + epoch_clipped
        # Sampling and scoring run in eval mode (eval_mode() skips the switch when there is nothing to switch):
        # back to it now rather than walking every module twice more per step.
        model.eval()
        updated = _clock(run.device)

        # --- 5. log, checkpoint
        with torch.no_grad():
            log_z = head(features[::G]).tolist()  # one value per prompt
        lengths = rollouts.lengths.tolist()
        row = {
            "step": step + 1,
            "loss": mean(losses),
            "log_z_mean": mean(log_z),
            "log_z_std": std(log_z),
            "residual_mean": mean(residuals),
            "residual_std": std(residuals),
            "length_mean": mean(lengths),
            "length_min": min(lengths),
            "length_max": max(lengths),
            "truncated_frac": rollouts.truncated.float().mean().item(),
            "format_frac": (psi >= 0).float().mean().item(),
            "psi_mean": psi.mean().item(),
            "policy_logp_per_token": (old_logps.sum() / mask.sum()).item(),
            "base_logp_per_token": (base_logps.sum() / mask.sum()).item(),
            "clip_frac": mean([float(c) for c in clipped]),
            "grad_norm": float(grad_norm),
            "lr": run.scheduler.get_last_lr()[0],
            "sample_tokens_per_s": sum(lengths) / max(sampled - started, 1e-9),
            "time_sample": sampled - started,
            "time_score": scored - sampled,
            "time_update": updated - scored,
        }
        if run.device.type == "cuda":
            row["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        if run.eval_set is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            row.update(_evaluate(run, settings.stop_ids))
        run.metrics.write(row)

        saved = None
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.max_steps:
            saved = ckpt.save_checkpoint(run.out, step + 1, model, head, run.optimizer, run.scheduler,
                                         {"z_initialized": run.z_initialized, "seed": cfg.seed})
            last_saved = saved
        show = cfg.show_every and (step == run.start_step or (step + 1) % cfg.show_every == 0)
        example = {"prompt": prompt_texts[0], "completion": texts[0], "length": lengths[0],
                   "truncated": bool(rollouts.truncated[0])} if show else None
        yield StepResult(step + 1, cfg.max_steps, row, example, saved)

    if last_saved is not None or not (run.out / "adapter").is_dir():
        ckpt.save_final_adapter(run.out, model, head)


def _evaluate(run: Run, stop_ids: tuple[int, ...]) -> dict:
    """eval_* metrics of the policy now: temperature 1, stopping at EOS, whatever the training sampler does."""
    cfg = run.cfg
    return training_metrics(run.model, run.tokenizer, run.eval_set, cfg.eval_k,
                            SamplingSettings(cfg.max_new_tokens, stop_ids=stop_ids), cfg.seed, run.embed,
                            cfg.prompts_per_step * cfg.samples_per_prompt)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
