"""Measured figures in README.md and docs/, rendered from the committed results files, so that they cannot drift.

    python examples/render_docs.py           # rewrite every block in place from examples/results/
    python examples/render_docs.py --check   # say which blocks differ from their results, exit 1 (CI's test)

A block is the text between a line `<!-- render NAME -->` and a line `<!-- /render -->`. NAME is an entry of
BLOCKS, gathered from examples/doc_blocks/ (one module per study): the results files it reads (each must exist) and
a function from their contents to the block's text, in plain Python and string formatting. A figure in a block
changes only when its results file does; a doc edited by hand inside a block fails tests/test_render_docs.py, and
so does a figure with a unit or a ± outside every block, unless that test lists it as a setting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "examples" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^<!-- render (\S+) -->\n(.*?)^<!-- /render -->$", re.S | re.M)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_blocks import all_blocks, jsonl  # noqa: E402 - one module per study

BLOCKS = all_blocks()


def read(path: Path) -> dict | list | str:
    """A results file as a block reads it: a .json file's JSON, a .jsonl file's rows, any other file's text."""
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else jsonl(text) if path.suffix == ".jsonl" else text


def rendered(text: str) -> str:
    """`text` with every block's body rendered from its results files."""
    def body(match: re.Match) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise KeyError(f"unknown block {name!r}: one of {', '.join(BLOCKS)}")
        block = BLOCKS[name]
        inputs = [read(RESULTS / file) for file in block.files]
        return f"<!-- render {name} -->\n{block.render(*inputs)}<!-- /render -->"

    return BLOCK.sub(body, text)


def drifted() -> list[str]:
    """The pages whose text differs from their rendering."""
    texts = {page: page.read_text() for page in PAGES}
    return [str(page.relative_to(ROOT)) for page, text in texts.items() if rendered(text) != text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block has drifted")
    args = parser.parse_args()
    if args.check:
        stale = drifted()
        for page in stale:
            print(f"{page}: a rendered block differs from its results file (python examples/render_docs.py)")
        sys.exit(1 if stale else 0)
    for page in PAGES:
        text = page.read_text()
        new = rendered(text)
        if new != text:
            page.write_text(new)
            print(f"rendered {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
