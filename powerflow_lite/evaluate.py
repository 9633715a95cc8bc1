"""`powerflow eval`: what training bought, measured on k samples per prompt at temperature 1.

    powerflow eval --run runs/reasoning-alpha4 --data math500 -k 16 --compare-base
    powerflow eval --model M --adapter A --data examples/data/creative-sample.jsonl --task creative -k 8

What is measured is the task's (tasks/: math grades answers, creative measures
diversity); every task also reports mean length, the truncated fraction and the
log-prob per token of the samples under the base model (adapter off).

With --compare-base the base model (adapter off, same weights, same prompts,
same seed) is evaluated in the same run. OUT/samples.jsonl holds every sample
and its grade, written as each variant is graded; OUT/summary.json the figures.
The same measures run inside training with --eval-data / --eval-every
(`training_metrics`), written into metrics.jsonl as eval_* keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import check_writable, refuse_to_replace, write_atomically
from .config import EvalConfig
from .data import encode_prompts, load_prompts, prompt_input
from .distributed import SINGLE, Ranks
from .errors import PowerflowError
from .faults import BatchSize
from .inference import generate_records
from .metrics import mean, stderr
from .model import context_length, load_base_model, load_policy, load_tokenizer, resolve_device
from .options import as_dict
from .presets import PRESETS
from .samplers import SAMPLERS
from .samplers.rollouts import SamplingSettings
from .seeds import EVAL_SEED_OFFSET, seed_eval
from .tasks import EVAL_METRICS, PAIRED, TASKS, Measures, resolve_task, too_few_samples
from .tasks.models import judge_scores, load_embedder

SUMMARY, SAMPLES = "summary.json", "samples.jsonl"
Progress = Callable[[int, int, str], None]  # (completions done, completions in all, variant)


@dataclass(frozen=True)
class EvalSet:
    rows: list[dict]  # row["prompt"]; row["answer"] (str or None) when the task reads answers
    prompt_ids: list[list[int]]
    task: str  # a name of tasks.TASKS
    skipped: int = 0  # rows dropped for want of a reference answer (a task that needs answers)


def load_eval_set(source: str, tokenizer, max_positions: int | None, task: str = "auto", prompt_field: str = "",
                  answer_field: str = "", split: str = "", limit: int = 0, chat_template: str = "auto",
                  system_prompt: str = "auto", max_new_tokens: int = 1024) -> EvalSet:
    """Prompts (and reference answers) rendered and tokenized as training renders them."""
    reads_answers = task == "auto" or TASKS[task].needs_answers
    rows = all_rows = load_prompts(source, prompt_field, split, answer_field if reads_answers else None)
    task = resolve_task(task, rows)
    skipped = 0
    if TASKS[task].needs_answers:
        kept = [row for row in rows if row.get("answer")]
        skipped, rows = len(rows) - len(kept), kept
        if not rows:
            raise PowerflowError(f"--task {task}: no row of {source!r} has a reference answer "
                                 "(name its field with --answer-field)")
    rows = rows[:limit] if limit else rows
    lines = all_rows.lines_of(rows)
    if TASKS[task].unreadable:  # every reference must be readable before anything is sampled
        for line, row in zip(lines, rows):
            if why := TASKS[task].unreadable(row["answer"]):
                raise PowerflowError(f"{source}:{line}: {why} {row['answer']!r} ({row['prompt'][:60]!r})")
    if system_prompt == "auto":
        system_prompt = TASKS[task].system_prompt
    prompt_ids = encode_prompts(tokenizer, [prompt_input(row) for row in rows], chat_template, system_prompt,
                                max_new_tokens, max_positions, source, lines)
    return EvalSet(rows, prompt_ids, task, skipped)


@dataclass(frozen=True)
class TrainingEval:
    """One evaluation set of --eval-data: its source, its name (the folder under OUT/evals and the prefix of its
    metrics keys; "" for the first, which keeps OUT/evals and the plain eval_* keys) and its prompts."""

    data: str
    name: str
    eval_set: EvalSet

    def key(self, metric: str) -> str:
        """A metrics.jsonl key of this set: eval_avg_at_k, or NAME/eval_avg_at_k beyond the first set."""
        return f"{self.name}/{metric}" if self.name else metric


def eval_sources(spec: str) -> list[tuple[str, str]]:
    """--eval-data "math500,my.jsonl" -> [(source, name)]: the first named "", the others by their preset name
    or file stem (numbered when two would share one)."""
    sources = [part.strip() for part in spec.split(",") if part.strip()]
    named, seen = [], set()
    for n, source in enumerate(sources):
        name = "" if n == 0 else Path(source).stem if source not in PRESETS else source
        while name in seen:
            name = f"{name}-{n + 1}"
        seen.add(name)
        named.append((source, name))
    return named


def setup_training_eval(cfg, tokenizer, device: torch.device) -> tuple[list[TrainingEval], Measures]:
    """The eval sets of --eval-data (one or several, comma-separated), prompted as training prompts (same template
    and system prompt), and the models their tasks measure with."""
    evals = []
    for source, name in eval_sources(cfg.eval_data):
        eval_set = load_eval_set(source, tokenizer, context_length(cfg.model, cfg.trust_remote_code),
                                 cfg.eval_task, limit=cfg.eval_limit, chat_template=cfg.chat_template,
                                 system_prompt=cfg.system_prompt, max_new_tokens=cfg.max_new_tokens)
        if why := too_few_samples(eval_set.task, cfg.eval_k, "--eval-k"):
            raise PowerflowError(f"--eval-data {source!r} is evaluated as --eval-task {eval_set.task}, which {why}")
        evals.append(TrainingEval(source, name, eval_set))
    embedded = any(TASKS[each.eval_set.task].uses_embedder for each in evals)
    return evals, Measures(embed=load_embedder("", device) if embedded else None)


def training_metrics(model, tokenizer, eval_set: EvalSet, k: int, settings: SamplingSettings, seed: int,
                     measures: Measures = Measures(), rows_per_batch: int = 64, policy_is_base: bool = False,
                     ranks: Ranks = SINGLE, score_rows: int | None = None, size: BatchSize | None = None,
                     notes: list[str] | None = None) -> tuple[dict, dict, list]:
    """The policy measured as it is now: the eval_* keys of a metrics.jsonl row (tasks.EVAL_METRICS), the
    whole summary (with the per-prompt figures) and the graded samples.

    `policy_is_base` (a fresh adapter, whose LoRA B is zero) skips the base pass: the base log-probs are
    then the policy's own, to the bit. Under a launcher each rank samples a contiguous share of the problems
    (its own random stream) and rank 0 gathers and grades them all; the other ranks return ({}, {}, []).
    `rows_per_batch` rows are sampled and `score_rows` scored together; out of memory, they halve (generate_records).
    """
    started = time.perf_counter()
    share = ranks.share(eval_set.prompt_ids)
    with torch.random.fork_rng(devices=_cuda_devices(model)):  # training's random draws stay as they were
        # the same seed at every evaluation: the samples before and after training are paired problem by problem
        seed_eval(EVAL_SEED_OFFSET + seed, ranks.rank)  # generate's draws; the static sampler's:
        records = list(generate_records(model, tokenizer, eval_set.prompt_ids[share], k, settings, rows_per_batch,
                                        score_base=not policy_is_base, seed=EVAL_SEED_OFFSET + seed,
                                        first_row=share.start * k, score_rows=score_rows, size=size, notes=notes,
                                        what="in the evaluation", hint="lower --max-new-tokens"))
    for record in records:
        record["prompt_index"] += share.start
    records = ranks.cat(records)
    if not ranks.main:
        return {}, {}, []
    for record in records:
        record["prompt"] = eval_set.rows[record["prompt_index"]]["prompt"]
    summary = summarize(eval_set, records, k, measures)
    row = {key: summary[key.removeprefix("eval_")] for key in EVAL_METRICS if key.removeprefix("eval_") in summary}
    row["time_eval"] = summary["seconds"] = time.perf_counter() - started
    return row, summary, records


EVALS = "evals"  # OUT/evals/step-N.json (+ .samples.jsonl) for every eval during training; before_after.json


def write_training_eval(out: Path, step: int | str, summary: dict, records: list[dict], setting: dict,
                        name: str = "") -> None:
    """OUT/evals/step-N.json (the figures, per prompt too, and the `setting` they were measured with: data, k,
    limit, ...) and step-N.samples.jsonl (every graded sample); a further eval set's in OUT/evals/NAME/."""
    folder = out / EVALS / name
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / f"step-{step}.samples.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_atomically(folder / f"step-{step}.json",
                     json.dumps({"step": step, "setting": setting, **summary}, indent=1) + "\n")


