"""README and docs/ promises that tests can hold them to: the quick start, the flags, metrics and presets they
document, the README's length, and their relative links."""

import re
from pathlib import Path

from powerflow_lite.config import BenchConfig, EvalConfig, MergeConfig, PreviewConfig, SampleConfig, TrainConfig
from powerflow_lite.metrics import METRICS
from powerflow_lite.options import flag_name
from powerflow_lite.presets import PRESETS
from powerflow_lite.tasks import EVAL_METRICS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # docs/experiments too
DOCS = "\n".join(page.read_text() for page in PAGES)


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    install_and_demo, install_and_test = quick_start_commands()
    assert install_and_demo.startswith("pip install torch==2.13.0") and "powerflow train --demo" in install_and_demo
    assert install_and_test.startswith("pip install torch==2.13.0") and install_and_test.endswith("pytest -q")
    assert install_and_test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_documented_flag_exists():
    commands = (TrainConfig, SampleConfig, MergeConfig, EvalConfig, BenchConfig, PreviewConfig)
    flags = {flag_name(f.name) for cls in commands for f in cls.__dataclass_fields__.values()}
    flags |= {"--no" + flag[1:] for flag in flags}  # every on/off option has a --no- form
    flags |= {"--config", "--demo", "--demo-creative", "--json", "--help", "--no-deps", "--out"}  # --out: plot's too
    flags |= {"--index-url"}  # pip's, for PyTorch's CPU-only wheel index (--no-deps above is pip's too)
    flags |= {"--dry-run", "--rehearse", "--prompt-tokens"}  # train's CLI-only flags (cli.DRY_RUN, cli.REHEARSE, ...)
    flags |= {"--nproc-per-node", "--num-processes", "--multi-gpu"}  # torchrun's and accelerate launch's
    flags |= {"--logdir", "--no-x"}  # tensorboard's; design.md's name for the off switch of any on/off option --x
    for script in ("exact_alpha.py", "real_model.py", "power_real.py"):
        flags |= set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "examples" / script).read_text()))
    text = re.sub(r"\]\([^)]*\)", "]", DOCS)  # not link targets: an anchor such as #--alpha-auto names no flag
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    assert documented - flags == set()


def test_every_metric_is_documented():
    assert [key for key in {**METRICS, **EVAL_METRICS} if f"`{key}`" not in DOCS] == []


def test_presets_table_matches_the_code():
    # each preset's row names its hub id, split and fields exactly as presets.py loads them
    rows = {line.split("|")[1].strip(" `"): line for line in DOCS.splitlines() if line.startswith("| `")}
    for name, preset in PRESETS.items():
        cells = [cell.strip() for cell in rows[name].split("|")[1:-1]]
        hub_id, split, prompt_field, answer_field = cells[1:5]
        assert (hub_id, split, prompt_field) == (f"`{preset.hub_id}`", f"`{preset.split}`", f"`{preset.prompt_field}`")
        assert answer_field.startswith(f"`{preset.answer_field}`")


def test_readme_is_short():
    assert len([line for line in README.splitlines() if not line.startswith("<!-- ")]) <= 320  # markers unseen


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -, repeats numbered."""
    seen: dict[str, int] = {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_readme_links_every_docs_page():
    linked = {(ROOT / target).resolve() for target in re.findall(r"\]\((docs/[^)#\s]+)", README)}
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked] == []
