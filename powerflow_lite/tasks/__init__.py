"""The eval tasks of `--task` / `--eval-task`, as a registry with capability flags (as objectives.OBJECTIVES).

    task = TASKS[resolve_task("auto", rows)]      # math when the rows have reference answers, else creative
    figures = task.summarize(rows, by_prompt, k, Measures(embed=...))

Every task also reports what every sample has: mean length, the truncated
fraction and the base log-prob per token (evaluate.summarize). The CLI choices,
the checks, the eval table, the training log line, the metrics.jsonl keys and
`powerflow plot`'s panels all come from here. A new task is one module in this
folder and one entry below.
"""

from __future__ import annotations

from .creative import CREATIVE
from .math import MATH
from .task import Measures, Row, Task, fixed, percent

TASKS: dict[str, Task] = {"math": MATH, "creative": CREATIVE}  # `auto` tries them in this order

COMMON_METRICS: dict[str, str] = {  # every task's, after its own
    "eval_length_mean": "Mean length of the eval samples in tokens.",
    "eval_truncated_frac": "Fraction of eval samples cut at --max-new-tokens.",
    "eval_base_logp_per_token": "Log-prob per token of the eval samples under the base model (adapter off).",
    "time_eval": "Seconds spent evaluating at this step.",
}
# Written with --eval-data / --eval-every: on eval steps, and in a row of their own at step 0 (before training).
EVAL_METRICS: dict[str, str] = {**{key: text for task in TASKS.values() for key, text in task.metrics.items()},
                                **COMMON_METRICS}
COMMON_ROWS: list[Row] = [("base log-prob / token", "base_logp_per_token", fixed(3)),
                          ("mean length (tokens)", "length_mean", fixed(1)), ("truncated", "truncated_frac", percent)]
POWER_ROWS: list[Row] = [("tokens sampled per answer", "sampled_tokens_per_answer", fixed(1)),  # a power sampler's
                         ("effective sample size", "ess_mean", fixed(2)),
                         ("resamplings per answer", "resamples_per_answer", fixed(1)),
                         ("p_alpha ESS / k (1: samples as p_alpha)", "p_alpha_ess", fixed(3))]  # powerflow eval
PAIRED = (*dict.fromkeys(key for task in TASKS.values() for key in task.paired), "base_logp_per_token", "p_alpha_ess")
TASK_HELP = " or ".join(TASKS) + " measures; auto: the first that fits the data (math when it has reference answers)."


def resolve_task(name: str, rows: list[dict]) -> str:
    """`auto` -> the first registered task that applies to these rows; any other name as it is."""
    return name if name != "auto" else next(key for key, task in TASKS.items() if task.applies(rows))


def too_few_samples(name: str, k: int, flag: str) -> str | None:
    """Why `k` samples per prompt are too few for task `name`, to follow its name ("measures diversity across a
    prompt's samples: needs -k >= 2"), or None; `auto` is checked once it is resolved."""
    task = TASKS.get(name)
    if task is None or k >= task.min_k:
        return None
    return f"measures {task.min_k_why}: needs {flag} >= {task.min_k}"


__all__ = ["COMMON_METRICS", "COMMON_ROWS", "EVAL_METRICS", "Measures", "PAIRED", "POWER_ROWS", "TASKS", "TASK_HELP",
           "Task", "resolve_task", "too_few_samples"]
