"""Prompt loading (every file format, errors that point at the line), per-step order, rendering and encoding."""

from __future__ import annotations

import json

import pytest

from powerflow_lite.data import encode_prompt, load_prompts, render_prompt, uses_chat_template
from powerflow_lite.errors import PowerflowError
from powerflow_lite.model import load_tokenizer
from powerflow_lite.presets import PROMPT_FIELDS
from powerflow_lite.seeds import prompt_indices


@pytest.fixture
def tokenizer(tiny_model_dir):
    """A fresh load each test, so a test may drop the chat template without affecting others."""
    return load_tokenizer(str(tiny_model_dir))


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- loading each format


def test_jsonl_keeps_other_fields_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "Hi.", "id": 7}), "", "   ",
                                              json.dumps({"prompt": "Bye.", "tags": ["a"]})])
    assert load_prompts(str(path)) == [{"prompt": "Hi.", "id": 7}, {"prompt": "Bye.", "tags": ["a"]}]


def test_jsonl_other_field_is_copied_to_prompt(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"question": "2+2?", "answer": "4"})])
    assert load_prompts(str(path), field="question") == [{"question": "2+2?", "answer": "4", "prompt": "2+2?"}]


def test_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "One."}, {"prompt": "Two.", "id": 2}]))
    assert load_prompts(str(path)) == [{"prompt": "One."}, {"prompt": "Two.", "id": 2}]


def test_json_that_is_not_a_list_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "One."}))
    with pytest.raises(PowerflowError, match="list of objects"):
        load_prompts(str(path))


def test_csv_with_another_column(tmp_path):
    path = write_lines(tmp_path / "p.csv", ["id,question", "1,What is 3*3?", "2,\"Name a prime, please.\""])
    rows = load_prompts(str(path), field="question")
    # csv gives every cell as a string; the comma inside quotes stays in the text
    assert rows == [{"id": "1", "question": "What is 3*3?", "prompt": "What is 3*3?"},
                    {"id": "2", "question": "Name a prime, please.", "prompt": "Name a prime, please."}]


def test_csv_empty_cell_names_its_file_line(tmp_path):
    # line 1 is the header, so the second data row is line 3
    path = write_lines(tmp_path / "p.csv", ["id,question", "1,ok", "2,"])
    with pytest.raises(PowerflowError) as err:
        load_prompts(str(path), field="question")
    assert f"{path}:3:" in str(err.value)


def test_csv_rows_are_numbered_by_the_line_they_start_on(tmp_path):
    # a byte-order mark (Excel) before the header, a quoted cell over lines 2-4, a blank line 5, a short row 6
    path = tmp_path / "p.csv"
    path.write_text('\ufeffprompt,answer\n"one\ntwo\nthree",1\n\nfour\n', encoding="utf-8")
    rows = load_prompts(str(path))
    assert rows == [{"prompt": "one\ntwo\nthree", "answer": "1"}, {"prompt": "four", "answer": None}]
    assert rows.lines == [2, 6]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"problem": ["Solve x+1=2.", "Solve 2x=6."], "level": [1, 2]}), path)
    assert load_prompts(str(path), field="problem") == [
        {"problem": "Solve x+1=2.", "level": 1, "prompt": "Solve x+1=2."},
        {"problem": "Solve 2x=6.", "level": 2, "prompt": "Solve 2x=6."},
    ]


def test_txt_one_prompt_per_line(tmp_path):
    path = write_lines(tmp_path / "p.txt", ["First prompt.", "", "Second: with a colon."])
    assert load_prompts(str(path)) == [{"prompt": "First prompt."}, {"prompt": "Second: with a colon."}]


# --- errors name the file and the 1-based line (blank lines count)


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"text": "no prompt key"}), "no 'prompt' field"),
    (json.dumps({"prompt": "   "}), "non-empty string"),
    (json.dumps({"prompt": 3}), "non-empty string"),
    (json.dumps(["a", "list"]), "expected an object"),
])
def test_jsonl_error_names_path_and_line(tmp_path, bad_line, message):
    # line 1 good, line 2 blank, line 3 bad: the blank line still counts
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "Fine."}), "", bad_line])
    with pytest.raises(PowerflowError) as err:
        load_prompts(str(path))
    assert f"{path}:3:" in str(err.value)
    assert message in str(err.value)


def test_missing_field_lists_the_fields_there_are(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"body": "Q", "answer": "A"})])
    with pytest.raises(PowerflowError) as err:
        load_prompts(str(path))
    assert str(err.value) == (f"{path}:1: no prompt field (looked for prompt, problem, question, instruction, input, "
                              "text, messages; fields: body, answer; pick one with --prompt-field)")


def test_prompt_field_is_found_when_not_named(tmp_path):
    # no "prompt" field: "problem" comes before "question" in the order tried
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"question": "Q", "problem": "P"})])
    assert load_prompts(str(path))[0]["prompt"] == "P"
    assert load_prompts(str(path), field="question")[0]["prompt"] == "Q"


@pytest.mark.parametrize("name", PROMPT_FIELDS)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_each_usual_prompt_field_is_found(tmp_path, name, suffix):
    path = tmp_path / f"p{suffix}"
    if suffix == ".jsonl":
        write_lines(path, [json.dumps({"id": 1, name: "First?"}), json.dumps({"id": 2, name: "Second?"})])
    else:
        write_lines(path, [f"id,{name}", "1,First?", "2,Second?"])
    assert [row["prompt"] for row in load_prompts(str(path))] == ["First?", "Second?"]


