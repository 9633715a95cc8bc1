"""Failure paths through the CLI: one `error:` line, exit code 2, and nothing a user has is lost or half-written."""

import json
import shutil

import pytest
import yaml

from powerflow_lite.cli import main
from powerflow_lite.metrics import read_metrics


def args(model_dir, prompts_file, output, *extra):
    return ["train", "--model", str(model_dir), "--alpha", "2", "--prompts", str(prompts_file), "--output",
            str(output), "--max-steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "6", "--save-every", "1", "--show-every", "0", "--quant", "none", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Tell me a story."}\n{"prompt": "Name a color."}\n')
    assert main(args(tiny_model_dir, prompts, root / "run")) == 0
    return root / "run", prompts


def copy_run(finished_run, tmp_path):
    run, prompts = finished_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", prompts


def test_overwrite_keeps_the_old_run_when_the_new_one_is_invalid(finished_run, tiny_model_dir, tmp_path, capsys):
    run, prompts = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    code = main(args(tiny_model_dir, prompts, run, "--overwrite", "--lora-targets", "nonexistent_proj"))
    assert code == 2 and "--lora-targets" in one_error_line(capsys)
    assert snapshot(run) == before


def test_saved_config_never_says_overwrite(finished_run, tiny_model_dir, tmp_path):
    run, prompts = copy_run(finished_run, tmp_path)
    assert main(args(tiny_model_dir, prompts, run, "--overwrite", "--max-steps", "1")) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["overwrite"], saved["resume"], saved["max_steps"]) == (False, False, 1)


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('no answer')", "RuntimeError: no answer"),
    ("return 'high'", "ValueError"),
    ("return float('nan')", "returned nan"),
])
def test_a_failing_format_penalty_is_named(tiny_model_dir, prompts_file, tmp_path, capsys, body, message):
    (tmp_path / "mine.py").write_text(f"def psi(completion, prompt):\n    {body}\n")
    code = main(args(tiny_model_dir, prompts_file, tmp_path / "run", "--format-penalty",
                     f"{tmp_path / 'mine.py'}:psi"))
    err = one_error_line(capsys)
    assert code == 2 and "--format-penalty" in err and message in err
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.parametrize("extra, message", [
    (["--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--seed", str(2**40)], "--seed must be < 2**32"),
])
def test_non_finite_and_out_of_range_numbers(tiny_model_dir, prompts_file, tmp_path, capsys, extra, message):
    assert main(args(tiny_model_dir, prompts_file, tmp_path / "run", *extra)) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_no_arguments_asks_for_the_model_first(capsys):
    assert main(["train"]) == 2
    assert "--model is required" in one_error_line(capsys)


def test_resume_survives_a_metrics_line_cut_by_a_crash(finished_run, tmp_path):
    run, _ = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoint-2")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 1.2')  # killed mid-write
    assert main(["train", "--output", str(run), "--resume"]) == 0
    assert [row["step"] for row in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_resume_with_another_lora_rank_is_refused(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    assert main(["train", "--output", str(run), "--resume", "--lora-r", "8", "--max-steps", "3"]) == 2
    assert "does not match" in one_error_line(capsys)


def test_resume_from_finds_its_run_and_refuses_to_overwrite_newer_checkpoints(finished_run, tmp_path, capsys):
    run, _ = copy_run(finished_run, tmp_path)
    assert main(["train", "--resume-from", str(run / "checkpoint-1")]) == 2  # --output comes from the path
    assert "checkpoint-2 would be overwritten" in one_error_line(capsys)
    shutil.move(run / "checkpoint-2", tmp_path / "kept-checkpoint-2")
    assert main(["train", "--resume-from", str(run / "checkpoint-1"), "--max-steps", "3"]) == 0
    assert [row["step"] for row in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_uses_the_new_learning_rate(finished_run, tmp_path):
    run, _ = copy_run(finished_run, tmp_path)
    assert main(["train", "--output", str(run), "--resume", "--max-steps", "3", "--lr", "1e-6",
                 "--lr-schedule", "constant", "--warmup-steps", "0"]) == 0
    assert read_metrics(run / "metrics.jsonl")[-1]["lr"] == pytest.approx(1e-6)


def test_a_flag_switches_off_what_the_config_file_switched_on(tiny_model_dir, prompts_file, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("ignore_eos: true\n")
    out = tmp_path / "run"
    assert main(args(tiny_model_dir, prompts_file, out, "--config", str(config), "--no-ignore-eos",
                     "--max-steps", "1")) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["ignore_eos"] is False


def test_model_directory_without_tokenizer(tiny_model_dir, prompts_file, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, model / name)
    assert main(args(model, prompts_file, tmp_path / "run")) == 2
    assert "tokenizer" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_chat_template_that_rejects_a_system_prompt(tiny_model_dir, prompts_file, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert main(args(model, prompts_file, tmp_path / "run", "--system-prompt", "Be brief.")) == 2
    assert "drop --system-prompt" in one_error_line(capsys)


def test_sample_leaves_no_file_when_it_fails(tmp_path, capsys):
    target = tmp_path / "samples.jsonl"
    assert main(["sample", "--model", str(tmp_path / "missing"), "--prompt", "Hi", "--out", str(target)]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert not target.exists()


def test_merge_with_a_bad_adapter_creates_nothing(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "new-parent" / "merged"
    assert main(["merge-adapter", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "nope"),
                 "--output", str(output)]) == 2
    assert "not an adapter directory" in one_error_line(capsys)
    assert not (tmp_path / "new-parent").exists()


def test_prompt_longer_than_the_context_names_its_line(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "x" * 600}) + "\n")
    assert main(args(tiny_model_dir, prompts, tmp_path / "run")) == 2
    assert f"{prompts}:2: the prompt is 619 tokens" in one_error_line(capsys)  # 600 x + the chat template; context 512


def test_max_new_tokens_that_fill_the_context_are_named(tiny_model_dir, prompts_file, tmp_path, capsys):
    assert main(args(tiny_model_dir, prompts_file, tmp_path / "run", "--max-new-tokens", "512")) == 2
    assert "--max-new-tokens 512 leaves no room for a prompt in the model's context of 512" in one_error_line(capsys)
