"""The measured figures that examples/render_docs.py renders into README.md and docs/ (between `<!-- render NAME -->`
and `<!-- /render -->`) equal what their committed results files give, and every results file a block reads exists."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_docs", ROOT / "examples" / "render_docs.py")
render_docs = sys.modules["render_docs"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
spec.loader.exec_module(render_docs)


@pytest.mark.parametrize("page", render_docs.PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_rendered_block_matches_its_results_file(page):
    text = page.read_text()
    assert render_docs.rendered(text) == text, f"{page.name} drifted: run python examples/render_docs.py"


def test_every_block_is_known_and_its_results_files_exist():
    used = {name for page in render_docs.PAGES for name, _ in render_docs.BLOCK.findall(page.read_text())}
    assert used == set(render_docs.BLOCKS)  # every block in use, and no name without a renderer
    for block in render_docs.BLOCKS.values():
        assert all((render_docs.RESULTS / file).is_file() for file in block.files)


def test_a_figure_edited_by_hand_is_caught():
    text = (ROOT / "README.md").read_text()
    row = "| sequential Monte Carlo, N = 16 | **"
    edited = text.replace(row + "55.6%**", row + "57.0%**")
    assert edited != text and render_docs.rendered(edited) == text
