"""README promises that tests can hold it to: the quick start, and the flags it documents."""

import re
from pathlib import Path

from powerflow_lite.config import BenchConfig, EvalConfig, MergeConfig, PreviewConfig, SampleConfig, TrainConfig
from powerflow_lite.metrics import METRICS
from powerflow_lite.options import flag_name
from powerflow_lite.presets import PRESETS
from powerflow_lite.tasks import EVAL_METRICS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


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
    flags |= {"--nproc-per-node", "--num-processes", "--multi-gpu"}  # torchrun's and accelerate launch's
    for script in ("exact_alpha.py", "real_model.py"):
        flags |= set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "examples" / script).read_text()))
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", README))
    assert documented - flags == set()


def test_every_metric_is_documented():
    assert all(f"`{key}`" in README for key in {**METRICS, **EVAL_METRICS})


def test_presets_table_matches_the_code():
    # each preset's row names its hub id, split and fields exactly as presets.py loads them
    rows = {line.split("|")[1].strip(" `"): line for line in README.splitlines() if line.startswith("| `")}
    for name, preset in PRESETS.items():
        cells = [cell.strip() for cell in rows[name].split("|")[1:-1]]
        hub_id, split, prompt_field, answer_field = cells[1:5]
        assert (hub_id, split, prompt_field) == (f"`{preset.hub_id}`", f"`{preset.split}`", f"`{preset.prompt_field}`")
        assert answer_field.startswith(f"`{preset.answer_field}`")
