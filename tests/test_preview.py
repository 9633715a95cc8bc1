"""`powerflow preview` and `--alpha auto`: the weights and estimates by hand, against exact p_alpha on an
enumerable model, the CLI's table and files, the training run's recorded choice, and bad input."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import one_error_line, run_cli, write_jsonl

import powerflow_lite.setup as training_setup
from powerflow_lite import preview as preview_module
from powerflow_lite.errors import PowerflowError
from powerflow_lite.preview import (
    Samples,
    choose_alpha,
    cluster_mass,
    estimates,
    majority_accuracy,
    mixture_log_q,
    split_counts,
    weighted_diversity,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def toy_samples() -> Samples:
    """One prompt, three completions: p_base 0.5, 0.3, 0.2; drawn from q = 0.5, 0.25, 0.25."""
    return Samples(log_p=torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log(),
                   log_q=torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64).log(),
                   lengths=torch.tensor([[2.0, 4.0, 6.0]], dtype=torch.float64),
                   truncated=torch.tensor([[False, True, False]]), texts=[["a", "b", "c"]])


def test_mixture_density_by_hand():
    # a completion with q_1 = 0.2 at one temperature and q_2 = 0.6 at the other, drawn 1 and 3 times of 4:
    # q = 1/4 * 0.2 + 3/4 * 0.6 = 0.05 + 0.45 = 0.5
    log_q_each = torch.tensor([[0.2], [0.6]], dtype=torch.float64).log()  # [M=2, 1]
    torch.testing.assert_close(mixture_log_q(log_q_each, [1, 3]), torch.tensor([math.log(0.5)], dtype=torch.float64))
    # a temperature that drew nothing has no part in the mixture
    torch.testing.assert_close(mixture_log_q(log_q_each, [0, 4]), torch.tensor([math.log(0.6)], dtype=torch.float64))
    assert split_counts(32, (1.0, 0.5, 0.25)) == [11, 11, 10]
    assert split_counts(2, (1.0, 0.5, 0.25)) == [1, 1, 0]


def test_estimates_by_hand():
    # alpha 2: w ∝ p^2 / q = 0.25/0.5, 0.09/0.25, 0.04/0.25 = 0.5, 0.36, 0.16 (sum 1.02)
    clusters, correct = torch.tensor([[0, 1, 0]]), torch.tensor([[True, False, False]])
    figures = estimates(toy_samples(), 2.0, clusters, correct, k=1, generator=torch.Generator().manual_seed(0))
    # ESS = (sum w)^2 / sum w^2 = 1.02^2 / (0.25 + 0.1296 + 0.0256) = 1.0404 / 0.4052
    assert figures["ess"] == pytest.approx(1.0404 / 0.4052, rel=1e-9)  # 2.5676
    assert figures["length_mean"] == pytest.approx(3.4 / 1.02, rel=1e-9)  # (0.5*2 + 0.36*4 + 0.16*6) / 1.02
    assert figures["truncated_frac"] == pytest.approx(0.36 / 1.02, rel=1e-9)
    # sum w log p / sum w |y| = (0.5 ln 0.5 + 0.36 ln 0.3 + 0.16 ln 0.2) / 3.4
    expected = (0.5 * math.log(0.5) + 0.36 * math.log(0.3) + 0.16 * math.log(0.2)) / 3.4
    assert figures["base_logp_per_token"] == pytest.approx(expected, rel=1e-9)  # -0.30515
    assert figures["modal_share"] == pytest.approx(0.66 / 1.02, rel=1e-9)  # answer 0 holds 0.5 + 0.16
    assert figures["answered_share"] == pytest.approx(1.0)
    assert figures["avg_at_1"] == pytest.approx(0.66 / 1.02, rel=1e-9)
    # alpha 1 with q = p would be the base itself: every weight 1/3 here only when q is p^alpha's shape
    flat = estimates(Samples(*(toy_samples().log_p,) * 2, toy_samples().lengths, toy_samples().truncated,
                             toy_samples().texts), 1.0)
    assert flat["ess"] == pytest.approx(3.0) and flat["length_mean"] == pytest.approx(4.0)


def test_majority_vote_by_hand():
    # two answers with weights a = 0.66/1.02 (right) and b: maj@3 is right when a is drawn at least twice,
    # a^3 + 3 a^2 b = 0.7143
    a = 0.66 / 1.02
    weights = torch.tensor([[0.5, 0.36, 0.16]], dtype=torch.float64) / 1.02
    clusters, correct = torch.tensor([[0, 1, 0]]), torch.tensor([[True, False, False]])
    found = majority_accuracy(weights, clusters, correct, 3, draws=20000, generator=torch.Generator().manual_seed(0))
    assert float(found) == pytest.approx(a**3 + 3 * a**2 * (1 - a), abs=0.01)
    # k = 2, one of each: the tie goes to the answer drawn first, so maj@2 = a^2 + a b (a first) = a
    found = majority_accuracy(weights, clusters, correct, 2, draws=20000, generator=torch.Generator().manual_seed(0))
    assert float(found) == pytest.approx(a, abs=0.01)
    # completions without an answer do not vote; a set where none votes is wrong: k = 1 -> the right one's weight
    clusters = torch.tensor([[0, -1, -1]])
    found = majority_accuracy(weights, clusters, correct, 1, draws=20000, generator=torch.Generator().manual_seed(0))
    assert float(found) == pytest.approx(0.5 / 1.02, abs=0.01)
    torch.testing.assert_close(cluster_mass(weights, clusters)[0, 0], torch.tensor(0.5 / 1.02, dtype=torch.float64))


def test_weighted_diversity_by_hand():
    # e1 = e2, e3 orthogonal: d12 = 0, d13 = d23 = 100. w = 0.5, 0.25, 0.25:
    # sum_{i != j} w_i w_j d_ij = 2 (0.5*0.25*100 + 0.25*0.25*100) = 37.5; 1 - sum w^2 = 0.625 -> 60
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert weighted_diversity(torch.tensor([0.5, 0.25, 0.25]), embeddings) == pytest.approx(60.0)
    assert math.isnan(weighted_diversity(torch.tensor([1.0, 0.0, 0.0]), embeddings))  # one sample: no pair


def table_of(rows: dict) -> dict:
    return {"alphas": {f"{a:g}": {"ess": ess, "modal_share": modal, "answered_share": 0.9}
                       for a, (ess, modal) in rows.items()}}


def test_auto_rule_picks_where_the_modal_share_stops_rising():
    table = table_of({1.0: (20.0, 0.30), 1.5: (10.0, 0.50), 2.0: (8.0, 0.62), 4.0: (4.0, 0.63), 8.0: (1.2, 0.95)})
    choice = choose_alpha(table)
    # trusted (ESS >= 2, alpha > 1): 1.5, 2, 4 (alpha 8's ESS is 1.2). Gains per doubling: 1.5 -> 2:
    # 0.12 / log2(4/3) = 0.29; 2 -> 4: 0.01 / 1 = 0.01 < 0.05, so the share stops rising after 2
    assert choice["alpha"] == 2.0
    assert "62.0% at alpha 2" in choice["why"] and "+1.0 points per doubling" in choice["why"]
    knee = table_of({1.5: (4.9, 0.660), 2.0: (4.7, 0.749), 4.0: (4.4, 0.855), 8.0: (4.2, 0.903)})
    # 1.5 -> 2: 0.089 / 0.415 = 0.21; 2 -> 4: 0.106; 4 -> 8: 0.048 < 0.05 -> 4
    assert choose_alpha(knee)["alpha"] == 4.0
    rising = table_of({1.5: (10.0, 0.50), 2.0: (8.0, 0.60), 4.0: (4.0, 0.70)})
    assert choose_alpha(rising)["alpha"] == 4.0  # 0.24, then 0.10 per doubling: rising to the end
    silent = {"alphas": {"2": {"ess": 8.0, "modal_share": 0.0, "answered_share": 0.0}}}
    with pytest.raises(PowerflowError, match="states one"):
        choose_alpha(silent)
    with pytest.raises(PowerflowError, match="rests on"):
        choose_alpha(table_of({2.0: (1.1, 0.5), 4.0: (1.0, 0.6)}))


def test_preview_matches_exact_p_alpha_on_an_enumerable_model(tmp_path):
    """The whole estimator (the mixture's sampling, its scoring at every temperature, the weights, the answer
    clusters) against p_alpha summed over every completion: examples/preview_exact.py at one N and seed."""
    spec = importlib.util.spec_from_file_location("preview_exact", EXAMPLES / "preview_exact.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    tolerance = {"length_mean": 0.05, "truncated_frac": 0.03, "base_logp_per_token": 0.02, "modal_share": 0.06}
    for regime in study.REGIMES:
        model, tokenizer, prompt_ids, stop_ids, problem = study.enumerable_problem(tmp_path / "model", regime)
        found = study.preview_figures(model, tokenizer, prompt_ids, stop_ids, 256, seed=0)
        for alpha in study.ALPHAS:
            truth = study.exact_figures(problem, tokenizer, stop_ids, alpha)
            for key, allowed in tolerance.items():
                assert abs(found[alpha][key] - truth[key]) < allowed, (regime, alpha, key, found[alpha][key], truth)
        if regime == "fixed":  # sharpening concentrates p_alpha on one answer, and the preview sees it
            assert found[8.0]["modal_share"] > found[1.0]["modal_share"] + 0.3


@pytest.fixture
def answered_prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "sums.jsonl", [{"prompt": f"What is {a}+{a}?", "answer": str(2 * a)}
                                                 for a in range(3)])


def test_preview_command_prints_every_alpha_and_writes_its_json(tiny_model_dir, answered_prompts, tmp_path, capsys):
    out = tmp_path / "preview.json"
    code, stdout, err = run_cli(capsys, ["preview", "--model", tiny_model_dir, "--prompts", answered_prompts,
                                         "--alphas", "0.5,1,4", "-n", "6", "--max-new-tokens", "6", "-k", "3",
                                         "--json", out])
    assert code == 0, err
    table = json.loads(out.read_text())
    assert list(table["alphas"]) == ["0.5", "1", "4"] and table["prompts"] == 3 and table["candidates"] == 6
    assert table["with_answers"] and table["task"] == "math"  # the rows carry answers
    for alpha, row in table["alphas"].items():
        assert 1.0 <= row["ess"] <= 6.0 + 1e-9 and row["ess_min"] <= row["ess"]
        assert 0.0 <= row["truncated_frac"] <= 1.0 and 1.0 <= row["length_mean"] <= 6.0
        assert 0.0 <= row["avg_at_1"] <= row["modal_share"] + 1e-9 <= 1.0 + 1e-9  # right answers: within the answered
        assert len(row["examples"]) == 2
        assert f"\n│ {alpha.rjust(5)}" in stdout or f"│ {alpha}" in stdout  # its row in the table
    assert "maj@3" in stdout and "samples of p_alpha" in stdout


@pytest.mark.parametrize("flags, says", [
    (["--alphas", ","], "--alphas needs at least 1 number"),
    (["--alphas", "0,1,2"], "--alphas values must be finite and > 0"),
    (["--alphas", "1,x"], "--alphas takes comma-separated numbers"),
    (["-n", "1"], "--candidates must be >= 2"),
    (["--temperatures", "1,0.5,0.25", "-n", "2"], "must be at least the number of --temperatures"),
])
def test_preview_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, answered_prompts, tmp_path, capsys, flags,
                                                          says):
    out = tmp_path / "table.json"
    code, _, err = run_cli(capsys, ["preview", "--model", tiny_model_dir, "--prompts", answered_prompts,
                                    "--json", out, *flags])
    assert code == 2 and says in one_error_line(err)
    assert not out.exists()


def test_preview_without_prompts_or_with_an_existing_json_is_refused(tiny_model_dir, answered_prompts, tmp_path,
                                                                    capsys):
    code, _, err = run_cli(capsys, ["preview", "--model", tiny_model_dir])
    assert code == 2 and "--prompts is required" in one_error_line(err)
    kept = tmp_path / "mine.json"
    kept.write_text("my notes")
    code, _, err = run_cli(capsys, ["preview", "--model", tiny_model_dir, "--prompts", answered_prompts,
                                    "--json", kept])
    assert code == 2 and "exists" in one_error_line(err) and kept.read_text() == "my notes"


def test_train_alpha_auto_records_its_choice_and_resumes_with_it(tiny_model_dir, tmp_path, capsys, monkeypatch):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {a}+1?"} for a in range(4)])
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--prompts", prompts, "--alpha", "auto", "--max-new-tokens", "4",
            "--prompts-per-step", "1", "--samples-per-prompt", "2", "--output", out]
    previews = []
    real = preview_module.preview_model

    def counted(*a, **kw):
        previews.append(kw)
        table = real(*a, **kw)
        for row in table["alphas"].values():  # a random tiny model rarely states an answer: give it agreement
            row["answered_share"], row["modal_share"] = 0.5, min(0.5, 0.1 * float(row["ess"]))
        return table

    monkeypatch.setattr(training_setup, "preview_model", counted)  # what setup calls
    code, stdout, err = run_cli(capsys, [*args, "--max-steps", "1"])
    assert code == 0, err
    saved = json.loads((out / "alpha_preview.json").read_text())
    assert saved["alpha"] in (1.5, 2.0, 4.0, 8.0) and saved["table"]["prompts"] == 4
    assert f"alpha: {saved['alpha']}" in (out / "config.yaml").read_text()  # the run's config holds the choice
    assert f"alpha={saved['alpha']}" in stdout and f"alpha auto: {saved['alpha']:g}" in stdout
    assert len(previews) == 1
    code, stdout, err = run_cli(capsys, [*args, "--max-steps", "2", "--resume"])
    assert code == 0, err
    assert len(previews) == 1  # resumed with the recorded choice, no second preview
    assert f"alpha={saved['alpha']}" in stdout


def test_alpha_auto_on_a_fixed_alpha_run_or_with_junk_is_refused(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", tiny_model_dir, "--prompts", prompts_file, "--max-new-tokens", "4",
            "--prompts-per-step", "1", "--samples-per-prompt", "2", "--output", out]
    assert run_cli(capsys, [*base, "--alpha", "2", "--max-steps", "1"])[0] == 0
    code, _, err = run_cli(capsys, [*base, "--alpha", "auto", "--max-steps", "2", "--resume"])
    assert code == 2 and "not chosen by --alpha auto" in one_error_line(err)
    code, _, err = run_cli(capsys, [*base, "--alpha", "four", "--output", tmp_path / "new"])
    assert code == 2 and "--alpha takes a number or auto" in one_error_line(err)
    assert not (tmp_path / "new").exists()


def test_preview_demo_previews_the_demo_problems_with_their_answers(tiny_model_dir, tmp_path, capsys):
    """--demo fills in the reasoning demo's held-out problems (with answers), its length and k; flags still win
    (a tiny model here: the demo's own SmolLM2 takes minutes)."""
    out = tmp_path / "demo.json"
    code, stdout, err = run_cli(capsys, ["preview", "--demo", "--model", tiny_model_dir, "--limit", "2", "-n", "4",
                                         "--alphas", "1,4", "--max-new-tokens", "4", "--json", out])
    assert code == 0, err
    table = json.loads(out.read_text())
    assert table["prompts"] == 2 and table["with_answers"] and table["k"] == 4  # the demo's k, flags' limit
    assert table["prompts_file"].endswith("arithmetic_eval.jsonl") and "demo: SmolLM2-135M-Instruct" in stdout


def test_preview_of_creative_prompts_reports_diversity_and_no_answers(tiny_model_dir, prompts_file, tmp_path, capsys):
    from test_task_creative import write_tiny_embedder

    embedder = write_tiny_embedder(tmp_path / "embedder")
    out = tmp_path / "creative.json"
    code, stdout, err = run_cli(capsys, ["preview", "--model", tiny_model_dir, "--prompts", prompts_file, "--task",
                                         "creative", "--embedder", embedder, "--alphas", "0.5,1,2", "-n", "6",
                                         "--max-new-tokens", "6", "--json", out])
    assert code == 0, err
    table = json.loads(out.read_text())
    assert table["task"] == "creative" and not table["with_answers"]
    for row in table["alphas"].values():
        assert "modal_share" not in row and "avg_at_1" not in row
        assert 0.0 <= row["diversity"] <= 200.0  # 100 (1 - cosine): 0 for copies, 100 for orthogonal texts
    assert "diversity" in stdout and "--alpha auto would" not in stdout  # auto chooses for answers only