def before_after(out: Path, data: str, k: int, after_step: int, name: str = "") -> dict | str:
    """The eval at step 0 (the base) against the one at `after_step`, shaped as a `powerflow eval --compare-base`
    summary (results: before, after; change: paired standard errors); written to OUT/evals/before_after.json.
    -> the summary, or a sentence saying why there is none (no step-0 eval, or one measured differently: a run
    resumed with other eval settings, whose per-problem pairs would not match). A further eval set's: its own
    folder, OUT/evals/NAME."""
    folder = out / EVALS / name
    if not (folder / "step-0.json").is_file():
        return "no before/after table: this run has no eval before training (it began without --eval-data)"
    before, after = (json.loads((folder / f"step-{s}.json").read_text()) for s in (0, after_step))
    if before.get("setting") != after.get("setting"):
        return (f"no before/after table: the eval at step {after_step} was measured with other settings than the "
                f"one before training ({after.get('setting')} against {before.get('setting')})")
    # the task both were measured as (in an eval from before settings were recorded: the task whose figures it has)
    task = (after.get("setting") or {}).get("task") or next(
        name for name, each in TASKS.items() if any(key.removeprefix("eval_") in after for key in each.metrics))
    summary = {"task": task, "data": data, "k": k, "prompts": before["prompts"],
               "seconds": before["seconds"] + after["seconds"], "steps": after_step,
               "results": {"before": before, f"after step {after_step}": after},
               "change": paired_changes(before, after)}
    tempered = folder / "step-0-tempered.json"  # --eval-tempered: the free alternative, the base at T = 1/alpha
    if tempered.is_file():
        base = json.loads(tempered.read_text())
        if {**base["setting"], "temperature": 1.0} == {**after["setting"], "temperature": 1.0}:
            name = f"base, T = {base['setting']['temperature']:.3g}"
            summary["results"] = {"before": before, name: base, f"after step {after_step}": after}
            summary["change_vs"] = {"name": name, "change": paired_changes(base, after)}
            summary["seconds"] += base["seconds"]
    files = {"before": "step-0", f"after step {after_step}": f"step-{after_step}"}
    files.update({name: "step-0-tempered" for name in summary["results"] if name.startswith("base, T")})
    summary["samples"] = {name: first_samples(folder / f"{files[name]}.samples.jsonl") for name in summary["results"]}
    write_atomically(folder / "before_after.json", json.dumps(summary, indent=1) + "\n")
    return summary


