"""What an eval task is: how it measures k samples per prompt, and what it needs (tasks/__init__.py lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Format = Callable[[float], str]
Row = tuple[str, str, Format]  # a line of the eval table: label, summary key (dots for nested keys), format


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def fixed(digits: int) -> Format:
    return lambda value: f"{value:.{digits}f}"


@dataclass(frozen=True)
class Measures:
    """The models a task may measure with, loaded once per evaluation."""

    embed: Callable | None = None  # texts -> unit-norm embeddings [n, D]
    judge: Callable[[list[str], list[str]], list[float]] | None = None  # prompts, completions -> ratings 1-9


@dataclass(frozen=True)
class Task:
    summarize: Callable[[list[dict], list[list[dict]], int, Measures], dict]  # (rows, each prompt's k records, k,
    # measures) -> the task's figures, with a `<key>_per_prompt` list for each key in `paired`; may grade records
    applies: Callable[[list[dict]], bool]  # --task auto takes the first task whose check passes on the data's rows
    needs_answers: bool  # rows need a reference answer (those without are skipped and counted)
    unreadable: Callable[[str], str | None] | None  # why it cannot grade against a reference answer, said before
    # the answer ("math-verify cannot read the reference answer"); None: it can. Checked before anything is sampled
    min_k: int  # samples per prompt it needs
    min_k_why: str  # what they are needed for, said when -k is too small
    system_prompt: str  # what --system-prompt auto means for `powerflow eval`
    metrics: dict[str, str]  # its eval_* keys in metrics.jsonl, and what each means
    paired: tuple[str, ...]  # per-prompt figures whose change gets the paired standard error
    rows: Callable[[dict, int], list[Row]]  # (a variant's figures, k) -> its lines of the eval table
    line: Callable[[dict], str]  # its figures in a metrics row, in a few words
    plot_panels: tuple[tuple[str, tuple[str, ...]], ...]  # (title, eval_* keys) drawn by `powerflow plot`
    uses_embedder: bool  # measures with a sentence embedder (--embedder); the preview estimates diversity with it
    uses_judge: bool  # accepts --judge
    states_answers: bool  # its samples end in a final answer that can be read and compared: the preview weighs
    # each answer, and --alpha auto chooses by how much p_alpha agrees on one (preview.choose_alpha)
    shows_samples: bool  # the before/after table of a training run is followed by samples to read
    data_note: str  # how its eval data was used, said at the end of training
