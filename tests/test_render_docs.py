"""The measured figures that examples/render_docs.py renders into README.md and docs/ (between `<!-- render NAME -->`
and `<!-- /render -->`) equal what their committed results files give, every results file a block reads exists, and
no measured figure stands outside a block."""

import importlib.util
import re
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


# A figure with a unit (%, s, min, GiB, tok/s, a ratio like 1.7x) or a ± outside every block is a figure no test
# reads. These are the ones that are not measurements: settings, constants of the code, a test's bound, notation.
NOT_MEASURED = {
    "If 3x + 7 = 25": "an example prompt",
    "one 24 GB card": "a card size the recipe targets",
    "24 GiB cards whether the run fits": "the card sizes the dry run plans for",
    "else 8 to 24 GiB": "the card sizes the dry run plans for",
    "7B model on one 24 GB card": "a card size the recipe targets",
    "MiB on a GPU, 64 MiB on the": "logprobs.LOGITS_BUDGET, a constant",
    "64 MiB of float32 logits per chunk": "logprobs.LOGITS_BUDGET, a constant",
    "the matmul as fast per position as a larger one; 256 MiB": "logprobs.LOGITS_BUDGET, a constant",
    "a flat 0.5 GiB (context, kernels": "memory_plan's CUDA-context margin, a constant",
    "10% above what autograd saves": "tests/test_memory_plan.py's bound",
    "with it within 10% at 0.5B, 1.5B and 7B shapes": "tests/test_rehearse.py's bound",
    "requires every phase within 10% of the plan": "tests/test_rehearse.py's bound",
    "raise it (2x)": "advice",
}
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:x\b|\s?(?:%|s\b|min\b|minutes?\b|seconds?\b|hours?\b|GiB\b|MiB\b|GB\b|"
                    r"tok/s\b))|±\s?\d")


def test_no_measured_figure_outside_a_block():
    stray = [f"{page.relative_to(ROOT)}: {line.strip()}" for page in render_docs.PAGES
             for line in render_docs.BLOCK.sub("", page.read_text()).splitlines()
             if FIGURE.search(line) and not any(allowed in line for allowed in NOT_MEASURED)]
    assert not stray, "figures outside a rendered block (render them from a results file):\n" + "\n".join(stray)


def test_the_figure_pattern_finds_measurements_and_not_settings():
    assert [FIGURE.search(text) is not None for text in (
        "takes 3 min 7 s", "55.6% avg@4", "+8.8 ± 4.7", "1.7x faster", "2.03 GiB", "51.6 tok/s",
        "--max-new-tokens 48", "alpha 0.5", "Qwen2.5-Math-1.5B", "100 x (1 - cosine)")] == [True] * 6 + [False] * 4