def first_samples(path: Path, n: int = 2) -> dict:
    """The first eval prompt and `n` of its completions, from a step's samples file (none where it is missing)."""
    if not path.is_file():
        return {"prompt": "", "completions": []}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = [r for r in records if r["prompt_index"] == 0][:n]
    return {"prompt": first[0]["prompt"] if first else "", "completions": [r["completion"] for r in first]}


def summarize(eval_set: EvalSet, records: list[dict], k: int, measures: Measures = Measures()) -> dict:
    """The summary figures: what every sample has, then the task's own (which may grade records in place)."""
    by_prompt = [records[i * k:(i + 1) * k] for i in range(len(eval_set.rows))]
    tokens = sum(r["tokens"] for r in records)
    per_prompt_logp = [sum(r.get("logp_base", r["logp"]) for r in group) / max(1, sum(r["tokens"] for r in group))
                       for group in by_prompt]
    summary = {
        "prompts": len(by_prompt),
        "samples": len(records),
        "length_mean": mean([r["tokens"] for r in records]),
        "truncated_frac": mean([r["finish_reason"] == "length" for r in records]),
        "base_logp_per_token": sum(r.get("logp_base", r["logp"]) for r in records) / max(tokens, 1),
        "base_logp_per_token_per_prompt": per_prompt_logp,
    }
    if any("sampled_tokens" in r for r in records):  # a power sampler: its inference cost
        summary["sampled_tokens_per_answer"] = mean([r.get("sampled_tokens", r["tokens"]) for r in records])
    if any("ess" in r for r in records):
        summary["ess_mean"] = mean([r["ess"] for r in records if "ess" in r])
    if any("resamples" in r for r in records):  # power-smc: how often its particles were resampled
        summary["resamples_per_answer"] = mean([r["resamples"] for r in records if "resamples" in r])
    summary.update(TASKS[eval_set.task].summarize(eval_set.rows, by_prompt, k, measures))
    return summary


