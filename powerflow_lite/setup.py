"""Everything the training loop needs, built and checked before step 1: `setup(cfg) -> Run`.

    run = setup(cfg)  # output dir, prompts, model + LoRA, log Z head, optimizer, resume, disk space
    run.state         # what the steps change (state.TrainState): a checkpoint saves it whole, resume restores it

A Run is built once; the loop changes only its `state` (and says how it ended
in `outcome`).

The cheap checks come first (output directory, prompt file, tokenizer, eval data)
so that bad input fails before a model loads, and nothing is written or deleted
until every input has passed: only then may --overwrite remove a previous run.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import TrainConfig, matched_temperatures
from .config_files import ALPHA_PREVIEW, to_yaml
from .data import Prompts, encode_prompts, load_prompts, parse_sources, prompt_input
from .distributed import SINGLE, Ranks
from .errors import PowerflowError
from .evaluate import TrainingEval, setup_training_eval
from .log_z import LogPartition, LogZHead
from .metrics import MetricsLog
from .model import (
    adapter_lora,
    add_lora,
    context_length,
    import_bitsandbytes,
    load_base_model,
    load_tokenizer,
    parameter_count,
    resolve_device,
    resolve_quant,
    trainable_parameters,
)
from .objectives import OBJECTIVES, Objective
from .options import as_dict
from .preview import AUTO_ALPHAS, AUTO_CANDIDATES, AUTO_PROMPTS, ROWS_PER_CALL, choose_alpha, preview_model
from .reporting import open_reporters
from .rewards import FormatPenalty, load_format_penalty
from .samplers import resolve_sampler
from .samplers.rollouts import SamplingSettings
from .state import TrainState
from .tasks import TASKS, Measures


@dataclass(frozen=True)
class RunInfo:
    """What setup resolved, for the lines the CLI prints before step 1."""

    device: str
    quant: str  # what --quant auto became
    quant_why: str
    sampler: str  # what --sampler auto became
    sampler_why: str
    trainable_params: int
    total_params: int
    prompts: int
    started_over: bool  # --resume found no checkpoint: the run starts at step 0
    processes: int  # under a launcher, how many train together
    start_step: int  # the steps done when this invocation starts
    resumed_from: Path | None  # the checkpoint it resumed from
    alpha_choice: dict | None  # --alpha auto: the preview table, the alpha chosen and why (preview.py)
    prompts_note: str = ""  # the sources of a mixture, and the prompts --max-prompt-tokens dropped


@dataclass
class Outcome:
    """How the loop ended, for the CLI's closing lines."""

    stopped: bool = False  # a signal ended it before its last step (after a checkpoint)
    before_after: dict | None = None  # the eval before training against the last one (evaluate.before_after)
    before_after_note: str | None = None  # or why there is no such table
    more_before_after: dict = field(default_factory=dict)  # a further eval set's name -> its table, or why none


