"""examples/exact_alpha.py, the study, run for a few steps: the table agrees with its own curves."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

STUDY = Path(__file__).resolve().parents[1] / "examples" / "exact_alpha.py"


@pytest.fixture(scope="module")
def study_module():
    spec = importlib.util.spec_from_file_location("exact_alpha", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["exact_alpha"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # the study runs on one thread (its workers are processes): not the tests after it


def test_quick_study_writes_a_consistent_table(study_module, tmp_path, capsys):
    assert study_module.main(["--quick", "--steps", "6", "--floor-steps", "6", "--workers", "1",
                              "--out", str(tmp_path)]) == 0
    study = json.loads((tmp_path / "exact_alpha.json").read_text())
    rows, curves = study["rows"], study["curves"]
    assert [(r["objective"], r["regime"]) for r in rows] == [
        ("latb", "fixed"), ("tb-traj", "fixed"), ("latb", "eos"), ("tb-traj", "eos")]
    for row, curve in zip(rows, curves):
        column = 2 if row["target"] == "latb" else 1
        points = curve["curve"]
        assert [p[0] for p in points] == [0, 6]
        assert row["kl_start"] == points[0][column] and row["kl_end"] == points[-1][column]
        assert row["kl_floor"] <= min(p[column] for p in points)  # the floor is never above what a run reached
        assert math.isclose(row["attained"], (row["kl_start"] - row["kl_end"]) / (row["kl_start"] - row["kl_floor"]))
    # latb's target differs from p_alpha only where lengths vary
    assert [r["target"] for r in rows] == ["alpha", "alpha", "latb", "alpha"]
    assert math.isclose(rows[0]["length_trained"], 3.0, rel_tol=1e-6) and rows[2]["length_base"] < 2.99
    table = (tmp_path / "exact_alpha.md").read_text()
    assert table.count("\n") == 2 + len(rows) and table in capsys.readouterr().out
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "exact_alpha.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
