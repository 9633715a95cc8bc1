"""The blocks examples/render_docs.py renders: one module per study, each with a `BLOCKS` dict of name -> Block."""

from __future__ import annotations

import importlib
import json
import pkgutil
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
