"""Option groups, each declared once: the flags, YAML keys and config.yaml keys every command shares.

    @dataclass(frozen=True, kw_only=True)
    class SampleConfig(ModelOptions, AdapterOptions, SamplingOptions, ...):   # config.py: one per command

A field's metadata is its whole contract: its `--help` line and panel (cli.py),
its allowed values (`choices`) and range (`check`: ">0", "(0, 1]", ...), checked
by `check_fields` with one line that names the flag. A command's config takes
the groups it needs, so every shared option has one declaration; the names stay
flat (--max-new-tokens, cfg.max_new_tokens) as users write them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PowerflowError
from .samplers import SAMPLER_HELP, SAMPLERS, unsupported
from .tasks import TASK_HELP, TASKS

# --help panels, in the order they are shown; an option without one is among the basics, shown first
PROMPTS, SAMPLING, OBJECTIVE, MODEL = "Prompts", "Sampling", "Objective and format penalty", "Model and LoRA"
OPTIMISATION, EVALUATION, OUTPUT = "Optimisation", "Evaluation during training", "Output and checkpoints"
LOG_Z, REPLAY, POWER = "log Z' (advanced)", "Replay and exploration (advanced)", "Power sampling at inference time"
PANELS = (PROMPTS, SAMPLING, POWER, OBJECTIVE, MODEL, OPTIMISATION, EVALUATION, OUTPUT, LOG_Z, REPLAY)
FIRST = ("model", "adapter", "run", "alpha", "prompt", "prompts", "data")  # the basics a user gives first

RANGES = {  # `check`: the test, and what the error says
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    "(0, 1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "[0, 1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0, 1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}


def option(default, help: str, choices: tuple[str, ...] | None = None, short: str | None = None,
           check: str | None = None, panel: str | None = None, words: tuple[str, ...] = (), file: bool = False):
    """A config field with its CLI help text, allowed values, short flag, range and --help panel; `words`: what a
    number field also accepts in place of a number (--alpha auto); `file`: a path to a file is allowed beside the
    choices (--chat-template FILE)."""
    return field(default=default, metadata={"help": help, "choices": choices, "short": short, "check": check,
                                            "panel": panel, "words": words, "file": file})


def number_or_word(f: dataclasses.Field, value):
    """A flag's text -> the float it names, or one of the field's `words` as it is."""
    if value is None or value in f.metadata.get("words", ()):
        return value
    try:
        return float(value)
    except ValueError:
        raise PowerflowError(f"{flag_name(f.name)} takes a number or {' or '.join(f.metadata['words'])}, "
                             f"got {value!r}") from None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- option groups: declared once, taken by every command that needs them


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    model: str = option("", "Base model: a local Hugging Face directory (safetensors) or a hub id.")
    trust_remote_code: bool = option(False, "Run code shipped with the model (off unless you trust it).", panel=MODEL)


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    quant: str = option("auto", "Base weights: nf4 (bitsandbytes 4-bit), none (bf16 on a GPU, fp32 on the CPU), or "
                        "auto: nf4 on a GPU, none on the CPU, where it is faster.", choices=("auto", "nf4", "none"),
                        panel=MODEL)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", panel=MODEL)


@dataclass(frozen=True, kw_only=True)
class AdapterOptions:
    adapter: str = option("", "Adapter directory (OUT/adapter or OUT/checkpoint-N); empty: the base model alone.")


@dataclass(frozen=True, kw_only=True)
class PromptOptions:
    prompts: str = option("", "Prompt file (.jsonl/.json/.csv/.parquet/.txt), a preset (numina-cot) or a hub dataset; "
                              "several comma-separated as NAME[:WEIGHT[:CAP]] (a.jsonl:2,b.jsonl:1:500): training "
                              "draws each by its weight, CAP keeps its first rows.")


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    prompt_field: str = option("", "Field or column that holds the prompt text (default: the first of prompt, "
                                   "problem, question, instruction, input, text that the file has).", panel=PROMPTS)
    split: str = option("", "Dataset split of a hub dataset (default: the preset's, else train).", panel=PROMPTS)


@dataclass(frozen=True, kw_only=True)
class FormatOptions:
    chat_template: str = option("auto", "auto: the tokenizer's chat template when it has one; none: plain text; or "
                                        "a Jinja chat template file (for a model without one).",
                                choices=("auto", "none"), panel=PROMPTS, file=True)
    system_prompt: str = option("", "System prompt (e.g. 'Please reason step by step, ...').", panel=PROMPTS)


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    max_new_tokens: int = option(256, "Longest completion; longer ones are cut and counted as truncated.", check=">0",
                                 panel=SAMPLING)
    min_new_tokens: int = option(0, "Forbid EOS before this many tokens (makes EOS sampling off-policy).", check=">=0",
                                 panel=SAMPLING)
    ignore_eos: bool = option(False, "Never stop at EOS: every completion is --max-new-tokens long.", panel=SAMPLING)
    temperature: float = option(1.0, "Sampling temperature: the rl-* objectives assume 1; the trajectory-balance "
                                     "ones keep their target at another.", check=">0", panel=SAMPLING)
    top_p: float = option(1.0, "Nucleus sampling; the maths assumes 1 (less removes completions from the support).",
                          check="(0, 1]", panel=SAMPLING)
    sampler: str = option("auto", SAMPLER_HELP, choices=("auto", *SAMPLERS), panel=SAMPLING)


@dataclass(frozen=True, kw_only=True)
class PowerOptions:
    power_alpha: float = option(4.0, "The target p_base^alpha (the base scored with the adapter off) of --sampler "
                                     "power-resample, power-mcmc and power-smc, and of eval's p_alpha ESS (default: "
                                     "the run's --alpha with --run).", check=">0", panel=POWER)
    candidates: int = option(16, "power-resample: proposals drawn per answer (its cost: that many completions).",
                             check=">0", panel=POWER)
    proposal_temperature: float = option(0.0, "Temperature of the proposal, the loaded model (0: 1/--power-alpha).",
                                         check=">=0", panel=POWER)
    mcmc_steps: int = option(10, "power-mcmc: Metropolis-Hastings steps after each block.", check=">=0", panel=POWER)
    block_tokens: int = option(0, "power-mcmc: tokens per block (0: --max-new-tokens / 16).", check=">=0",
                               panel=POWER)
    particles: int = option(8, "power-smc: particles per answer (its cost: that many completions, in one batched "
                               "decode).", check=">0", panel=POWER)
    ess_threshold: float = option(0.5, "power-smc: resample an answer's particles when their effective sample size "
                                       "falls below this share of --particles (1: at nearly every token).",
                                  check="(0, 1]", panel=POWER)
    alpha_ramp_tokens: int = option(0, "power-smc: the target's exponent rises from 1 to --power-alpha over these "
                                       "first tokens (the final target is unchanged).", check=">=0", panel=POWER)


@dataclass(frozen=True, kw_only=True)
class SeedOptions:
    seed: int = option(0, "Seed of every random draw (prompt order, sampling, LoRA initialisation).", check=">=0")


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    lora_r: int = option(16, "LoRA rank.", check=">0", panel=MODEL)
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = lora_alpha / lora_r).", check=">0", panel=MODEL)
    lora_dropout: float = option(0.0, "LoRA dropout (0 keeps log pi_old and log pi_theta identical).", check="[0, 1)",
                                 panel=MODEL)
    lora_targets: str = option("all-linear", "Comma-separated module names, or all-linear.", panel=MODEL)
    gradient_checkpointing: bool = option(True, "Recompute activations in backward to save memory.", panel=MODEL)


# --- the groups only training takes


@dataclass(frozen=True, kw_only=True)
class RolloutOptions:
    prompts_per_step: int = option(4, "Prompts per training step.", check=">0", panel=SAMPLING)
    samples_per_prompt: int = option(4, "Completions sampled per prompt (G).", check=">0", panel=SAMPLING)
    sample_batch_size: int = option(0, "Completions per sampling call (0: the whole step in one call); halved "
                                    "automatically after a CUDA out-of-memory error.", check=">=0", panel=SAMPLING)


@dataclass(frozen=True, kw_only=True)
class OptimOptions:
    max_steps: int = option(100, "Training steps (each samples, scores and updates).", check=">0")
    lr: float = option(5e-5, "LoRA learning rate.", check=">0")
    weight_decay: float = option(0.0, "AdamW weight decay on the LoRA weights.", check=">=0", panel=OPTIMISATION)
    lr_schedule: str = option("cosine", "Decay after warmup.", choices=("constant", "linear", "cosine"),
                              panel=OPTIMISATION)
    warmup_steps: int = option(5, "Linear learning-rate warmup steps.", check=">=0", panel=OPTIMISATION)
    max_grad_norm: float = option(1.0, "Clip the LoRA gradient norm to this (0 disables).", check=">=0",
                                  panel=OPTIMISATION)
    micro_batch_size: int = option(8, "Completions per forward/backward (gradient accumulation over the step); "
                                   "halved automatically after a CUDA out-of-memory error.", check=">0",
                                   panel=OPTIMISATION)
    probe: bool = option(True, "Before the first step on a GPU, run the worst-case shapes once (the longest prompt, "
                               "every completion at --max-new-tokens, the largest micro-batch, the evaluation's "
                               "batch): a run that does not fit halves or stops in its first minute.",
                         panel=OPTIMISATION)
    inner_epochs: int = option(1, "Updates per batch of samples (K); >1 uses the clipped importance weight.",
                               check=">0", panel=OPTIMISATION)
    clip_eps: float = option(0.2, "Importance-weight clip: w in [1-eps, 1+eps].", check="[0, 1)", panel=OPTIMISATION)
    max_bad_steps: int = option(3, "A step whose loss or gradient is not finite is skipped (nothing applied); "
                                   "stop after this many in a row.", check=">0", panel=OPTIMISATION)


@dataclass(frozen=True, kw_only=True)
class LogZOptions:
    log_z: str = option("auto", "log Z'(q) in the loss: batch: each prompt's batch estimate (the value that "
                        "minimises the loss over its G completions; the head learns to track it); head: the learned "
                        "head (lags behind a fast-moving policy); hybrid: the head, its bias re-centred every step on "
                        "the batch estimates' mean; auto: batch, or head with --samples-per-prompt 1.",
                        choices=("auto", "batch", "head", "hybrid"), panel=LOG_Z)
    z_lr: float = option(1e-2, "Learning rate of the log Z'(q) head's bias (its weights: z_lr / sqrt(fan-in)).",
                         check=">0", panel=LOG_Z)
    z_hidden: int = option(256, "Hidden width of the log Z'(q) head.", check=">0", panel=LOG_Z)
    z_init: str = option("batch", "Start log Z' at the value that zeroes the first batch's mean residual, "
                         "or at 0 (slower; kept for comparison).", choices=("batch", "zero"), panel=LOG_Z)


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    replay_steps: int = option(0, "Steps on replayed completions after each freshly sampled step (0: on-policy "
                                  "only): they skip sampling and the base pass. Trajectory-balance objectives only.",
                               check=">=0", panel=REPLAY)
    replay_size: int = option(16, "Completions kept per prompt for replay: the best by target log-prob per token "
                                  "and the most recent.", check=">0", panel=REPLAY)
    replay_best: float = option(0.0, "Fraction of a prompt's replayed completions taken from its best by target "
                                     "log-prob, and of --replay-size kept for them; the rest are its most recent.",
                             check="[0, 1]", panel=REPLAY)
    replay_lr_scale: float = option(1.0, "Learning-rate multiplier on replay steps (1: as on fresh steps).",
                                    check=">=0", panel=REPLAY)
    replay_window: int = option(0, "Replay only prompts sampled in the last N steps (0: any prompt in the buffer).",
                                check=">=0", panel=REPLAY)
    replay_order: str = option("newest", "Which of a replayed prompt's stored completions (besides --replay-best's) "
                               "it brings: its newest, or a random choice among all it keeps.",
                               choices=("newest", "random"), panel=REPLAY)
    explore_temperature: float = option(1.0, "Sample --explore-fraction of each prompt's completions at this "
                                             "temperature (1: no exploration); e.g. 1/alpha. Trajectory-balance "
                                             "objectives only: their target does not change.", check=">0",
                                        panel=REPLAY)
    explore_fraction: float = option(0.25, "Share of each prompt's --samples-per-prompt drawn at "
                                           "--explore-temperature (at least one).", check="(0, 1]", panel=REPLAY)


@dataclass(frozen=True, kw_only=True)
class TrainEvalOptions:
    eval_data: str = option("", "Problems or prompts to evaluate on (as powerflow eval --data): a preset, file or "
                                "dataset.", panel=EVALUATION)
    eval_every: int = option(0, "Evaluate every N steps, and before the first and after the last (0: never).",
                             check=">=0", panel=EVALUATION)
    eval_k: int = option(4, "Samples per eval prompt.", check=">0", panel=EVALUATION)
    eval_limit: int = option(32, "Evaluate on the first N prompts of --eval-data (0: all).", check=">=0",
                             panel=EVALUATION)
    eval_task: str = option("auto", TASK_HELP, choices=("auto", *TASKS), panel=EVALUATION)
    eval_tempered: bool = option(False, "Before training, also evaluate the base at --eval-temperature (1/alpha), "
                                        "the free alternative to training, and put it in the before/after table.",
                                 panel=EVALUATION)
    eval_temperature: float = option(0.0, "The base's temperature under --eval-tempered (0: 1/alpha). When "
                                          "flattening, the temperature that gives the base the diversity training "
                                          "reaches is the fairer comparison.", check=">=0", panel=EVALUATION)


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    save_every: int = option(50, "Write OUT/checkpoint-N every N steps (0: only at the end).", check=">=0",
                             panel=OUTPUT)
    keep_checkpoints: int = option(0, "Keep only the newest N checkpoints, deleting older ones (0: keep all).",
                                   check=">=0", panel=OUTPUT)
    show_every: int = option(10, "Show one prompt and completion every N steps (0: never).", check=">=0",
                             panel=OUTPUT)
    report_to: str = option("", "Also log every metrics row and the shown samples to tensorboard (OUT/tensorboard), "
                                "wandb (offline unless you are logged in), or both: tensorboard,wandb.", panel=OUTPUT)
    resume: bool = option(False, "Continue from the newest complete checkpoint in --output.", panel=OUTPUT)
    resume_from: str = option("", "Continue from this checkpoint directory (implies --resume).", panel=OUTPUT)


def ordered_fields(cls) -> list[dataclasses.Field]:
    """A config's fields in reading order (--help, config.yaml): the basics, the ones a user gives first leading,
    then panel by panel; within a panel the command's own fields, then its groups' in the order it lists them."""
    fields = dataclasses.fields(cls)

    def declared_by(f: dataclasses.Field) -> int:
        return next(i for i, owner in enumerate(cls.__mro__) if f.name in vars(owner).get("__annotations__", {}))

    return sorted(fields, key=lambda f: (PANELS.index(f.metadata["panel"]) if f.metadata.get("panel") else -1,
                                         FIRST.index(f.name) if f.name in FIRST else len(FIRST), declared_by(f),
                                         fields.index(f)))


def as_dict(config) -> dict:
    """The config's values in reading order (OUT/config.yaml, the config eval records in summary.json)."""
    return {f.name: getattr(config, f.name) for f in ordered_fields(type(config))}


