"""Model cards: every final adapter and merged model has a README.md whose metadata the Hub's own parser reads
(huggingface_hub.ModelCard, offline), with the run's facts and how to sample it as trained."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pytest
import torch
from helpers import config, read_jsonl, write_jsonl
from huggingface_hub import ModelCard
from transformers import AutoTokenizer

from powerflow_lite.checkpoint import save_final_adapter
from powerflow_lite.config import MergeConfig
from powerflow_lite.config_files import ALPHA_PREVIEW, to_yaml
from powerflow_lite.errors import PowerflowError
from powerflow_lite.merge import merge_adapter
from powerflow_lite.model import load_adapter, load_base_model
from powerflow_lite.modelcard import adapter_card, merged_card, run_facts
from powerflow_lite.setup import setup
from powerflow_lite.tiny import write_tiny_model
from powerflow_lite.train import train

SYSTEM = "Answer in one line."


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step run with an eval before and after, and its merged model."""
    root = tmp_path_factory.mktemp("card")
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": "Tell me a story."}, {"prompt": "What is 2+2?"}])
    problems = write_jsonl(root / "problems.jsonl", [{"problem": "What is 1+1?", "answer": "2"}])
    out = root / "run"
    for _ in train(setup(config(tiny_model_dir, prompts, out, max_steps=2, system_prompt=SYSTEM,
                                eval_data=str(problems), eval_every=2, eval_k=2))):
        pass
    merged = merge_adapter(MergeConfig(model=str(tiny_model_dir), adapter=str(out / "adapter"),
                                       output=str(root / "merged")))
    return out, merged


def python_block(text: str) -> str:
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_final_adapter_has_a_card_the_hub_parser_reads(trained, tiny_model_dir):
    out, _ = trained
    card = ModelCard.load(out / "adapter" / "README.md")
    assert card.data.base_model == str(tiny_model_dir)
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"powerflow", "lora", f"base_model:adapter:{tiny_model_dir}"} <= set(card.data.tags)
    assert card.data.to_dict().get("license") is None  # not known, so not claimed
    assert "More Information Needed" not in card.text  # PEFT's template card is replaced
    rows = [row for row in read_jsonl(out / "metrics.jsonl") if row["step"] >= 1]
    tokens = sum(row["sampled_tokens"] for row in rows)  # 2 steps x 2 prompts x 3 completions, up to 6 tokens
    assert len(rows) == 2 and 0 < tokens <= 72
    for line in ("| alpha | 2 |", "| objective | `latb` |", "| steps | 2 |", f"| sampled tokens | {tokens} |"):
        assert line in card.text
    assert card.data.powerflow == {"alpha": 2.0, "objective": "latb", "steps": 2, "sampled_tokens": tokens,
                                   "chat_template": "auto", "system_prompt": SYSTEM, "max_new_tokens": 6}
    recipe = card.text.split("### Recipe", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "max_steps: 2\n" in recipe and "lr: 0.01\n" in recipe
    assert "objective:" not in recipe and "output:" not in recipe  # the default, and where it was written


def test_the_adapter_with_its_card_still_loads_with_peft(trained, tiny_model_dir):
    out, _ = trained
    assert {p.name for p in (out / "adapter").iterdir()} == {"README.md", "adapter_config.json",
                                                             "adapter_model.safetensors", "z_head.safetensors"}
    model = load_adapter(load_base_model(str(tiny_model_dir), "none", torch.device("cpu")), out / "adapter")
    assert any("lora_B" in name and param.abs().sum() > 0 for name, param in model.named_parameters())


def test_the_card_shows_the_eval_before_and_after(trained):
    out, _ = trained
    text = (out / "adapter" / "README.md").read_text()
    summary = json.loads((out / "evals" / "before_after.json").read_text())
    before, after = summary["results"]["before"], summary["results"]["after step 2"]
    row = next(line for line in text.splitlines() if line.startswith("| base log-prob / token |"))
    # -4.78 before, -4.81 after: each to 3 decimals, then the paired change
    assert f"| {before['base_logp_per_token']:.3f} | {after['base_logp_per_token']:.3f} |" in row
    assert "| | before | after step 2 | change |" in text and "| avg@2 |" in text


def test_the_card_says_how_to_sample_it_and_its_code_runs(trained, tiny_model_dir):
    out, _ = trained
    text = (out / "adapter" / "README.md").read_text()
    command = next(line for line in text.splitlines() if line.startswith("powerflow sample"))
    assert f"--model {tiny_model_dir} --adapter {out / 'adapter'} --chat-template auto" in command
    assert f"--system-prompt '{SYSTEM}' --temperature 1 --max-new-tokens 6" in command
    code = python_block(text)
    assert "temperature=1.0, top_k=0, top_p=1.0" in code and json.dumps(SYSTEM) in code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})  # the card's own code samples the adapter
    assert printed.getvalue().strip()