@dataclass(frozen=True)
class Run:
    """What `setup` builds once for the loop, and the live state the steps change."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    model: object  # PeftModel
    tokenizer: object
    head: LogZHead
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: Objective
    log_z: LogPartition  # owns log Z': the head's start, the batch estimates, what the loss uses
    sampling: SamplingSettings  # --max-new-tokens, --temperature, ... and the chat template's end-of-turn id
    format_penalty: FormatPenalty  # --format-penalty: completion, prompt -> its part of psi(y)
    prompts: list[dict]  # rows from the prompt file; row["prompt"] is the text
    prompt_ids: list[list[int]]  # the rendered, tokenized prompts
    evals: list[TrainingEval]  # with --eval-data: each of its sets (evaluate.TrainingEval); [] without
    measures: Measures  # the models the eval task measures with
    metrics: MetricsLog
    ranks: Ranks  # under torchrun / accelerate launch: this process's rank (distributed.py)
    info: RunInfo
    state: TrainState  # what the steps change: saved whole in every checkpoint
    outcome: Outcome = field(default_factory=Outcome)
    estimate: dict = field(default_factory=dict)  # on a GPU the table has: estimated seconds per phase (probe.py)


def _set_learning_rates(optimizer, scheduler, base_lrs: list[float]) -> None:
    """After restoring a scheduler, use this run's --lr / --z-lr (LambdaLR's state would keep the old ones)."""
    scheduler.base_lrs = list(base_lrs)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base_lr in zip(optimizer.param_groups, base_lrs):
        group["initial_lr"], group["lr"] = base_lr, base_lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


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
            return import_bitsandbytes().optim.PagedAdamW8bit(groups)
        except Exception:  # no usable CUDA build of bitsandbytes: plain AdamW is correct, only larger
            pass
    return torch.optim.AdamW(groups)


def setup(cfg: TrainConfig, ranks: Ranks = SINGLE) -> Run:
    """Check inputs cheaply first (output dir, prompts), then load the model and restore a checkpoint.

    Under a launcher every rank checks and loads; only when all have passed (`ranks.agree`) does rank 0 write
    the output directory, and the others wait for it."""
    device = ranks.start(resolve_device(cfg.device))  # a bad --device fails here on every rank alike
    run = ranks.agreed(lambda: _prepare(cfg, ranks, device))  # bad input on any rank stops every rank here
    cfg, out = run.cfg, run.out
    resuming = cfg.resume or bool(cfg.resume_from)
    if ranks.main:
        # Every input is valid by now: only here may --overwrite delete a previous run.
        ckpt.create_output_dir(out, resume=resuming, overwrite=cfg.overwrite)
        if resuming:  # rows after the checkpoint (all rows, when there is none) are redone
            ckpt.remove_leftovers(out)
            ckpt.truncate_metrics(out / "metrics.jsonl", run.info.start_step if run.info.resumed_from else -1)
        # The saved config describes the run, not how this invocation started it: never `overwrite: true`.
        ckpt.write_atomically(out / "config.yaml",
                              to_yaml(replace(cfg, resume=False, resume_from="", overwrite=False)))
        if run.info.alpha_choice:  # --alpha auto: the choice config.yaml holds, and the preview it came from
            ckpt.write_atomically(out / ALPHA_PREVIEW, json.dumps(run.info.alpha_choice, indent=1) + "\n")
    ranks.barrier()
    return run


def _prepare(cfg: TrainConfig, ranks: Ranks, device: torch.device) -> Run:
    """setup's checks and loading, which write nothing."""
    resuming = cfg.resume or bool(cfg.resume_from)
    if ranks.active:
        _check_ranks(cfg, ranks)
    out = ckpt.check_output_dir(cfg.output, resume=resuming, overwrite=cfg.overwrite)
    resume_path = ckpt.resume_checkpoint(out, cfg.resume_from) if resuming else None  # None: start at step 0
    rows = load_prompts(cfg.prompts, cfg.prompt_field, cfg.split)
    penalty = load_format_penalty(cfg.format_penalty)
    # `auto` becomes what runs here, and the saved config says so: a resumed run keeps the path it started on
    quant, quant_why = resolve_quant(cfg.quant, device)
    sampler, sampler_why = resolve_sampler(cfg.sampler, device, cfg.top_p)
    cfg = replace(cfg, quant=quant, sampler=sampler, log_z=cfg.resolved_log_z)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)

    evals, measures = setup_training_eval(cfg, tokenizer, device) if cfg.eval_data else ([], Measures())

    rows, prompt_ids, prompts_note = _encode_training_prompts(cfg, tokenizer, rows)

    base = load_base_model(cfg.model, cfg.quant, device, cfg.trust_remote_code)
    alpha_choice = None
    if cfg.alpha == "auto":  # the preview of p_alpha on the training prompts, with the base alone
        alpha_choice = choose_alpha_for_training(base, tokenizer, prompt_ids, cfg)
        cfg = replace(cfg, alpha=alpha_choice["alpha"])
    if cfg.init_adapter and resume_path is None:  # its shape, which config.yaml keeps for a resume
        lora = adapter_lora(cfg.init_adapter)
        cfg = replace(cfg, lora_r=lora.r, lora_alpha=lora.alpha, lora_targets=lora.targets)
    torch.manual_seed(cfg.seed)  # LoRA and head initialisation
    model = add_lora(base, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                     cfg.gradient_checkpointing)
    if cfg.init_adapter and resume_path is None:
        ckpt.load_adapter_weights(model, Path(cfg.init_adapter).expanduser(), "--init-adapter")
    head = LogZHead(base.config.get_text_config().hidden_size, cfg.z_hidden).to(device)
    lora_params = trainable_parameters(model)
    optimizer = build_optimizer(cfg, lora_params, head, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state = _restore(cfg, resume_path, model, head, optimizer, scheduler, len(rows))

    trainable = sum(p.numel() for p in lora_params)
    freed = ckpt.tree_bytes(out) if cfg.overwrite and not resuming else 0  # the run --overwrite deletes
    if ranks.main:
        ckpt.check_free_space(out, _disk_needed(cfg, state.step, trainable, len(rows), head.hidden_size) - freed)
    info = RunInfo(str(device), cfg.quant, quant_why, cfg.sampler, sampler_why, trainable, parameter_count(model),
                   len(rows), resuming and resume_path is None, ranks.world, state.step, resume_path, alpha_choice,
                   prompts_note)
    objective = OBJECTIVES[cfg.objective]
    metrics = (MetricsLog(out / "metrics.jsonl", open_reporters(cfg.report_to, out, as_dict(cfg))) if ranks.main
               else MetricsLog(None))
    return Run(cfg, out, device, model, tokenizer, head, optimizer, scheduler, objective,
               LogPartition(head, objective, cfg.log_z, cfg.z_init, cfg.alpha, cfg.clip_eps, ranks=ranks),
               SamplingSettings.from_config(cfg, tokenizer), penalty, rows, prompt_ids, evals, measures, metrics,
               ranks, info, state)


def _restore(cfg: TrainConfig, path: Path | None, model, head: LogZHead, optimizer, scheduler,
             prompts: int) -> TrainState:
    """The live state of a new run, or of the checkpoint at `path` (its weights, optimizer and scheduler restored in
    place), under this invocation's settings and learning rates."""
    if path is None:
        return TrainState(seed=cfg.seed).under(cfg)
    state = ckpt.load_checkpoint(path, model, head, optimizer, scheduler).under(cfg)
    _set_learning_rates(optimizer, scheduler, [cfg.lr, *(g["lr"] for g in head.param_groups(cfg.z_lr))])
    if state.replay is not None and any(prompt >= prompts for prompt in state.replay.entries):
        raise PowerflowError(f"the replay buffer of {path} holds prompts beyond the {prompts} of {cfg.prompts}: was "
                             "the prompt file changed? Resume with the run's own prompts")
    return state


def _encode_training_prompts(cfg: TrainConfig, tokenizer, rows: Prompts) -> tuple[Prompts, list[list[int]], str]:
    """The training prompts rendered and tokenized, less those longer than --max-prompt-tokens; and what the run
    header says of them: a mixture's sources, the prompts dropped."""
    context = context_length(cfg.model, cfg.trust_remote_code)
    kept_max = cfg.max_prompt_tokens
    prompt_ids = encode_prompts(tokenizer, [prompt_input(row) for row in rows], cfg.chat_template, cfg.system_prompt,
                                cfg.max_new_tokens, None if kept_max else context, cfg.prompts, rows.lines)
    notes = []
    if len(sources := parse_sources(cfg.prompts)) > 1:
        notes.append("from " + ", ".join(f"{s.name} (weight {s.weight:g}" + (f", first {s.cap}" if s.cap else "") + ")"
                                          for s in sources))
    if kept_max:
        keep = [i for i, ids in enumerate(prompt_ids) if len(ids) <= kept_max]
        if not keep:
            raise PowerflowError(f"every prompt of {cfg.prompts!r} is longer than --max-prompt-tokens {kept_max}")
        longest = max(len(prompt_ids[i]) for i in keep)
        if context and longest + cfg.max_new_tokens > context:
            raise PowerflowError(f"a prompt of {longest} tokens with --max-new-tokens {cfg.max_new_tokens} "
                                 f"exceeds the model's context of {context}: lower --max-prompt-tokens")
        if len(keep) < len(rows):
            notes.append(f"{len(rows) - len(keep)} longer than --max-prompt-tokens {kept_max} dropped")
        rows, prompt_ids = rows.select(keep), [prompt_ids[i] for i in keep]
    return rows, prompt_ids, "; ".join(notes)


def choose_alpha_for_training(base, tokenizer, prompt_ids: list[list[int]], cfg: TrainConfig) -> dict:
    """--alpha auto: `powerflow preview` on (a seeded sample of) the training prompts and its label-free rule.
    -> {"alpha", "rule", "why", "table"}"""
    chosen = sorted(random.Random(cfg.seed).sample(range(len(prompt_ids)), min(AUTO_PROMPTS, len(prompt_ids))))
    settings = SamplingSettings(cfg.max_new_tokens, ignore_eos=cfg.ignore_eos,
                                stop_ids=SamplingSettings.from_config(cfg, tokenizer).stop_ids)
    answers = next(name for name, task in TASKS.items() if task.states_answers)  # the rule weighs final answers
    table = preview_model(base, tokenizer, [prompt_ids[i] for i in chosen], AUTO_ALPHAS, AUTO_CANDIDATES,
                          matched_temperatures(AUTO_ALPHAS), settings, seed=cfg.seed, task=answers,
                          meta={"model": cfg.model, "prompts_file": cfg.prompts, "prompt_rows": chosen},
                          rows_per_call=cfg.sample_batch_size or ROWS_PER_CALL)
    return {**choose_alpha(table), "table": table}


def _check_ranks(cfg: TrainConfig, ranks: Ranks) -> None:
    """What data parallel needs of the settings: an equal share of every step's prompts per rank."""
    if cfg.prompts_per_step % ranks.world:
        raise PowerflowError(f"--prompts-per-step ({cfg.prompts_per_step}) must be a multiple of the number of "
                             f"processes ({ranks.world}): each takes an equal share of a step's prompts")
    if cfg.replay_steps:
        raise PowerflowError("--replay-steps runs in one process only (the buffer is not shared across ranks); "
                             f"launched with {ranks.world} processes")
    if cfg.alpha == "auto":
        raise PowerflowError("--alpha auto runs in one process: run `powerflow preview` on the training prompts "
                             "first and launch with the alpha it says auto would choose")


def _disk_needed(cfg: TrainConfig, start_step: int, trainable: int, prompts: int = 0, hidden_size: int = 0) -> int:
    """Bytes the checkpoints and final adapter of this invocation will take (at most keep + 1 at once), with
    --replay-steps a full buffer in each checkpoint (completions of --max-new-tokens: int32 ids, two float32
    log-probs; scalars per entry; features per prompt)."""
    steps = cfg.max_steps - start_step
    count = steps // cfg.save_every + 1 if cfg.save_every else 1
    if cfg.keep_checkpoints:
        count = min(count, cfg.keep_checkpoints + 1)
    entry = 12 * cfg.max_new_tokens + 57  # ids and two log-probs per token; offset, prompt, psi, target, step,
    # temperature and truncated per entry
    replay = prompts * (cfg.replay_size * entry + 4 * hidden_size + 8) if cfg.replay_steps else 0
    return count * (ckpt.checkpoint_bytes(trainable) + replay) + 4 * trainable
