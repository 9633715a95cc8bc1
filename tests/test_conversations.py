"""Conversational prompt rows (TRL's `messages`, or a `prompt` list of {role, content}) rendered by the chat
template with the generation prompt, a row's own system message over --system-prompt, --chat-template FILE for a
model without a template, and their bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from helpers import config, one_error_line, read_jsonl, run_cli, write_jsonl

from powerflow_lite.data import load_prompts, prompt_input, render_prompt
from powerflow_lite.errors import PowerflowError
from powerflow_lite.setup import setup
from powerflow_lite.tiny import build_tokenizer, write_tiny_model
from powerflow_lite.train import train

# a template of our own, unlike ChatML, so that a test sees which one rendered
BRACKETS = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
TURNS = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."},
         {"role": "user", "content": "Another."}]


@pytest.fixture
def conversations(tmp_path):
    return write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": TURNS, "id": 1},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a fruit."}]},
        {"messages": [{"role": "user", "content": "Name a tree."}]}])


def test_rows_keep_the_conversation_and_show_its_last_user_turn(conversations, tmp_path):
    rows = load_prompts(str(conversations))
    assert [row["prompt"] for row in rows] == ["Another.", "Name a fruit.", "Name a tree."]
    assert prompt_input(rows[0]) == TURNS and rows[0]["id"] == 1
    trl = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": TURNS}])  # TRL's prompt-only conversational format
    assert prompt_input(load_prompts(str(trl))[0]) == TURNS
    assert prompt_input({"prompt": "plain"}) == "plain"


def test_rendered_by_the_template_with_the_generation_prompt():
    tokenizer = build_tokenizer()  # ChatML (tiny.py)
    assert render_prompt(tokenizer, TURNS) == ("<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
                                               "Red.<|im_end|>\n<|im_start|>user\nAnother.<|im_end|>\n"
                                               "<|im_start|>assistant\n")
    own = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi."}]
    # the row's own system message wins; --system-prompt fills in where a row has none
    assert render_prompt(tokenizer, own, system_prompt="Be long.").startswith("<|im_start|>system\nBe terse.")
    assert render_prompt(tokenizer, TURNS[2:], system_prompt="Be long.").startswith("<|im_start|>system\nBe long.")


def test_a_template_file_for_a_model_without_one(tmp_path):
    template = tmp_path / "brackets.jinja"
    template.write_text(BRACKETS)
    tokenizer = build_tokenizer(chat_template=False)
    assert render_prompt(tokenizer, TURNS, str(template), "Sys.") == (
        "[system] Sys.\n[user] Name a color.\n[assistant] Red.\n[user] Another.\n[assistant] ")
    assert render_prompt(tokenizer, "Hi.", str(template)) == "[user] Hi.\n[assistant] "  # plain prompts too
    with pytest.raises(PowerflowError, match="there is none here"):
        render_prompt(tokenizer, TURNS)  # a conversation and no template: refused, not flattened


@pytest.mark.parametrize("messages, says", [
    ([{"role": "system", "content": "Be terse."}], "the conversation has no user turn"),
    ([{"role": "narrator", "content": "Once."}, {"role": "user", "content": "Hi."}], "unknown role 'narrator'"),
    ([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}],
     "the conversation must end with a non-empty user turn"),
    ([{"role": "user"}], "each message must be an object with a role and a text content"),
    ([], "the conversation has no user turn"),
])
def test_a_bad_conversation_is_one_line_naming_its_line(tmp_path, tiny_model_dir, capsys, messages, says):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "Fine."}]},
                                                {"messages": messages}])
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", data, "--alpha", 2,
                                    "--output", out])
    assert code == 2 and f"bad.jsonl:2: 'messages': {says}" in one_error_line(err)
    assert not out.exists()


def test_a_template_that_fails_or_is_missing_is_one_line(tmp_path, tiny_model_dir, conversations, capsys):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ raise_exception('this template takes no system turn') }}")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", conversations, "--alpha", 2,
                                    "--chat-template", broken, "--output", out])
    assert code == 2 and f"--chat-template {broken} failed to render" in one_error_line(err)
    assert "this template takes no system turn" in err and not out.exists()
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", conversations, "--alpha", 2,
                                    "--chat-template", tmp_path / "nowhere.jinja", "--output", out])
    assert code == 2 and "is neither auto nor none nor a file" in one_error_line(err)


def test_train_and_evaluate_on_conversations(tmp_path, tmp_path_factory, conversations):
    template = tmp_path / "brackets.jinja"
    template.write_text(BRACKETS)
    model = write_tiny_model(tmp_path_factory.mktemp("plain") / "model", chat_template=False)
    problems = write_jsonl(tmp_path / "problems.jsonl", [
        {"messages": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2 + 2?"}],
         "answer": "4"}])
    run = setup(config(model, conversations, tmp_path / "run", max_steps=2, chat_template=str(template),
                       eval_data=str(problems), eval_every=2, eval_k=2))
    rendered = run.tokenizer.decode(run.prompt_ids[1])
    assert rendered.startswith("[system] Be terse.\n[user] Name a fruit.") and rendered.endswith("[assistant] ")
    results = list(train(run))
    assert [r.step for r in results] == [0, 1, 2] and "eval_avg_at_k" in results[-1].metrics
    samples = read_jsonl(tmp_path / "run" / "evals" / "step-2.samples.jsonl")
    assert [s["prompt"] for s in samples][::2] == ["What is 1 + 1?", "2 + 2?"]
    assert json.loads((tmp_path / "run" / "evals" / "step-2.json").read_text())["prompts"] == 2
