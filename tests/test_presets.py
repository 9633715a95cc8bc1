"""Dataset presets (hub id, split, fields) and the local loaders `powerflow eval` reads problems with.

The hub is never reached: `datasets.load_dataset` is faked with the sample files
under examples/data, which carry exactly the fields of the datasets they imitate.
"""

from __future__ import annotations

import json

import pytest
from helpers import DATA, one_error_line, read_jsonl, run_cli, write_jsonl

from powerflow_lite.data import load_prompts
from powerflow_lite.errors import PowerflowError
from powerflow_lite.evaluate import load_eval_set
from powerflow_lite.tasks.math import MATH_SYSTEM_PROMPT
from powerflow_lite.tiny import build_tokenizer

# --- presets: the hub id, split and fields of each, with datasets.load_dataset faked by the sample files

PRESET_CASES = {  # preset: (sample file, hub id, split, prompt field)
    "math500": ("math500-sample.jsonl", "HuggingFaceH4/MATH-500", "test", "problem"),
    "aime25": ("aime25-sample.jsonl", "math-ai/aime25", "test", "problem"),
    "amc23": ("amc23-sample.jsonl", "math-ai/amc23", "test", "question"),
    "numina-cot": ("numina-cot-sample.jsonl", "AI-MO/NuminaMath-CoT", "train", "problem"),
}
# The last \boxed{...} of each worked solution in numina-cot-sample.jsonl, read off the file by hand.
NUMINA_ANSWERS = ["3", "155", "8", "14", "-3", "25\\pi", "62", "8\\sqrt{2}"]


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset returning the sample file of the hub id asked for; records every call."""
    import datasets

    files = {hub_id: DATA / sample for sample, hub_id, _, _ in PRESET_CASES.values()}
    calls = []

    def load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return datasets.Dataset.from_list(read_jsonl(files[name]))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("preset", list(PRESET_CASES))
def test_preset_loads_its_hub_dataset_and_maps_fields(fake_hub, preset):
    sample, hub_id, split, prompt_field = PRESET_CASES[preset]
    raw = read_jsonl(DATA / sample)
    rows = load_prompts(preset, answer_field="")
    assert fake_hub == [(hub_id, split)]
    assert [row["prompt"] for row in rows] == [record[prompt_field] for record in raw]
    if preset == "numina-cot":
        assert [row["answer"] for row in rows] == NUMINA_ANSWERS
    else:
        assert [row["answer"] for row in rows] == [str(record["answer"]) for record in raw]
    assert all(set(record) <= set(row) for record, row in zip(raw, rows))  # the dataset's own fields are kept


def test_amc23_float_answer_is_written_out(fake_hub):
    assert read_jsonl(DATA / "amc23-sample.jsonl")[0]["answer"] == 3.0  # the hub's type: a float
    assert load_prompts("amc23", answer_field="")[0]["answer"] == "3.0"


def test_explicit_split_wins_over_the_presets(fake_hub):
    load_prompts("math500", split="test[:3]", answer_field="")
    load_prompts("numina-cot", split="train[:18000]")
    assert fake_hub == [("HuggingFaceH4/MATH-500", "test[:3]"), ("AI-MO/NuminaMath-CoT", "train[:18000]")]


def test_eval_cli_reads_a_preset_through_the_hub(fake_hub, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, ["eval", "--model", tiny_model_dir, "--data", "amc23", "--split", "test[:5]",
                                    "-k", "1", "--max-new-tokens", "2", "--quant", "none", "--output", out])
    assert (code, err) == (0, "")
    assert fake_hub == [("math-ai/amc23", "test[:5]")]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["prompts"]) == ("math", 5)  # answers found, so task auto is math
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["reference"] for s in samples] == ["3.0", "22.0", "12.0", "60.0", "5.0"]
    assert samples[0]["prompt"] == read_jsonl(DATA / "amc23-sample.jsonl")[0]["question"]


def test_unreachable_hub_dataset_is_one_error_line(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import datasets

    def offline(name, split=None, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, _, err = run_cli(capsys, ["eval", "--model", tiny_model_dir, "--data", "math500", "--quant", "none",
                                    "--output", tmp_path / "out"])
    assert code == 2 and "'HuggingFaceH4/MATH-500' is neither a prompt file nor a reachable dataset" in \
        one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_preset_without_answer_field_gives_prompts_only(fake_hub):
    """Training reads a preset for its prompts: no answer key is added."""
    rows = load_prompts("numina-cot")
    assert len(rows) == 8 and all("answer" not in row for row in rows)


# --- local files


def test_jsonl_csv_and_parquet_math_samples_give_the_same_pairs():
    pairs = {}
    for name in ("math500-sample.jsonl", "math-sample.csv", "math-sample.parquet"):
        rows = load_prompts(str(DATA / name), answer_field="")
        pairs[name] = [(row["prompt"], row["answer"]) for row in rows]
    assert len(pairs["math500-sample.jsonl"]) == 12
    assert pairs["math-sample.csv"] == pairs["math500-sample.jsonl"]
    assert pairs["math-sample.parquet"] == pairs["math500-sample.jsonl"]
    assert pairs["math500-sample.jsonl"][2] == ("What is $\\frac{1}{2} + \\frac{1}{4}$?", "\\frac{3}{4}")


@pytest.mark.parametrize("record, prompt, answer", [
    ({"prompt": "P", "problem": "X", "answer": "1", "solution": "\\boxed{2}"}, "P", "1"),  # first of each list
    ({"problem": "X", "solution": "first \\boxed{\\frac{1}{2}}, at last \\boxed{7}."}, "X", "7"),  # last boxed
    ({"problem": "X", "solution": "\\boxed{\\frac{1}{2}}"}, "X", "\\frac{1}{2}"),  # braces balanced
    ({"question": "Q", "answer": 5}, "Q", "5"),
    ({"question": "Q", "answer": "  -2 "}, "Q", "-2"),
    ({"question": "Q"}, "Q", None),  # no answer field at all
    ({"question": "Q", "answer": ""}, "Q", None),
    ({"question": "Q", "solution": "no box here"}, "Q", None),
])
def test_prompt_and_answer_fields_are_detected(tmp_path, record, prompt, answer):
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    [row] = load_prompts(str(path), answer_field="")
    assert (row["prompt"], row["answer"]) == (prompt, answer)


def test_named_answer_field_wins_over_detection(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "X", "answer": "1", "final": "2"}])
    assert load_prompts(str(path), answer_field="final")[0]["answer"] == "2"


def test_missing_named_answer_field_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"problem": "A", "final": "1"}) + "\n\n" + json.dumps({"problem": "B"}) + "\n")
    with pytest.raises(PowerflowError) as caught:
        load_prompts(str(path), answer_field="final")
    assert str(caught.value).startswith(f"{path}:3: no 'final' field")  # line 3: the blank line 2 counts


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_tokenizer(chat_template=True)


@pytest.mark.parametrize("name, task, rows", [
    ("math500-sample.jsonl", "math", 12), ("aime25-sample.jsonl", "math", 5), ("amc23-sample.jsonl", "math", 5),
    ("math-sample.csv", "math", 12), ("math-sample.parquet", "math", 12), ("numina-cot-sample.jsonl", "math", 8),
    ("creative-sample.jsonl", "creative", 8),
])
def test_task_auto_follows_the_reference_answers(chat_tokenizer, name, task, rows):
    eval_set = load_eval_set(str(DATA / name), chat_tokenizer, None)
    assert (eval_set.task, eval_set.skipped, len(eval_set.rows), len(eval_set.prompt_ids)) == (task, 0, rows, rows)
    rendered = chat_tokenizer.decode(eval_set.prompt_ids[0])
    # system prompt auto: the paper's for math, none for creative writing
    assert (MATH_SYSTEM_PROMPT in rendered) == (task == "math")
    assert eval_set.rows[0]["prompt"] in rendered


def test_math_rows_without_answer_are_skipped_and_counted(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "A", "answer": "1"}, {"problem": "B", "answer": None},
                                              {"problem": "C", "answer": "3"}, {"problem": "D", "answer": ""}])
    eval_set = load_eval_set(str(path), chat_tokenizer, None, limit=1)
    assert (eval_set.task, eval_set.skipped) == ("math", 2)
    assert [(row["prompt"], row["answer"]) for row in eval_set.rows] == [("A", "1")]  # limit after skipping