# --- checks


def check_fields(config) -> None:
    """Every field's own contract, from its metadata, in the reading order of --help: first that every number is
    finite, then the signs (> 0, >= 0), the lengths, the choices, and last the intervals such as (0, 1]."""
    fields = ordered_fields(type(config))
    for f in fields:
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PowerflowError(f"{flag_name(f.name)} must be a finite number, got {value}")
    _check_ranges(config, [f for f in fields if f.metadata.get("check") in (">0", ">=0")])
    if getattr(config, "seed", 0) >= 2**64:  # torch.manual_seed's limit
        raise PowerflowError(f"--seed must be < 2**64, got {config.seed}")
    if getattr(config, "min_new_tokens", 0) > getattr(config, "max_new_tokens", math.inf):
        raise PowerflowError("--min-new-tokens cannot exceed --max-new-tokens")
    for f in fields:
        value = getattr(config, f.name)
        if not f.metadata.get("choices") or value in f.metadata["choices"]:
            continue
        if not f.metadata.get("file"):
            raise PowerflowError(f"{flag_name(f.name)} {value!r} is not one of {', '.join(f.metadata['choices'])}")
        if not Path(value).expanduser().is_file():  # the field also takes a file (--chat-template FILE)
            raise PowerflowError(f"{flag_name(f.name)} {value!r} is neither {' nor '.join(f.metadata['choices'])} "
                                 "nor a file")
    _check_ranges(config, [f for f in fields if f.metadata.get("check") not in (None, ">0", ">=0")])


def _check_ranges(config, fields: list[dataclasses.Field]) -> None:
    for f in fields:
        if getattr(config, f.name) in f.metadata.get("words", ()):
            continue
        test, says = RANGES[f.metadata["check"]]
        if not test(getattr(config, f.name)):
            raise PowerflowError(f"{flag_name(f.name)} {says}, got {getattr(config, f.name)}")


def check_sampling(config: SamplingOptions) -> None:
    """What the sampling options must satisfy together beyond their own ranges: a sampler that can sample so."""
    if why := unsupported(config.sampler, config.top_p, config.min_new_tokens):
        raise PowerflowError(why)
    if getattr(config, "adapter", "") and config.sampler in SAMPLERS and SAMPLERS[config.sampler].base_only:
        raise PowerflowError(f"--sampler {config.sampler} draws from the base itself (its weights need p_base at every "
                             "token), so it takes no adapter: give the base with --model, without --adapter or --run")
