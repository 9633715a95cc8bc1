"""Format penalties psi(y) (docs/design.md section 5), chosen by name with `--format-penalty`.

    boxed            -0.5 when the completion has no complete \\boxed{...}, else 0 (reasoning)
    none             0 for every completion (creative writing)
    module:function  your own `def psi(completion: str, prompt: str) -> float`;
                     `module` is an importable module or a path to a .py file,
                     e.g. --format-penalty my_rewards.py:no_code_blocks

psi enters the target as log p_target = alpha * (log p_base(y|q)/|y| + psi(y))
for `latb`, so it is a per-token log-probability bonus: keep it in the range of
a few nats.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from pathlib import Path
from typing import Callable

from .errors import PowerflowError

FormatPenalty = Callable[[str, str], float]

BOXED_PENALTY = -0.5
GSM8K_FINAL = re.compile(r"^####\s*(.+)$")  # the last line of a GSM8K solution: "#### 72"


def boxed_answers(text: str) -> list[str]:
    """The contents of every complete \\boxed{...} in `text` (braces balanced), stripped, in order of their start."""
    found = []
    start = text.find("\\boxed{")
    while start != -1:
        depth, i = 1, start + len("\\boxed{")
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append(text[start + len("\\boxed{") : i - 1].strip())
        start = text.find("\\boxed{", start + 1)
    return found


def last_boxed(text: str) -> str | None:
    """The contents of the last complete \\boxed{...} in `text` (braces balanced), or None."""
    answers = boxed_answers(text)
    return answers[-1] if answers else None


def gsm8k_answer(text: str) -> str | None:
    """The value after `####` on the last non-empty line of `text` (a GSM8K solution), commas removed, or None.

    GSM8K's own grader drops the commas too: "#### 1,000" is 1000.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = GSM8K_FINAL.match(lines[-1]) if lines else None
    return (match.group(1).replace(",", "").strip() or None) if match else None


def has_boxed(text: str) -> bool:
    """True when `text` contains \\boxed{...} with balanced braces and something inside."""
    return any(boxed_answers(text))


def boxed(completion: str, prompt: str = "") -> float:
    return 0.0 if has_boxed(completion) else BOXED_PENALTY


def none(completion: str, prompt: str = "") -> float:
    return 0.0


BUILTIN: dict[str, FormatPenalty] = {"boxed": boxed, "none": none}


def load_format_penalty(spec: str) -> FormatPenalty:
    """`boxed`, `none` or `module:function` -> a callable psi(completion, prompt)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise PowerflowError(f"--format-penalty {spec!r}: use boxed, none or module:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise PowerflowError(f"--format-penalty {spec!r}: file {module_name!r} not found")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except PowerflowError:
        raise
    except Exception as err:  # the user's module may fail to import in any way (SyntaxError, NameError, ...)
        raise PowerflowError(f"--format-penalty {spec!r}: cannot import {module_name!r} "
                             f"({type(err).__name__}: {err})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise PowerflowError(f"--format-penalty {spec!r}: {module_name!r} has no function {function_name!r}")
    return function


def format_penalties(penalty: FormatPenalty, spec: str, completions: list[str], prompts: list[str]) -> list[float]:
    """psi(y) for every completion, checked: a user function that fails or returns junk is named, not traced."""
    values = []
    for completion, prompt in zip(completions, prompts):
        try:
            value = float(penalty(completion, prompt))
        except Exception as err:  # the user's function may raise anything
            raise PowerflowError(f"--format-penalty {spec!r} failed on a completion: "
                                 f"{type(err).__name__}: {err}") from None
        if not math.isfinite(value):
            raise PowerflowError(f"--format-penalty {spec!r} returned {value} (it must return a finite number)")
        values.append(value)
    return values
