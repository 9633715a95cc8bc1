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


REPLAY = Path(__file__).resolve().parents[1] / "examples" / "replay_exact.py"


@pytest.fixture(scope="module")
def replay_module(study_module):
    spec = importlib.util.spec_from_file_location("replay_exact", REPLAY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_study_reads_tokens_and_attainment_off_the_curves(replay_module):
    # on-policy: 300 tokens to KL 0.2 (from 1.0); replay: KL 0.25 at 100 tokens, 0.2 at 150, 0.1 at 200
    problem = [2.0, "fixed", "x8", "two"]
    runs = [{"problem": problem, "setting": "on-policy", "target": "alpha", "seconds": 1.0,
             "curve": [(0, 0, 1.0), (10, 100, 0.6), (20, 200, 0.3), (30, 300, 0.2)]},
            {"problem": problem, "setting": "K=2", "target": "alpha", "seconds": 1.0,
             "curve": [(0, 0, 1.0), (10, 100, 0.25), (20, 150, 0.2), (30, 200, 0.1)]}]
    on, replay = replay_module.summarise(runs, {(2.0, "fixed", "x8", "two", "alpha"): 0.15})
    assert on["tokens_ratio"] == 300 / 300 and replay["tokens_ratio"] == 300 / 150  # first reached at 150 tokens
    assert replay["floor"] == 0.1  # lowered to what a run passed through
    # a third of on-policy's 300 tokens is 100: replay's KL there is 0.25, on-policy's 0.6
    assert replay["attained_third"] == pytest.approx((1.0 - 0.25) / (1.0 - 0.1))
    assert on["attained_third"] == pytest.approx((1.0 - 0.6) / (1.0 - 0.1))
    assert replay["attained_end"] == pytest.approx(1.0) and replay["sampled_tokens"] == 200
    table = replay_module.markdown([on, replay], 30)
    assert "| 2.0x |" in table and "| 100.0% / 83.3% |" in table
