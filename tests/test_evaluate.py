"""`powerflow eval` and eval during training: presets and loaders, grades recomputed by hand, --compare-base, errors.

The end-to-end tests use a digit model (vocabulary: pad, im_start, EOS and the
characters 0-9) so that a one-token completion is a single digit and every
grade can be recomputed here without math-verify.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import DATA, one_error_line, read_jsonl, run_cli, write_jsonl

from powerflow_lite.cli import main
from powerflow_lite.display import eval_table
from powerflow_lite.evaluate import paired_changes
from powerflow_lite.metrics import read_metrics, stderr
from powerflow_lite.record import CPU_EVAL_ROWS
from powerflow_lite.seeds import EVAL_SEED_OFFSET
from powerflow_lite.tasks import COMMON_METRICS, TASKS
from powerflow_lite.tiny import write_tiny_model

PROMPTS = ["12", "345", "6789", "0", "55"]  # digits only: every character is a token of the digit model
DIGIT_SETTINGS = ["--quant", "none", "--chat-template", "none", "--system-prompt", ""]


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- end to end on the digit model: every figure recomputed from samples.jsonl


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """Peaky next-token distributions (logit_scale 8), so some digits are far likelier than others."""
    return write_tiny_model(tmp_path_factory.mktemp("digits") / "model", hidden_size=32, num_layers=2, seed=0,
                            chat_template=False, alphabet="0123456789", logit_scale=8.0)


def load_base(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir).get_vocab()


def test_math_eval_grades_and_figures_recomputed(digit_model, tmp_path, capsys):
    # References: the most likely digit after the prompt for the first three prompts (mostly right), the least
    # likely one for the last two (mostly wrong). Computed here with transformers, not with powerflow.
    model, vocab = load_base(digit_model)
    digit_ids = [vocab[d] for d in "0123456789"]
    references = []
    with torch.no_grad():
        for n, prompt in enumerate(PROMPTS):
            probs = model(torch.tensor([[vocab[c] for c in prompt]])).logits[0, -1, digit_ids]
            references.append(str(int(probs.argmax() if n < 3 else probs.argmin())))
    data = write_jsonl(tmp_path / "p.jsonl", [{"problem": p, "answer": a} for p, a in zip(PROMPTS, references)])
    out = tmp_path / "out"
    k = 8
    code, printed, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", data, "-k", k,
                                          "--max-new-tokens", "1", *DIGIT_SETTINGS, "--output", out])
    assert (code, err) == (0, "")
    assert "avg@8" in printed

    samples = read_jsonl(out / "samples.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert [s["prompt"] for s in samples] == [p for p in PROMPTS for _ in range(k)]
    assert [s["sample"] for s in samples] == list(range(k)) * len(PROMPTS)
    for s, reference in zip(samples, [r for r in references for _ in range(k)]):
        assert s["variant"] == "base" and s["reference"] == reference and s["tokens"] == 1
        assert s["correct"] == (s["completion"].strip() == reference), s
        assert s["boxed"] is False
    correct = [s["correct"] for s in samples]
    assert any(correct) and not all(correct)  # the grades below are not all one value

    result = summary["results"]["base"]
    per_prompt = [samples[i * k:(i + 1) * k] for i in range(len(PROMPTS))]
    counts = [sum(s["correct"] for s in group) for group in per_prompt]
    assert result["avg_at_k"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    assert set(result["pass_at"]) == {"1", "2", "4", "8"}
    for j, value in result["pass_at"].items():
        expected = sum(1 - math.comb(k - c, int(j)) / math.comb(k, int(j)) for c in counts) / len(counts)
        assert value == pytest.approx(expected, abs=1e-12), j

    def majority_right(group, reference):  # digits vote; empty completions (EOS, specials) do not
        votes = Counter(s["completion"].strip() for s in group if s["completion"].strip())
        if not votes:
            return False
        top = max(votes.values())
        winner = next(s["completion"].strip() for s in group if votes.get(s["completion"].strip()) == top)
        return winner == reference

    majority = [majority_right(group, reference) for group, reference in zip(per_prompt, references)]
    assert result["maj_at_k"] == pytest.approx(sum(majority) / len(majority), abs=1e-12)
    assert 0 < result["maj_at_k"] < 1  # both outcomes occur, so the vote is really checked
    assert (result["boxed_frac"], result["length_mean"], result["prompts"], result["samples"]) == (0, 1, 5, 40)
    assert result["truncated_frac"] == pytest.approx(sum(s["finish_reason"] == "length" for s in samples) / 40)
    assert (summary["task"], summary["k"], summary["prompts"], summary["skipped_without_answer"]) == ("math", 8, 5, 0)


# --- training runs shared by --compare-base and eval during training

TRAIN_STEPS = 3


def train_args(model_dir, prompts, output, *extra):
    return ["train", "--model", model_dir, "--alpha", "2", "--prompts", prompts, "--output", output,
            "--max-steps", TRAIN_STEPS, "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "3", "--lr", "1e-2", "--warmup-steps", "0", "--save-every", "0", "--show-every", "0",
            "--quant", "none", "--chat-template", "none", *extra]


@pytest.fixture(scope="module")
def runs(digit_model, tmp_path_factory):
    """The same seed twice: with eval every 2 steps and without; returns (problems, eval run, plain run)."""
    root = tmp_path_factory.mktemp("train")
    problems = write_jsonl(root / "problems.jsonl", [{"problem": p, "answer": p[-1]} for p in PROMPTS])
    with_eval, plain = root / "with-eval", root / "plain"
    assert main([str(a) for a in train_args(digit_model, problems, with_eval, "--eval-data", problems,
                                            "--eval-every", "2", "--eval-k", "2", "--eval-limit", "4")]) == 0
    assert main([str(a) for a in train_args(digit_model, problems, plain)]) == 0
    return problems, with_eval, plain


def completion_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Teacher-forced sum of log p(completion token | prompt, earlier completion tokens)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = model(ids).logits[0].float().log_softmax(-1)  # [P+L, V]
    start = len(prompt_ids) - 1  # the position that predicts the first completion token
    return sum(logps[start + t, token].item() for t, token in enumerate(completion_ids))


def test_compare_base_scores_with_the_adapter_off(runs, digit_model, tmp_path, capsys):
    from peft import PeftModel

    problems, _, run = runs
    k = 4
    out, base_out = tmp_path / "compare", tmp_path / "base-only"
    code, printed, err = run_cli(capsys, ["eval", "--run", run, "--data", problems, "-k", k, "--compare-base",
                                          "--output", out])
    assert (code, err) == (0, "")
    header = next(line for line in printed.splitlines() if "base" in line and "adapter" in line)
    assert "change" in header

    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]  # --run filled in the model, adapter and the run's prompt format
    assert (config["model"], config["adapter"]) == (str(digit_model), str(run / "adapter"))
    assert (config["quant"], config["chat_template"], config["system_prompt"], config["max_new_tokens"]) == \
           ("none", "none", "", 3)
    assert list(summary["results"]) == ["base", "adapter"]
    samples = read_jsonl(out / "samples.jsonl")
    base = [s for s in samples if s["variant"] == "base"]
    adapted = [s for s in samples if s["variant"] == "adapter"]
    assert len(base) == len(adapted) == k * len(PROMPTS) and len(samples) == 2 * k * len(PROMPTS)
    assert all("logp_base" not in s for s in base)  # the base's own log-prob is its base score

    # The base variant is what the base model alone samples with the same seed and settings.
    code, _, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", problems, "-k", k,
                                    "--max-new-tokens", "3", *DIGIT_SETTINGS, "--output", base_out])
    assert (code, err) == (0, "")
    alone = read_jsonl(base_out / "samples.jsonl")
    assert [s["completion"] for s in alone] == [s["completion"] for s in base]
    assert [s["logp"] for s in alone] == pytest.approx([s["logp"] for s in base], abs=1e-5)

    # The adapter variant's logp_base is the base model's log-prob of the same text, recomputed here.
    model, vocab = load_base(digit_model)
    adapter_model = PeftModel.from_pretrained(load_base(digit_model)[0], run / "adapter").eval()
    checked = 0
    for s in adapted:
        completion_ids = [vocab[c] for c in s["completion"]] + ([vocab["<|im_end|>"]] if s["finish_reason"] == "eos"
                                                                  else [])
        if len(completion_ids) != s["tokens"]:  # a special token was sampled and dropped from the text
            continue
        prompt_ids = [vocab[c] for c in s["prompt"]]
        assert s["logp_base"] == pytest.approx(completion_logp(model, prompt_ids, completion_ids), abs=1e-4)
        assert s["logp"] == pytest.approx(completion_logp(adapter_model, prompt_ids, completion_ids), abs=1e-4)
        checked += 1
    assert checked >= len(adapted) // 2
    assert max(abs(s["logp"] - s["logp_base"]) for s in adapted) > 1e-3  # the adapter really moved the model


# --- bad input: one error line, exit code 2, nothing written


@pytest.mark.parametrize("extra, message", [
    (["--compare-base"], "--compare-base compares the adapter with the base"),
    (["-k", "0"], "-k must be > 0"),
    (["--task", "creative", "-k", "1"], "needs -k >= 2"),
    (["--data", "/nonexistent/problems.jsonl"], "not found"),
    (["--data", str(DATA / "creative-sample.jsonl"), "--task", "math"], "no row of"),
    (["--data", str(DATA / "math500-sample.jsonl"), "--answer-field", "final"], "math500-sample.jsonl:1: no 'final'"),
    (["--task", "poetry"], "--task 'poetry' is not one of"),
    (["--judge", "/some/judge"], "--judge measures creative samples"),
])
def test_bad_eval_input_is_one_line_and_exit_2(digit_model, tmp_path, capsys, extra, message):
    data = write_jsonl(tmp_path / "p.jsonl", [{"problem": "12", "answer": "3"}])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", data, "-k", "2", "--max-new-tokens",
                                    "1", *DIGIT_SETTINGS, "--output", out, *extra])
    assert code == 2 and message in one_error_line(err)
    assert not out.exists()


def test_run_that_is_not_a_training_output_is_refused(digit_model, tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    code, _, err = run_cli(capsys, ["eval", "--run", tmp_path / "not-a-run", "--data", DATA / "aime25-sample.jsonl",
                                    "--output", tmp_path / "out"])
    assert code == 2 and "--run" in one_error_line(err) and "no config.yaml" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def eval_output(digit_model, tmp_path, capsys):
    """A finished eval output; returns a function that runs eval into it with extra flags."""
    data = write_jsonl(tmp_path / "p.jsonl", [{"problem": p, "answer": "1"} for p in PROMPTS[:2]])
    out = tmp_path / "out"

    def run(*extra):
        return run_cli(capsys, ["eval", "--model", digit_model, "--data", data, "-k", "2", "--max-new-tokens", "2",
                                *DIGIT_SETTINGS, "--output", out, *extra])

    assert run()[0] == 0
    return out, run


def test_existing_eval_output_needs_overwrite_and_is_then_replaced(eval_output):
    out, run = eval_output
    (out / "notes.txt").write_text("the user's")  # not ours: --overwrite must leave it
    before = snapshot(out)
    code, _, err = run("--seed", "7")
    assert code == 2 and "--overwrite" in one_error_line(err)
    assert snapshot(out) == before
    code, _, err = run("--seed", "7", "--overwrite")
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "samples.jsonl", "summary.json"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 7
    assert len(read_jsonl(out / "samples.jsonl")) == 4


def test_overwrite_never_deletes_a_directory_eval_did_not_write(digit_model, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    args = ["eval", "--model", digit_model, "--data", DATA / "aime25-sample.jsonl", "-k", "2", *DIGIT_SETTINGS,
            "--output", precious]
    code, _, err = run_cli(capsys, args)
    assert code == 2 and "already exists" in one_error_line(err)
    code, _, err = run_cli(capsys, [*args, "--overwrite"])
    assert code == 2 and "does not look like a powerflow eval output" in one_error_line(err)
    assert snapshot(precious) == {"thesis.tex": b"years of work"}


def test_output_that_is_a_file_is_refused(digit_model, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("keep")
    code, _, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", DATA / "aime25-sample.jsonl",
                                    *DIGIT_SETTINGS, "--output", target, "--overwrite"])
    assert code == 2 and "not a directory" in one_error_line(err)
    assert target.read_text() == "keep"


# --- eval during training


MATH_EVAL_KEYS = set(TASKS["math"].metrics) | set(COMMON_METRICS)  # what a math eval writes


def test_eval_rows_in_metrics_jsonl(runs):
    _, with_eval, _ = runs
    rows = read_metrics(with_eval / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert MATH_EVAL_KEYS == {"eval_avg_at_k", "eval_pass_at_k", "eval_maj_at_k", "eval_boxed_frac",
                              "eval_length_mean", "eval_truncated_frac", "eval_base_logp_per_token", "time_eval"}
    assert set(rows[0]) == {"step"} | MATH_EVAL_KEYS  # before training: the eval alone
    assert not any(key.startswith("eval_") or key == "time_eval" for key in rows[1])  # 1 is not a multiple of 2
    for row in rows[2:]:  # step 2 (every 2) and step 3 (the last)
        assert MATH_EVAL_KEYS <= set(row) and "loss" in row
        assert not set(row) & {"eval_diversity", "eval_distinct_1", "eval_distinct_2"}
    for row in (rows[0], *rows[2:]):
        assert 0 <= row["eval_avg_at_k"] <= row["eval_pass_at_k"] <= 1
        assert 1 <= row["eval_length_mean"] <= 3 and row["eval_base_logp_per_token"] < 0 and row["time_eval"] > 0


def test_training_is_the_same_with_and_without_eval(runs):
    # evaluating must leave the model in eval mode with its adapter on and the LoRA weights untouched; training's
    # random draws are reseeded from (seed, step) every step, and the eval forks the RNG besides
    _, with_eval, plain = runs
    evaluated = [row for row in read_metrics(with_eval / "metrics.jsonl") if row["step"] > 0]
    reference = read_metrics(plain / "metrics.jsonl")
    assert [row["step"] for row in reference] == [1, 2, 3]
    for key in ("loss", "log_z_mean", "residual_mean", "length_mean", "policy_logp_per_token", "base_logp_per_token",
                "grad_norm"):
        assert [row[key] for row in evaluated] == [row[key] for row in reference], key


def test_step_0_eval_is_what_powerflow_eval_measures_on_the_base(runs, digit_model, tmp_path, capsys):
    """Same prompts, template, k, limit, batch and noise stream: the same samples, so the same figures."""
    problems, with_eval, _ = runs
    saved = yaml.safe_load((with_eval / "config.yaml").read_text())
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, [
        "eval", "--model", digit_model, "--data", problems, "-k", saved["eval_k"], "--limit", saved["eval_limit"],
        "--max-new-tokens", saved["max_new_tokens"], *DIGIT_SETTINGS,
        "--batch-size", max(saved["prompts_per_step"] * saved["samples_per_prompt"], CPU_EVAL_ROWS),  # on the CPU
        "--seed", EVAL_SEED_OFFSET + saved["seed"], "--output", out])
    assert (code, err) == (0, "")
    result = json.loads((out / "summary.json").read_text())["results"]["base"]
    step0 = read_metrics(with_eval / "metrics.jsonl")[0]
    for key in ("avg_at_k", "maj_at_k", "boxed_frac", "length_mean", "truncated_frac"):
        assert step0[f"eval_{key}"] == result[key], key
    assert step0["eval_pass_at_k"] == result["pass_at"][str(saved["eval_k"])]
    assert step0["eval_base_logp_per_token"] == pytest.approx(result["base_logp_per_token"], abs=1e-5)


def test_eval_data_without_eval_every_is_refused(digit_model, tmp_path, capsys):
    problems = write_jsonl(tmp_path / "p.jsonl", [{"problem": "12", "answer": "3"}])
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, train_args(digit_model, problems, out, "--eval-data", problems))
    assert code == 2 and "--eval-every" in one_error_line(err)
    assert not out.exists()


# --- the change column: paired differences over prompts


def test_paired_change_and_its_standard_error_by_hand():
    base = {"avg_at_k_per_prompt": [0.25, 0.5, 0.0, 1.0]}
    adapter = {"avg_at_k_per_prompt": [0.5, 0.5, 0.25, 1.0]}
    # differences 0.25, 0, 0.25, 0: mean 0.125; sample variance = 4 * 0.125^2 / 3 = 1/48; stderr = sqrt(1/48) / 2
    change = paired_changes(base, adapter)
    assert change == {"avg_at_k": {"mean": pytest.approx(0.125), "stderr": pytest.approx(math.sqrt(1 / 48) / 2)}}
    assert stderr([3.0]) == 0.0  # one prompt: no spread to speak of
    assert paired_changes({"diversity_per_prompt": [1.0]}, {}) == {}  # only figures both variants have


def test_table_shows_the_change_with_its_paired_error(capsys):
    summary = {"task": "creative", "data": "d", "k": 4, "prompts": 2, "seconds": 1.0,
               "results": {variant: {"diversity": d, "diversity_stderr": 1.0, "distinct_1": 0.5, "distinct_2": 0.5,
                                     "base_logp_per_token": -3.0, "length_mean": 10.0, "truncated_frac": t}
                           for variant, d, t in (("base", 60.0, 0.5), ("adapter", 63.5, 0.25))},
               "change": {"diversity": {"mean": 3.5, "stderr": 1.25}}}
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(eval_table(summary))
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in console.export_text().splitlines() if line.startswith("│")}
    assert lines["semantic diversity (0-100)"] == ["60.00", "63.50", "+3.50 ± 1.25"]
    assert lines["± std. error over prompts"] == ["1.00", "1.00", ""]
    assert lines["distinct-1"] == ["0.500", "0.500", "0.000"]  # no sign on a zero change
    assert lines["truncated"] == ["50.0%", "25.0%", "-25.0 pts"]


def test_overwrite_keeps_an_input_file_kept_inside_the_output(digit_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    data = write_jsonl(out / "problems.jsonl", [{"problem": "12", "answer": "3"}])
    (out / "summary.json").write_text("{}")  # an earlier eval's
    code, _, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", data, "-k", "2", "--max-new-tokens",
                                    "1", *DIGIT_SETTINGS, "--output", out, "--overwrite"])
    assert (code, err) == (0, "")
    assert read_jsonl(data) == [{"problem": "12", "answer": "3"}]
    assert json.loads((out / "summary.json").read_text())["prompts"] == 1


def test_unreadable_reference_is_refused_before_sampling(digit_model, tmp_path, capsys, monkeypatch):
    import powerflow_lite.evaluate as evaluate

    for loader in ("load_base_model", "load_policy"):  # the judge's and the evaluated model's
        monkeypatch.setattr(evaluate, loader, lambda *a, **k: pytest.fail("the model was loaded"))
    data = write_jsonl(tmp_path / "p.jsonl", [{"problem": "1", "answer": "3"}, {"problem": "2", "answer": "\\text{}"}])
    code, _, err = run_cli(capsys, ["eval", "--model", digit_model, "--data", data, "-k", "2", *DIGIT_SETTINGS,
                                    "--output", tmp_path / "out"])
    assert code == 2 and "cannot read the reference answer" in one_error_line(err) and f"{data}:2:" in err
    assert not (tmp_path / "out").exists()


def test_generate_records_splits_a_prompts_samples_across_batches(digit_model, monkeypatch):
    # -k 5 with batches of 2 rows: no generate call may exceed 2 rows, and every (prompt, sample) comes once, in order
    from dataclasses import replace

    import powerflow_lite.inference as inference
    from powerflow_lite.model import load_tokenizer
    from powerflow_lite.samplers import SAMPLERS
    from powerflow_lite.samplers.rollouts import SamplingSettings

    sizes = []
    real_sample = SAMPLERS["static"].sample  # the sampler auto picks on the CPU
    def counted(m, t, prompts, g, s, uniforms=None):
        return sizes.append(len(prompts) * g) or real_sample(m, t, prompts, g, s, uniforms=uniforms)

    monkeypatch.setitem(SAMPLERS, "static", replace(SAMPLERS["static"], sample=counted))
    records = list(inference.generate_records(load_base(digit_model)[0], load_tokenizer(digit_model), [[3, 4], [5]], 5,
                                              SamplingSettings(1), rows_per_batch=2))
    assert sizes == [2, 2, 2, 2, 2]
    assert [(r["prompt_index"], r["sample"]) for r in records] == [(p, s) for p in (0, 1) for s in range(5)]


def test_a_resume_with_other_eval_settings_says_why_there_is_no_before_after(digit_model, tmp_path, capsys):
    # the per-problem pairs of two evals measured differently would not match: no table, a line that says why
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    problems = write_jsonl(tmp_path / "problems.jsonl", [{"problem": p, "answer": p[-1]} for p in PROMPTS])
    out = tmp_path / "run"
    assert main([str(a) for a in train_args(digit_model, prompts, out, "--max-steps", "1", "--save-every", "1")]) == 0
    code, printed, err = run_cli(capsys, train_args(digit_model, prompts, out, "--resume", "--max-steps", "2",
                                                    "--eval-data", problems, "--eval-every", "1"))
    assert code == 0, err
    assert "no before/after table: this run has no eval before training" in printed
    assert "read only to grade" not in printed  # the line printed under a before/after table
    assert not (out / "evals" / "before_after.json").exists() and (out / "evals" / "step-2.json").is_file()
    # begun with eval k = 2, resumed with k = 3: the settings differ
    other = tmp_path / "other"
    assert main([str(a) for a in train_args(digit_model, prompts, other, "--max-steps", "1", "--save-every", "1",
                                            "--eval-data", problems, "--eval-every", "1", "--eval-k", "2")]) == 0
    capsys.readouterr()
    code, printed, err = run_cli(capsys, train_args(digit_model, prompts, other, "--resume", "--max-steps", "2",
                                                    "--eval-k", "3"))
    assert code == 0, err
    assert "measured with other settings" in printed and "'k': 3" in printed and "'k': 2" in printed
    summary = json.loads((other / "evals" / "before_after.json").read_text())  # the one from the first invocation
    assert summary["steps"] == 1


def test_eval_tempered_puts_the_base_at_temperature_one_over_alpha_in_the_before_after_table(digit_model, tmp_path,
                                                                                            capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    problems = write_jsonl(tmp_path / "problems.jsonl", [{"problem": p, "answer": p[-1]} for p in PROMPTS])
    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, train_args(digit_model, prompts, out, "--max-steps", "1", "--eval-data",
                                                    problems, "--eval-every", "1", "--eval-tempered"))
    assert code == 0, err
    folder = out / "evals"
    tempered = json.loads((folder / "step-0-tempered.json").read_text())
    assert tempered["setting"]["temperature"] == 0.5  # 1 / alpha 2
    summary = json.loads((folder / "before_after.json").read_text())
    assert list(summary["results"]) == ["before", "base, T = 0.5", "after step 1"]
    # the change from the tempered base: the paired per-problem differences of the two evals' own figures
    after = summary["results"]["after step 1"]
    expected = [a - b for a, b in zip(after["avg_at_k_per_prompt"], tempered["avg_at_k_per_prompt"])]
    assert summary["change_vs"]["change"]["avg_at_k"]["mean"] == pytest.approx(sum(expected) / len(expected))
    assert "vs T = 0.5" in printed  # a column of the change from the tempered base
    # and it is no row of metrics.jsonl: the curves have one eval at step 0, the base at temperature 1
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl") if "eval_avg_at_k" in row] == [0, 1]


def test_creative_before_after_has_the_base_at_eval_temperature_and_two_samples_of_each(digit_model, tmp_path,
                                                                                          capsys):
    """The creative demo's plumbing on a tiny model (the default embedder, an installed package, reads its text)."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, train_args(digit_model, prompts, out, "--max-steps", "1", "--eval-data",
                                                    prompts, "--eval-every", "1", "--eval-task", "creative",
                                                    "--eval-k", "3", "--eval-tempered",
                                                    "--eval-temperature", "1.5"))
    assert code == 0, err
    folder = out / "evals"
    assert json.loads((folder / "step-0-tempered.json").read_text())["setting"]["temperature"] == 1.5  # not 1/alpha
    summary = json.loads((folder / "before_after.json").read_text())
    assert list(summary["results"]) == ["before", "base, T = 1.5", "after step 1"]
    for name, step in (("before", "0"), ("base, T = 1.5", "0-tempered"), ("after step 1", "1")):
        first = [r for r in read_jsonl(folder / f"step-{step}.samples.jsonl") if r["prompt_index"] == 0]
        assert summary["samples"][name] == {"prompt": PROMPTS[0], "completions": [r["completion"] for r in first[:2]]}
    shown = printed[printed.index("samples for the first eval prompt, '12':"):].splitlines()
    assert [line.split(":")[0].strip() for line in shown[1:7]] == ["before"] * 2 + ["base, T = 1.5"] * 2 + [
        "after step 1"] * 2
    assert "English words" in printed  # the fluency row of the creative table