def p_alpha_ess(records: list[dict], k: int, alpha: float) -> dict:
    """How close the sampling model is to p_base^alpha, from its own samples at temperature 1: per prompt the
    normalised effective sample size of the weights w = p_base(y)^alpha / pi(y) over its k samples,
    (sum w)^2 / (k sum w^2), 1 when pi is p_alpha up to normalisation, 1/k when one sample takes all the weight.
    With few samples it is a noisy estimate that overrates a policy whose mismatch its samples miss."""
    per_prompt = []
    for first in range(0, len(records), k):
        group = records[first:first + k]
        log_w = torch.tensor([alpha * r.get("logp_base", r["logp"]) - r["logp"] for r in group], dtype=torch.float64)
        w = torch.softmax(log_w, 0)
        per_prompt.append(float(1.0 / (len(group) * w.square().sum())))
    return {"p_alpha_ess": mean(per_prompt), "p_alpha_ess_per_prompt": per_prompt, "p_alpha": alpha}


def paired_changes(base: dict, adapter: dict, keys: tuple[str, ...] = PAIRED) -> dict:
    """adapter - base of the per-prompt figures, with the standard error of the mean paired difference.

    Both variants answer the same prompts with the same seed, so the per-prompt
    differences are what varies; their spread is the honest error bar of a change.
    """
    changes = {}
    for key in keys:
        if f"{key}_per_prompt" in base and f"{key}_per_prompt" in adapter:
            differences = [a - b for a, b in zip(adapter[f"{key}_per_prompt"], base[f"{key}_per_prompt"])]
            changes[key] = {"mean": mean(differences), "stderr": stderr(differences)}
    return changes


