"""The blocks examples/render_docs.py renders: one module per study, each with a `BLOCKS` dict of name -> Block."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Block:
    files: tuple[str, ...]  # results files under examples/results/ it reads
    render: Callable[..., str]  # their JSON (a .json file), rows (a .jsonl file) or text, in that order -> the
    # block's text (lines, ending with a newline)


def jsonl(text: str) -> list[dict]:
    """The rows of a .jsonl file's text."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


GLUE = "\u00a0"  # a space that wrap() does not break at


def wrap(text: str, bullet: bool = False, width: int = 108) -> str:
    """A paragraph, or a bullet (`bullet`, or a text that opens with '* ' or '  * ') whose other lines are indented
    under its first, in lines of at most `width` characters, ending with a newline. A figure keeps its ± and its
    unit, and "K = 2" and a `code span` stay on one line."""
    text = ("* " if bullet else "") + text
    marker = re.match(r" *\* ", text)
    first = marker.group() if marker else ""
    text = " ".join(text[len(first):].split())
    text = re.sub(r"`[^`]*`", lambda span: span.group().replace(" ", GLUE), text)
    text = re.sub(r" ([±=]) ", GLUE + r"\1" + GLUE, text)
    text = re.sub(r"(\d) (GiB|GB|MiB|s|min|hours|points|nats|tokens)\b", r"\1" + GLUE + r"\2", text)
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=" " * len(first),
                         break_long_words=False, break_on_hyphens=False).replace(GLUE, " ") + "\n"


def span(values: list[float], spec: str | Callable[[float], str] = ".2f") -> str:
    """'low-high' of `values` as `spec` (a format spec, or a function) writes them, or one value where both read
    alike."""
    shown = spec if callable(spec) else (lambda value: format(value, spec))
    low, high = shown(min(values)), shown(max(values))
    return low if low == high else f"{low}-{high}"


def points(change: dict, scale: float = 100, digits: int = 1, sign: bool = True) -> str:
    """A paired change with its standard error, '+8.8 ± 4.7': in points of a share by default, else at `scale` and
    `digits`; without its sign when `sign` is False."""
    mean = scale * change["mean"]
    return (f"{mean:+.{digits}f}" if sign else f"{abs(mean):.{digits}f}") + f" ± {scale * change['stderr']:.{digits}f}"


def within(change: dict) -> bool:
    """Whether a paired change is within two standard errors of none."""
    return abs(change["mean"]) < 2 * change["stderr"]


def lr_text(lr: float) -> str:
    """A learning rate as the docs and the CLI write it: 1e-3, 2.5e-4."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table's lines, ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def all_blocks() -> dict[str, Block]:
    """Every module's blocks (each module of this package has a BLOCKS dict); a name defined twice is an error."""
    blocks: dict[str, Block] = {}
    for name in sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])):
        module = importlib.import_module(f"doc_blocks.{name}")
        twice = set(blocks) & set(module.BLOCKS)
        if twice:
            raise ValueError(f"doc_blocks.{name} defines blocks already defined: {', '.join(sorted(twice))}")
        blocks.update(module.BLOCKS)
    return blocks
