"""The recipes in examples/recipes/: each parses, says what it is for and how to run it, and trains one step.

A recipe's model is replaced by the tiny model built in code and its sizes by small ones, so every recipe runs on
the CPU in seconds on a local prompt file, whichever of the usual names (presets.PROMPT_FIELDS) its field has.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from helpers import one_error_line, run_cli, write_jsonl

from powerflow_lite.config import TrainConfig
from powerflow_lite.config_files import load_config, read_yaml, resolve_train_config
from powerflow_lite.data import load_prompts
from powerflow_lite.metrics import read_metrics
from powerflow_lite.presets import PRESETS, PROMPT_FIELDS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "examples" / "recipes"
ALPHAS = {"math-base-alpha4.yaml": 4.0, "math-instruct-alpha2.yaml": 2.0, "creative-alpha0.5.yaml": 0.5,
          "qlora-7b.yaml": 4.0}
NAMES = sorted(ALPHAS)
OLD = {"reasoning.yaml": "math-base-alpha4.yaml", "creative.yaml": "creative-alpha0.5.yaml"}  # kept for old links

# One training step, small: what a recipe's own sizes would take minutes for on the CPU
SMALL = ["--max-steps", "1", "--max-new-tokens", "4", "--prompts-per-step", "2", "--samples-per-prompt", "2",
         "--eval-every", "0", "--eval-data", "", "--quant", "none", "--device", "cpu", "--show-every", "0",
         "--save-every", "0"]


def header(path: Path) -> list[str]:
    """The comment lines a file opens with."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]


def test_the_recipes_are_the_papers_settings():
    assert sorted(path.name for path in RECIPES.glob("*.yaml")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_header_says_what_for_how_to_run_whose_values_and_cost(name):
    lines = header(RECIPES / name)
    assert lines[0].startswith("# What for: ")
    assert lines[1] == f"# Run: powerflow train --config examples/recipes/{name} --prompts my_prompts.jsonl"
    for start in ("# From the paper: ", "# Ours: ", "# Learning rate: ", "# Peak memory: "):
        assert sum(line.startswith(start) for line in lines) == 1, start
    assert all(len(line) <= 120 for line in lines)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_parses_and_leaves_the_prompt_field_to_the_file(name):
    path = str(RECIPES / name)
    cfg = resolve_train_config(path, {})
    assert isinstance(cfg, TrainConfig) and cfg == load_config(TrainConfig, path)
    assert cfg.alpha == ALPHAS[name] and cfg.objective == "latb"
    assert cfg.prompt_field == ""  # a preset names its own; a local file's is found by name
    for source in (cfg.prompts, cfg.eval_data):  # what runs without --prompts: a preset or a shipped file
        assert source in PRESETS or (ROOT / source).is_file(), source


@pytest.mark.parametrize("old", sorted(OLD))
def test_the_old_example_files_hold_their_recipes_settings(old):
    as_old, as_recipe = (dataclasses.asdict(load_config(TrainConfig, str(path)))
                         for path in (ROOT / "examples" / old, RECIPES / OLD[old]))
    assert {**as_old, "output": ""} == {**as_recipe, "output": ""}


def test_reasoning_yaml_takes_the_offline_file_it_suggests():
    # it named prompt_field: problem, and examples/prompts/math.jsonl has a "prompt" field
    cfg = resolve_train_config(str(ROOT / "examples" / "reasoning.yaml"),
                               {"prompts": str(ROOT / "examples" / "prompts" / "math.jsonl")})
    rows = load_prompts(cfg.prompts, cfg.prompt_field, cfg.split)
    assert len(rows) == 20 and rows[0]["prompt"].startswith("What is the sum of the first 20")


# every recipe runs, on a file of each usual field name: 6 names over 4 recipes
CASES = [(NAMES[i % len(NAMES)], field) for i, field in enumerate(PROMPT_FIELDS)]


@pytest.mark.parametrize("name, field", CASES)
def test_recipe_trains_one_step_on_a_local_file(name, field, tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "my_prompts.jsonl", [{"id": n, field: text} for n, text in
                                                          enumerate(["What is 2+2?", "Name a color.", "Count."])])
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--config", RECIPES / name, "--model", tiny_model_dir,
                                    "--prompts", prompts, "--output", out, *SMALL])
    assert code == 0, err
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (out / "adapter").iterdir()}
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1] and math.isfinite(rows[0]["loss"])
    saved = read_yaml(str(out / "config.yaml"), TrainConfig)
    recipe = read_yaml(str(RECIPES / name), TrainConfig)
    kept = ("alpha", "objective", "format_penalty", "system_prompt", "lr", "micro_batch_size", "sample_batch_size")
    assert {key: saved[key] for key in kept if key in recipe} == {key: recipe[key] for key in kept if key in recipe}
    assert saved["prompt_field"] == ""


def test_a_file_without_a_usual_field_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "my_prompts.jsonl", [{"id": 1, "body": "What is 2+2?"}])
    code, _, err = run_cli(capsys, ["train", "--config", RECIPES / "math-base-alpha4.yaml", "--model", tiny_model_dir,
                                    "--prompts", prompts, "--output", tmp_path / "run", *SMALL])
    assert code == 2
    assert one_error_line(err) == (f"error: {prompts}:1: no prompt field (looked for {', '.join(PROMPT_FIELDS)}; "
                                   "fields: id, body; pick one with --prompt-field)\n")
    assert not (tmp_path / "run").exists()