def test_the_card_is_built_from_the_run_files_alone(trained, tmp_path):
    out, _ = trained
    assert adapter_card(out) == (out / "adapter" / "README.md").read_text()  # no clock in it: the same card
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("adapter", "checkpoint-*"))
    (copy / ALPHA_PREVIEW).write_text(json.dumps({"alpha": 2.0, "rule": "the smallest alpha that X",
                                                  "why": "modal-answer share 40.0% at alpha 2", "table": {}}))
    text = adapter_card(copy)
    assert "`--alpha auto` chose alpha 2: modal-answer share 40.0% at alpha 2. The rule: the smallest alpha" in text
    (copy / "evals" / "before_after.json").unlink()
    assert "## Evaluation" not in adapter_card(copy)


def test_the_merged_model_carries_the_card_over(trained, tiny_model_dir):
    out, merged = trained
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == str(tiny_model_dir)
    assert "powerflow" in card.data.tags and "peft" not in card.data.tags
    adapter_text = (out / "adapter" / "README.md").read_text()
    for section in ("## Training", "### Recipe", "## Evaluation before and after training"):
        carried = adapter_text.split(section, 1)[1].split("\n## ", 1)[0]
        assert carried in card.text
    command = next(line for line in card.text.splitlines() if line.startswith("powerflow sample"))
    assert f"--model {merged} --chat-template auto" in command and "--adapter" not in command
    code = python_block(card.text)
    assert "PeftModel" not in code and f'from_pretrained("{merged}")' in code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})
    assert printed.getvalue().strip()


def test_merging_an_adapter_without_a_powerflow_card(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\n\n## Training\nsomeone else's\n")
    text = merged_card(adapter, str(tiny_model_dir), "original", tmp_path / "merged")
    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.base_model == str(tiny_model_dir)
    assert "no powerflow model card" in text and "someone else's" not in text
    (adapter / "README.md").write_text("---\n: not yaml [\n---\n")  # a damaged card: the merge still gets one
    assert ModelCard(merged_card(adapter, str(tiny_model_dir), "nf4", tmp_path / "m")).data.library_name == \
        "transformers"


def test_a_metrics_line_cut_short_and_a_stale_table_are_left_out(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    (out / "evals").mkdir(parents=True)
    (out / "config.yaml").write_text(to_yaml(config(tiny_model_dir, "p.jsonl", out, max_steps=3)))
    rows = [{"step": 0, "eval_avg_at_k": 0.5}, {"step": 1, "sampled_tokens": 10}, {"step": 2, "sampled_tokens": 7},
            {"step": 3, "sampled_tokens": 0, "replayed": 1}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "samp')
    (out / "evals" / "before_after.json").write_text(json.dumps({"steps": 2, "task": "math"}))  # an earlier end
    facts = run_facts(out)
    assert (facts.steps, facts.sampled_tokens, facts.before_after) == (3, 17, None)  # 10 + 7 + 0
    assert re.search(r"^\| sampled tokens \| 17 \|$", adapter_card(out), re.M)


def test_a_card_that_cannot_be_built_leaves_the_old_adapter_whole(tmp_path):
    assert adapter_card(tmp_path) is None  # no run here (no config.yaml): PEFT's own card stays
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"old weights")
    (out / "config.yaml").write_text("alpha: [not a number\n")
    with pytest.raises(PowerflowError, match="not valid YAML"):
        save_final_adapter(out, model=None, head=None)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert not (out / ".adapter.tmp").exists()


def test_a_run_with_its_own_template_file_keeps_it_beside_the_adapter(tmp_path, tmp_path_factory):
    model = write_tiny_model(tmp_path_factory.mktemp("plain") / "model", chat_template=False)
    template = tmp_path / "brackets.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Name a color."}])
    out = tmp_path / "run"
    list(train(setup(config(model, prompts, out, max_steps=1, chat_template=str(template)))))
    kept = out / "adapter" / "chat_template.jinja"
    assert kept.read_text() == template.read_text()
    card = (out / "adapter" / "README.md").read_text()
    assert f"--chat-template {out / 'adapter' / 'chat_template.jinja'}" in card
    assert "the chat template in chat_template.jinja" in card
    merged = tmp_path / "merged"
    merge_adapter(MergeConfig(model=str(model), adapter=str(out / "adapter"), output=str(merged)))
    assert AutoTokenizer.from_pretrained(merged).chat_template == template.read_text()  # the merged model's own now
    assert "--chat-template auto" in (merged / "README.md").read_text()
