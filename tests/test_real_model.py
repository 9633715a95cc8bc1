"""examples/real_model.py --quick on a tiny model: the study's plumbing, its paired figures and its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import real_model  # noqa: E402

from powerflow_lite.metrics import mean, stderr  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("real")
    assert real_model.main(["--quick", "--model", str(tiny_model_dir), "--out", str(out), "--keep-work"]) == 0
    return out, json.loads((out / "real_model.json").read_text())


def test_quick_mode_runs_every_part_and_writes_the_report(study):
    out, result = study
    assert (out / "real_model.md").is_file() and (out / "real_model.png").read_bytes()[:4] == b"\x89PNG"
    sharp, flat = result["sharpening"], result["flattening"]
    assert list(sharp["policies"]) == ["base, temperature 1", "base, temperature 0.25", "PowerFlow alpha 4"]
    assert list(flat["policies"]) == ["base, temperature 1", "base, temperature 2", "PowerFlow alpha 0.5"]
    assert sharp["problems"] == 8 and sharp["kinds"] == ["addition", "subtraction"]
    assert flat["prompts"] == 4
    for row in sharp["policies"].values():
        assert len(row["avg_at_k_per_prompt"]) == 8 and 0 <= row["avg_at_k"] <= row["pass_at_k"] <= 1


def test_the_trained_runs_are_evaluated_on_the_held_out_data_before_and_after(study):
    out, result = study
    run = out / "work" / "reasoning-4-0"
    before = json.loads((run / "evals" / "step-0.json").read_text())
    after = json.loads((run / "evals" / "step-3.json").read_text())
    table = result["sharpening"]["policies"]
    assert table["base, temperature 1"]["avg_at_k_per_prompt"] == before["avg_at_k_per_prompt"]
    assert table["PowerFlow alpha 4"]["avg_at_k_per_prompt"] == after["avg_at_k_per_prompt"]
    # the tempered base answered the same problems (the first 8 held out) with samples of its own
    problems = [json.loads(line)["problem"] for line in
                real_model.demo.package_data_path("arithmetic_eval.jsonl").read_text().splitlines()[:8]]
    tempered = [json.loads(line) for line in (out / "work" / "base-T0.25-0" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in tempered[::4]] == problems
    trained = [json.loads(line) for line in (run / "evals" / "step-3.samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in trained[::4]] == problems


def test_changes_are_paired_differences_per_problem(study):
    _, result = study
    for part, keys in (("sharpening", real_model.MATH_KEYS), ("flattening", ("diversity", "base_logp_per_token"))):
        policies = result[part]["policies"]
        reference = policies["base, temperature 1"]
        for row in policies.values():
            for key in keys:
                differences = [a - b for a, b in zip(row[f"{key}_per_prompt"], reference[f"{key}_per_prompt"])]
                assert row["vs base T=1"][key] == pytest.approx({"mean": mean(differences),
                                                                 "stderr": stderr(differences)})


def test_the_markdown_table_shows_the_json_figures(study):
    out, result = study
    lines = (out / "real_model.md").read_text().splitlines()
    split = next(i for i, line in enumerate(lines) if line.startswith("### Flattening"))
    sharpening, flattening = lines[:split], lines[split:]
    for name, row in result["sharpening"]["policies"].items():
        [line] = [line for line in sharpening if line.startswith(f"| {name} |")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:4] == [f"{100 * row[key]:.1f}" for key in real_model.MATH_KEYS]
        assert cells[-2] == f"{row['base_logp_per_token']:.3f}"
        assert cells[-1] == f"{100 * row['avg_at_k_seed_std']:.1f}" and len(row["avg_at_k_per_seed"]) == 1
    for name, row in result["flattening"]["policies"].items():
        [line] = [line for line in flattening if line.startswith(f"| {name} |")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == f"{row['diversity']:.2f}" and cells[3] == f"{row['base_logp_per_token']:.3f}"
    assert "Judge check" in "\n".join(lines)  # the judge is rated for usability, not taken on trust


def test_the_log_z_comparison_trains_with_the_head_in_the_loss_and_reports_its_lag(study):
    out, result = study
    log_z = result["log_z"]
    assert log_z["alpha"] == 4 and list(log_z["policies"]) == ["batch", "head"]
    config = (out / "work" / "reasoning-4-0-log-z-head" / "config.yaml").read_text()
    assert "log_z: head" in config and "log_z: batch" in (out / "work" / "reasoning-4-0" / "config.yaml").read_text()
    rows = [json.loads(line) for line in
            (out / "work" / "reasoning-4-0-log-z-head" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    head = log_z["policies"]["head"]
    assert head["training"]["log_z_gap_abs"] == pytest.approx(mean([abs(r["log_z_gap"]) for r in steps]))
    assert head["training"]["loss_max"] == pytest.approx(max(r["loss"] for r in steps))
    assert log_z["policies"]["batch"]["avg_at_k"] == result["sharpening"]["policies"]["PowerFlow alpha 4"]["avg_at_k"]
    line = next(line for line in (out / "real_model.md").read_text().splitlines() if line.startswith("| head |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == f"{100 * head['avg_at_k']:.1f}"
    assert cells[2] == f"{100 * head['avg_at_k_seed_std']:.1f}"
    assert cells[5] == f"{head['training']['log_z_gap_abs']:.3f}"


def test_report_rewrites_the_tables_from_the_json_alone(study, tmp_path):
    out, _ = study
    (tmp_path / "real_model.json").write_bytes((out / "real_model.json").read_bytes())
    assert real_model.main(["--report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "real_model.md").read_text() == (out / "real_model.md").read_text()
    assert not (tmp_path / "work").exists()  # nothing trained
