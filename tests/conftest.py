"""Shared fixtures: a tiny random Qwen2 model directory and small prompt files, built in code."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import settings

from powerflow_lite.tiny import write_tiny_model

# CI draws the same examples on every run (a red run must be reproducible); elsewhere each run explores anew.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, hidden-64 Qwen2 with a character tokenizer and a ChatML template (read-only: do not modify)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Tell me a story.", "id": 1}, {"prompt": "What is 2+2?", "id": 2},
            {"prompt": "Name a color.", "id": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
