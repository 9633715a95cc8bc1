"""Several prompt sources in one run (--prompts "a.jsonl:2,b.jsonl:1:500": NAME[:WEIGHT[:CAP]]) and
--max-prompt-tokens: the rows, their weights, the draws a step takes, the run header, and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import config, one_error_line, read_jsonl, run_cli, write_jsonl

from powerflow_lite.data import Source, load_prompts, parse_sources
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.seeds import weighted_prompt_indices
from powerflow_lite.setup import setup
from powerflow_lite.train import train


@pytest.fixture
def sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"Tell me about {n}."} for n in ("cats", "dogs", "owls", "fish")])
    b = write_jsonl(tmp_path / "b.jsonl", [{"problem": f"What is {n} + 1?", "answer": str(n + 1)} for n in range(8)])
    return a, b


def test_the_sources_by_hand():
    assert parse_sources("a.jsonl") == [Source("a.jsonl")]
    assert parse_sources("a.jsonl:2, b.jsonl:0.5:100") == [Source("a.jsonl", 2.0), Source("b.jsonl", 0.5, 100)]
    assert parse_sources("gsm8k:1,numina-cot") == [Source("gsm8k"), Source("numina-cot")]
    for spec, says in (("a.jsonl:-1", "the weight of 'a.jsonl' must be a positive number, got -1"),
                       ("a.jsonl:0", "must be a positive number, got 0"),
                       ("a.jsonl:nan", "must be a positive number, got nan"),
                       ("a.jsonl:1:2.5", "the cap of 'a.jsonl' must be a whole number of rows > 0, got 2.5"),
                       ("a.jsonl:1:0", "must be a whole number of rows > 0, got 0"),
                       ("a.jsonl,,b.jsonl", "a source has no name")):
        with pytest.raises(PowerflowError, match=says.replace("(", r"\(").replace(")", r"\)")):
            parse_sources(spec)


def test_a_mixture_of_two_files_with_weights_and_a_cap(sources):
    a, b = sources
    rows = load_prompts(f"{a}:3,{b}:1:6")
    assert [row["prompt"] for row in rows][:4] == ["Tell me about cats.", "Tell me about dogs.",
                                                   "Tell me about owls.", "Tell me about fish."]
    assert len(rows) == 4 + 6 and rows[4]["prompt"] == "What is 0 + 1?"  # each file's own prompt field, b capped
    assert rows.weights == [3 / 4] * 4 + [1 / 6] * 6  # a source's share of the draws is its weight's share
    assert rows.lines[0] == f"{a}:1" and rows.lines[-1] == f"{b}:6"  # errors name the file
    assert load_prompts(str(a)).weights is None and len(load_prompts(f"{a}:1:2")) == 2  # one source: no weights


def test_weighted_draws_follow_the_weights_and_are_a_function_of_the_step():
    weights = [3 / 4] * 4 + [1 / 6] * 6
    drawn = Counter(i < 4 for step in range(400) for i in weighted_prompt_indices(weights, step, 2, seed=7))
    assert drawn[True] / 800 == pytest.approx(0.75, abs=0.04)  # 3 : 1
    assert weighted_prompt_indices(weights, 5, 4, 7) == weighted_prompt_indices(weights, 5, 4, 7)
    step = weighted_prompt_indices(weights, 5, 4, 7)
    assert len(set(step)) == 4  # no repeats within a step


def test_training_on_two_sources_draws_from_both_and_says_so(sources, tiny_model_dir, tmp_path, capsys):
    a, b = sources
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--prompts", f"{a}:1,{b}:1", "--alpha", 2, "--quant", "none",
            "--max-steps", 3, "--prompts-per-step", 2, "--samples-per-prompt", 2, "--max-new-tokens", 4,
            "--show-every", 0, "--eval-data", b, "--eval-every", 3, "--eval-k", 2, "--output", out]
    code, printed, err = run_cli(capsys, args)
    assert code == 0, err
    assert f"12 prompts (from {a} (weight 1), {b} (weight 1))" in printed
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]


def test_max_prompt_tokens_drops_the_longer_prompts_and_counts_them(sources, tiny_model_dir, tmp_path):
    a, _ = sources
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "Tell me about a very long and winding river."}])
    run = setup(config(tiny_model_dir, f"{a},{long}", tmp_path / "run", max_prompt_tokens=40, max_steps=1))
    lengths = [len(ids) for ids in run.prompt_ids]
    assert len(run.prompts) == 4 and max(lengths) <= 40  # the river prompt is longer once templated
    assert "1 longer than --max-prompt-tokens 40 dropped" in run.info.prompts_note
    assert len(run.prompts.weights) == 4  # the weights follow the rows kept
    next(train(run))
    with pytest.raises(PowerflowError, match="every prompt of .* is longer than --max-prompt-tokens 5"):
        setup(config(tiny_model_dir, str(a), tmp_path / "none", max_prompt_tokens=5))


def test_a_bad_weight_is_one_line_and_writes_nothing(sources, tiny_model_dir, tmp_path, capsys):
    a, b = sources
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", f"{a}:-2,{b}", "--alpha", 2,
                                    "--output", out])
    assert code == 2 and "must be a positive number, got -2" in one_error_line(err) and not out.exists()


# --- several evaluation sets


def test_several_eval_sets_each_with_its_rows_and_table(sources, tiny_model_dir, tmp_path, capsys):
    _, b = sources
    c = write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"Sam has {n} apples.", "answer": f"So.\n#### {n}"}
                                             for n in (3, 7)])
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--prompts", b, "--alpha", 2, "--quant", "none", "--max-steps", 2,
            "--prompts-per-step", 2, "--samples-per-prompt", 2, "--max-new-tokens", 4, "--show-every", 0,
            "--eval-data", f"{b},{c}", "--eval-every", 2, "--eval-k", 2, "--eval-limit", 4, "--output", out]
    code, printed, err = run_cli(capsys, args)
    assert code == 0, err
    rows = read_metrics(out / "metrics.jsonl")
    evaluated = [row for row in rows if "eval_avg_at_k" in row]
    assert [row["step"] for row in evaluated] == [0, 2]
    for row in evaluated:  # the first set keeps the plain keys, a further one has its name before them
        assert "gsm/eval_avg_at_k" in row and "gsm/eval_pass_at_k" in row
    first = json.loads((out / "evals" / "step-2.json").read_text())
    second = json.loads((out / "evals" / "gsm" / "step-2.json").read_text())
    assert first["prompts"] == 4 and first["setting"]["data"] == str(b)
    assert second["prompts"] == 2 and second["setting"]["data"] == str(c)
    assert [s["reference"] for s in read_jsonl(out / "evals" / "gsm" / "step-2.samples.jsonl")][::2] == ["3", "7"]
    assert (out / "evals" / "before_after.json").is_file() and (out / "evals" / "gsm" / "before_after.json").is_file()
    assert printed.count("after step 2") == 2  # a before/after table per set
    assert f"eval data: {c}" in printed