def test_usual_fields_are_tried_in_their_documented_order(tmp_path):
    # each row holds every later name too: the earliest name present wins (Alpaca: instruction, not its input)
    for first, name in enumerate(PROMPT_FIELDS):
        row = {other: other.upper() for other in reversed(PROMPT_FIELDS[first:])}
        path = write_lines(tmp_path / f"{name}.jsonl", [json.dumps(row)])
        assert load_prompts(str(path))[0]["prompt"] == name.upper()


def test_a_named_field_stays_strict(tmp_path):
    # --prompt-field problem on a file with a "prompt" column: an error naming the fields, not a silent fallback
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "Q", "answer": "A"})])
    with pytest.raises(PowerflowError) as err:
        load_prompts(str(path), field="problem")
    assert str(err.value) == f"{path}:1: no 'problem' field (fields: prompt, answer; pick one with --prompt-field)"


def test_detection_reads_the_first_row_and_later_rows_must_agree(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"question": "Q1"}), json.dumps({"problem": "P2"})])
    with pytest.raises(PowerflowError, match=r":2: no 'question' field \(fields: problem;"):
        load_prompts(str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(PowerflowError, match="not found") as err:
        load_prompts(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name, text", [("p.jsonl", ""), ("p.jsonl", "\n  \n"), ("p.txt", "\n\n"), ("p.json", "[]")])
def test_empty_file_has_no_prompts(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PowerflowError, match="no prompts") as err:
        load_prompts(str(path))
    assert str(path) in str(err.value)


def test_unreachable_hub_dataset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = "powerflow-lite-tests/no-such-dataset"
    with pytest.raises(PowerflowError, match="neither a prompt file nor a reachable dataset") as err:
        load_prompts(name)
    assert name in str(err.value)


# --- prompt order


def order(num_prompts, steps, per_step, seed):
    """The prompts of steps 0..steps-1, concatenated."""
    return [i for step in range(steps) for i in prompt_indices(num_prompts, step, per_step, seed)]


def test_each_epoch_is_a_permutation():
    # 5 prompts, 3 per step, 10 steps = 30 positions = 6 whole epochs (steps straddle epoch boundaries)
    sequence = order(5, 10, 3, seed=1)
    for epoch in range(6):
        assert sorted(sequence[epoch * 5:(epoch + 1) * 5]) == [0, 1, 2, 3, 4]


def test_epochs_are_shuffled_differently():
    sequence = order(20, 4, 10, seed=0)  # two epochs of 20
    assert sequence[:20] != sequence[20:]


def test_order_is_deterministic_per_seed():
    assert order(10, 5, 4, seed=3) == order(10, 5, 4, seed=3)
    # 10! orderings per epoch: two seeds agreeing on all three epochs would be a broken seed
    assert order(10, 5, 6, seed=3) != order(10, 5, 6, seed=4)


@pytest.mark.parametrize("per_step", [1, 3, 7])
def test_step_is_a_slice_of_one_sequence(per_step):
    # the sequence does not depend on per_step: step s takes positions s*per_step .. (s+1)*per_step - 1
    sequence = order(5, 30, 1, seed=2)
    for step in range(30 // per_step):
        assert prompt_indices(5, step, per_step, 2) == sequence[step * per_step:(step + 1) * per_step]


# --- rendering and encoding


def test_render_with_chat_template(tokenizer):
    expected = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"  # ChatML, see tiny.py
    assert render_prompt(tokenizer, "What is 2+2?") == expected
    assert uses_chat_template(tokenizer, "auto")


def test_render_with_chat_template_and_system_prompt(tokenizer):
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(tokenizer, "What is 2+2?", system_prompt="Be brief.") == expected


def test_render_template_turned_off(tokenizer):
    assert render_prompt(tokenizer, "Hi.", chat_template="none") == "Hi."
    assert render_prompt(tokenizer, "Hi.", chat_template="none", system_prompt="Sys.") == "Sys.\n\nHi."
    assert not uses_chat_template(tokenizer, "none")


def test_render_without_a_template(tokenizer):
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, "Hi.") == "Hi."
    assert render_prompt(tokenizer, "Hi.", system_prompt="Sys.") == "Sys.\n\nHi."
    assert not uses_chat_template(tokenizer, "auto")


def test_encode_round_trips_spacing(tokenizer):
    text = "Two  spaces,\nnew line\n\n and  a\ttab."
    assert tokenizer.decode(encode_prompt(tokenizer, text, chat_template_used=False)) == text


def test_encode_rendered_chat_prompt_round_trips(tokenizer):
    rendered = render_prompt(tokenizer, "Line one\n  line  two", system_prompt="Sys  prompt")
    ids = encode_prompt(tokenizer, rendered, chat_template_used=True)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # the template's own first token, nothing before
    assert tokenizer.decode(ids) == rendered


def test_chat_stop_ids_find_the_end_of_turn_token(tiny_model_dir):
    """A base model's EOS is often <|endoftext|> while its chat template closes turns with <|im_end|>."""
    from powerflow_lite.data import chat_stop_ids

    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.eos_token = "<|endoftext|>"
    assert chat_stop_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert chat_stop_ids(tokenizer, "none") == []  # raw-text prompts: no chat turns to end
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no special turn end
    assert chat_stop_ids(tokenizer) == []
    tokenizer.chat_template = None
    assert chat_stop_ids(tokenizer) == []


def test_answer_field_is_found_in_any_row_and_missing_answers_are_none(tmp_path):
    # the first row has no answer: the field still comes from the rows that do
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"problem": "A"}), json.dumps({"problem": "B", "answer": 2}),
                                              json.dumps({"problem": "C", "answer": None})])
    assert [row["answer"] for row in load_prompts(str(path), answer_field="")] == [None, "2", None]
    with pytest.raises(PowerflowError, match=r"p.jsonl:1: no 'answer' field"):
        load_prompts(str(path), answer_field="answer")  # a field named by the user must be in every row