def evaluate(cfg: EvalConfig, progress: Progress | None = None, ranks: Ranks = SINGLE,
             notes: list[str] | None = None) -> dict:
    """The whole `powerflow eval` run; returns the summary it writes to OUT/summary.json.

    Under torchrun each rank samples a contiguous share of the problems (row r drawn from uniforms of its own,
    as in one process, with the static sampler) and rank 0 grades, writes and returns everything; the other
    ranks return {}. A batch halved after running out of memory is said in `notes`."""
    device = ranks.start(resolve_device(cfg.device))
    out, eval_set, tokenizer = ranks.agreed(lambda: _prepare_eval(cfg))  # bad input on any rank stops every rank
    measures = Measures()
    if ranks.main:  # the measuring models grade on rank 0 only
        measures = Measures(
            embed=load_embedder(cfg.embedder, device) if TASKS[eval_set.task].uses_embedder else None,
            judge=partial(judge_scores, load_base_model(cfg.judge, cfg.quant, device, cfg.trust_remote_code),
                          load_tokenizer(cfg.judge, cfg.trust_remote_code)) if cfg.judge else None)
    model = load_policy(cfg, device)
    settings = SamplingSettings.from_config(cfg, tokenizer)
    variants = (["base"] if cfg.compare_base else []) + ["adapter" if cfg.adapter else "base"]
    # samples of the model itself (not p_base^alpha's, nor tempered, cut by top-p or kept from EOS): they say how
    # close it is to p_base^alpha
    own_samples = (cfg.temperature == 1.0 and cfg.top_p == 1.0 and not cfg.min_new_tokens
                   and not (cfg.sampler in SAMPLERS and SAMPLERS[cfg.sampler].power))

    if ranks.main:
        _make_output(out, cfg.overwrite)
    ranks.barrier()
    started = time.perf_counter()
    results = {}
    share = ranks.share(eval_set.prompt_ids)
    total = len(eval_set.prompt_ids[share]) * cfg.k * len(variants)
    done = 0
    size = BatchSize("--batch-size", cfg.batch_size)  # out of memory with the base, the adapter starts halved too
    handle = (out / SAMPLES).open("x", encoding="utf-8") if ranks.main else None
    try:
        for variant in variants:
            seed_eval(cfg.seed, ranks.rank)  # generate's draws (the static sampler's: per row)
            records = []
            for record in generate_records(model, tokenizer, eval_set.prompt_ids[share], cfg.k, settings,
                                           cfg.batch_size, adapter=variant == "adapter", sampler=cfg.sampler,
                                           seed=cfg.seed, first_row=share.start * cfg.k, size=size, notes=notes,
                                           what="in the evaluation", hint="lower --max-new-tokens"):
                record["prompt_index"] += share.start
                prompt = eval_set.rows[record["prompt_index"]]["prompt"]
                records.append({"variant": variant, **record, "prompt": prompt})
                done += 1
                if progress:
                    progress(done, total, variant)
            records = ranks.cat(records)
            if not ranks.main:
                continue
            results[variant] = summarize(eval_set, records, cfg.k, measures)
            if own_samples:
                results[variant].update(p_alpha_ess(records, cfg.k, cfg.power_alpha))
            for record in records:  # graded by now
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
    finally:
        if handle is not None:
            handle.close()
    if not ranks.main:
        return {}
    summary = {"task": eval_set.task, "data": cfg.data, "k": cfg.k, "prompts": len(eval_set.rows),
               "skipped_without_answer": eval_set.skipped, "seconds": time.perf_counter() - started,
               "results": results, "config": as_dict(cfg)}
    if list(results) == ["base", "adapter"]:
        summary["change"] = paired_changes(results["base"], results["adapter"])
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def _prepare_eval(cfg: EvalConfig):
    """The checks of `evaluate` that read and load but write nothing.  -> output dir, eval set, tokenizer"""
    out = _check_output(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    # The data, the references and the measuring models first: a mistake there costs no model load.
    eval_set = load_eval_set(cfg.data, tokenizer, context_length(cfg.model, cfg.trust_remote_code), cfg.task,
                             cfg.prompt_field, cfg.answer_field, cfg.split, cfg.limit, cfg.chat_template,
                             cfg.system_prompt, cfg.max_new_tokens)
    for flag, given, uses in (("--judge", cfg.judge, lambda task: task.uses_judge),
                              ("--embedder", cfg.embedder, lambda task: task.uses_embedder)):
        if given and not uses(TASKS[eval_set.task]):
            users = " or ".join(name for name, task in TASKS.items() if uses(task))
            raise PowerflowError(f"{flag} measures {users} samples; {cfg.data!r} is evaluated as --task "
                                 f"{eval_set.task}")
    if why := too_few_samples(eval_set.task, cfg.k, "-k"):
        raise PowerflowError(f"{cfg.data!r} is evaluated as --task {eval_set.task}, which {why}")
    return out, eval_set, tokenizer


def _check_output(cfg: EvalConfig) -> Path:
    out = Path(cfg.output).expanduser()
    refuse_to_replace(out, cfg.output, cfg.overwrite, (SUMMARY, SAMPLES), "a powerflow eval output")
    check_writable(out)
    return out


def _make_output(out: Path, overwrite: bool) -> None:
    """Create --output; with --overwrite remove only the two files an eval writes (nothing else in it is ours)."""
    try:
        if overwrite:
            for name in (SUMMARY, SAMPLES):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PowerflowError(f"cannot write to --output {str(out)!r}: {err.strerror}") from None


def _cuda_devices(model) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []
