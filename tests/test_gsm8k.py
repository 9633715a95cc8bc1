"""GSM8K: answers read off the "#### N" line, the `gsm8k` preset, and eval and training on the shipped sample.

The hub is never reached: `datasets.load_dataset` is faked with
examples/data/gsm8k-sample.jsonl, whose rows have GSM8K's fields and format.
"""

from __future__ import annotations

import json

import pytest
from helpers import DATA, config, read_jsonl, run_cli, write_jsonl

from powerflow_lite.data import load_prompts
from powerflow_lite.metrics import read_metrics
from powerflow_lite.presets import PRESETS
from powerflow_lite.rewards import gsm8k_answer
from powerflow_lite.setup import setup
from powerflow_lite.tasks.math import parse_answer, same_answer
from powerflow_lite.train import train

SAMPLE = DATA / "gsm8k-sample.jsonl"
# The "#### N" of each row of the sample, read off the file by hand ("#### 6,000" is 6000).
SAMPLE_ANSWERS = ["27", "150", "16", "6000", "216", "4", "52", "300", "75", "255"]


@pytest.mark.parametrize("text, answer", [
    ("She has 3 * 4 = <<3*4=12>>12 apples.\n#### 12", "12"),
    ("The total is 1000 + 500 = <<1000+500=1500>>1500.\n#### 1,500", "1500"),  # commas dropped
    ("#### 2,000,000", "2000000"),
    ("Half is 5.\n####   7  \n\n  ", "7"),  # spaces after ####, trailing spaces and blank lines
    ("It falls by 3.\n#### -3", "-3"),
    ("####7", "7"),
    ("so the answer is \\boxed{5}", None),  # no #### line: not GSM8K's format
    ("#### 4\nThen we check it once more.", None),  # #### not on the last line
    ("Step 1 uses #### 4 as a marker.", None),  # #### not at the start of the line
    ("####", None),
    ("#### ,", None),
    ("", None),
])
def test_gsm8k_answer_by_hand(text, answer):
    assert gsm8k_answer(text) == answer


@pytest.mark.parametrize("record, answer", [
    ({"question": "Q", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}, "4"),
    ({"question": "Q", "answer": "A total of\n#### 1,234  \n"}, "1234"),
    ({"problem": "Q", "solution": "It is 9.\n#### 9"}, "9"),  # a solution ending in #### needs no box
    ({"problem": "Q", "solution": "first \\boxed{2}, at last \\boxed{7}."}, "7"),  # unchanged: the last box
    ({"question": "Q", "answer": "42"}, "42"),  # unchanged: the text
    ({"question": "Q", "answer": "x = 3\n4"}, "x = 3\n4"),  # unchanged: no #### line, the text as it is
])
def test_local_answers_read_gsm8k_only_where_the_text_ends_in_hashes(tmp_path, record, answer):
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    assert load_prompts(str(path), answer_field="")[0]["answer"] == answer


def test_named_answer_field_ending_in_hashes_gives_its_number(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q", "worked": "3 + 4 = 7\n#### 7"}])
    assert load_prompts(str(path), answer_field="worked")[0]["answer"] == "7"


def test_no_shipped_answer_has_a_hashes_line():
    # the #### rule must not change the answers any other sample file gives
    for path in sorted(DATA.glob("*.jsonl")):
        if path != SAMPLE:
            assert "####" not in path.read_text(encoding="utf-8"), path


def test_sample_file_gives_the_numeric_answers():
    rows = load_prompts(str(SAMPLE), answer_field="")
    raw = read_jsonl(SAMPLE)
    assert all(set(record) == {"question", "answer"} for record in raw)  # GSM8K's two fields
    assert [row["prompt"] for row in rows] == [record["question"] for record in raw]
    assert [row["answer"] for row in rows] == SAMPLE_ANSWERS


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset returning the sample for openai/gsm8k; records (hub id, configuration, split)."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        assert path == "openai/gsm8k"
        return datasets.Dataset.from_list(read_jsonl(SAMPLE))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_preset_loads_the_main_configuration_and_maps_fields(fake_hub):
    preset = PRESETS["gsm8k"]
    assert (preset.hub_id, preset.config, preset.split, preset.prompt_field, preset.answer_field) == \
        ("openai/gsm8k", "main", "test", "question", "answer")
    rows = load_prompts("gsm8k", answer_field="")
    assert fake_hub == [("openai/gsm8k", "main", "test")]
    assert [row["prompt"] for row in rows] == [record["question"] for record in read_jsonl(SAMPLE)]
    assert [row["answer"] for row in rows] == SAMPLE_ANSWERS


def test_preset_as_training_prompts_takes_the_split_and_no_answers(fake_hub):
    rows = load_prompts("gsm8k", split="train[:6]")
    assert fake_hub == [("openai/gsm8k", "main", "train[:6]")]
    # training reads no answers: the dataset's own "answer" (the worked solution) is kept as it is
    assert [(row["prompt"], row["answer"]) for row in rows] == \
        [(record["question"], record["answer"]) for record in read_jsonl(SAMPLE)]


def test_eval_on_the_sample_grades_against_the_numbers(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, ["eval", "--model", tiny_model_dir, "--data", SAMPLE, "-k", "2",
                                          "--max-new-tokens", "4", "--quant", "none", "--output", out])
    assert (code, err) == (0, "")
    assert "avg@2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["prompts"], summary["skipped_without_answer"]) == ("math", 10, 0)
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["reference"] for s in samples] == [a for a in SAMPLE_ANSWERS for _ in range(2)]


def test_training_on_the_preset_with_the_sample_as_eval_data(fake_hub, tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, "gsm8k", tmp_path / "run", split="train[:4]", max_steps=2, eval_data=str(SAMPLE),
                 eval_every=2, eval_k=2, eval_limit=3, max_new_tokens=4)
    results = list(train(setup(cfg)))
    assert [r.metrics["step"] for r in results] == [0, 1, 2]  # 0: the evaluation before training
    assert fake_hub == [("openai/gsm8k", "main", "train[:4]")]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evaluated = [row for row in rows if "eval_avg_at_k" in row]  # before the first step and after the last
    assert [row["step"] for row in evaluated] == [0, 2]
    assert all(0 <= row["eval_avg_at_k"] <= row["eval_pass_at_k"] <= 1 for row in evaluated)
    assert all("eval_boxed_frac" in row for row in evaluated)  # graded as math: the rows had answers


def test_a_completion_closing_with_gsm8k_s_line_answers_its_number():
    assert same_answer(parse_answer("7", reference=True), parse_answer("She has 3 + 4 = 7 apples.\n#### 7"))
    assert same_answer(parse_answer("1200", reference=True), parse_answer("So 1,200 in all.\n#### 1,200"))
    assert not same_answer(parse_answer("8", reference=True), parse_answer("3 + 4 = 7\n#### 7"))
    # a \boxed{} answer still comes first, and text without the line is read as before
    assert same_answer(parse_answer("5", reference=True), parse_answer("It is \\boxed{5}.\n#### 6"))
    assert parse_answer("I am not sure.") == []
