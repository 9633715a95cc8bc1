"""The `powerflow` command end to end on a tiny model: the files a run writes, resume, sample, bad input."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from powerflow_lite.cli import main
from powerflow_lite.config import BenchConfig, EvalConfig, MergeConfig, SampleConfig, TrainConfig
from powerflow_lite.config_files import read_yaml
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import METRICS, read_metrics
from powerflow_lite.options import PANELS, flag_name


def train_args(model_dir, prompts_file, output, *extra):
    return ["train", "--model", str(model_dir), "--alpha", "2", "--prompts", str(prompts_file),
            "--output", str(output), "--max-steps", "3", "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "8", "--save-every", "2", "--show-every", "1", "--lr", "1e-2", *extra]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One real NF4 run of 3 steps through the CLI, shared by the tests that read its outputs."""
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Tell me a story."}\n{"prompt": "Name a color."}\n{"prompt": "Count."}\n')
    out = root / "run"
    code = main(train_args(tiny_model_dir, prompts, out, "--quant", "nf4"))
    return code, out, prompts


def test_train_writes_the_output_directory_of_the_design(trained):
    code, out, _ = trained
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "checkpoint-2", "checkpoint-3",
                                               "adapter"}
    for checkpoint in ("checkpoint-2", "checkpoint-3"):
        assert {"adapter_model.safetensors", "adapter_config.json", "z_head.safetensors", "optimizer.safetensors",
                "optimizer.json", "scheduler.json", "trainer_state.json"} <= \
               {p.name for p in (out / checkpoint).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "z_head.safetensors"} <= \
           {p.name for p in (out / "adapter").iterdir()}


def test_metrics_has_one_row_per_step_with_every_documented_key(trained):
    _, out, _ = trained
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    # less a GPU's keys and those of a run with --replay-steps or --explore-temperature
    cpu_keys = set(METRICS) - {"peak_gpu_mem_gib", "replayed", "explored_frac", "behaviour_log_ratio",
                               "estimate_time_sample", "estimate_time_score", "estimate_time_update"}
    assert all(cpu_keys <= set(row) for row in rows)
    assert all(0.1 < row["peak_rss_gib"] < 20 for row in rows)  # torch alone takes a few hundred MiB
    for row in rows:  # real figures, not placeholders
        assert 1 <= row["length_min"] <= row["length_mean"] <= row["length_max"] <= 8
        assert row["base_logp_per_token"] < 0 and row["policy_logp_per_token"] < 0
        assert row["sample_tokens_per_s"] > 0 and row["sampled_tokens"] >= row["length_max"]
        assert "replayed" not in row


def test_saved_config_is_the_resolved_config(trained, tiny_model_dir):
    _, out, prompts = trained
    cfg = TrainConfig(**read_yaml(str(out / "config.yaml"), TrainConfig))
    assert (cfg.model, cfg.alpha, cfg.max_steps, cfg.quant, cfg.lr) == (str(tiny_model_dir), 2.0, 3, "nf4", 1e-2)
    assert cfg.objective == "latb" and cfg.prompts == str(prompts)


def test_final_adapter_loads_with_peft_and_is_trained(trained, tiny_model_dir):
    _, out, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, out / "adapter")(ids).logits
    assert (after - before).abs().max() > 1e-4


def test_existing_output_is_refused_and_untouched(trained, tiny_model_dir, capsys):
    _, out, prompts = trained
    before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(train_args(tiny_model_dir, prompts, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output directory") and err.count("\n") == 1 and "--resume" in err
    assert (out / "metrics.jsonl").read_bytes() == before


def test_resume_continues_at_the_next_step(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, prompts_file, out, "--quant", "none", "--max-steps", "2")) == 0
    capsys.readouterr()
    # only --output, --resume and the new step count: the rest comes from the saved config.yaml
    assert main(["train", "--output", str(out), "--resume", "--max-steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "checkpoint-2" in printed
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 4


def test_plain_progress_lines_when_not_a_terminal(tiny_model_dir, prompts_file, tmp_path, capsys):
    assert main(train_args(tiny_model_dir, prompts_file, tmp_path / "run", "--quant", "none", "--max-steps", "2")) == 0
    out = capsys.readouterr().out
    assert "step 1/2  loss" in out and "step 2/2  loss" in out and "example:" in out
    assert "\x1b[" not in out  # no terminal escape codes in logs


@pytest.mark.parametrize("args, message", [
    (["--alpha", "0"], "--alpha must be > 0"),
    (["--alpha", "-1"], "--alpha must be > 0"),
    (["--alpha", "abc"], "alpha"),
    (["--objective", "dpo"], "--objective 'dpo' is not one of"),
    (["--quant", "int8"], "--quant 'int8' is not one of"),
    (["--top-p", "1.5"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be > 0"),
    (["--bogus-option", "1"], "bogus-option"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--prompts", "/nonexistent/prompts.jsonl"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, prompts_file, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(train_args(tiny_model_dir, prompts_file, out, *args))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_empty_prompt_file_and_bad_config_keys(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(train_args(tiny_model_dir, empty, tmp_path / "a")) == 2
    assert "no prompts" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("alpha: 2\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(config), "--model", str(tiny_model_dir)]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err


def test_flags_override_the_config_file(tiny_model_dir, prompts_file, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\nalpha: 3\nprompts: {prompts_file}\nmax_steps: 50\nquant: none\n"
                      f"max-new-tokens: 4\nprompts-per-step: 1\nsamples-per-prompt: 2\nshow-every: 0\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--max-steps", "1", "--output", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["alpha"], saved["max_steps"], saved["max_new_tokens"]) == (3.0, 1, 4)


def test_every_config_field_is_a_documented_flag(capsys):
    assert main(["train", "--help"]) == 0
    shown = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", capsys.readouterr().out))  # whole flags: --lr is not
    # found inside --lr-schedule
    assert {flag_name(field.name) for field in dataclasses.fields(TrainConfig)} <= shown


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("sample", SampleConfig), ("eval", EvalConfig),
                                          ("merge-adapter", MergeConfig), ("bench", BenchConfig)])
def test_help_shows_each_option_in_its_panel_basics_first(command, cls, capsys):
    # --help at 80 columns: panels in options.PANELS order after the basics ("Options"), each flag whole (not cut
    # to fit) in the panel its field names
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    titles = ["Options"] + [panel for panel in PANELS if any(f.metadata.get("panel") == panel
                                                             for f in dataclasses.fields(cls))]
    starts = [text.index(f"╭─ {title} ") for title in titles]
    assert starts == sorted(starts)
    for f in dataclasses.fields(cls):
        at = re.search(rf"^│ {re.escape(flag_name(f.name))} ", text, flags=re.M).start()
        panel = max(i for i, start in enumerate(starts) if start < at)
        assert titles[panel] == (f.metadata.get("panel") or "Options"), f.name


def test_an_off_switch_turns_off_what_a_config_file_turned_on(tmp_path, capsys, monkeypatch):
    import powerflow_lite.setup as setup_module

    seen = []

    def stop_at_setup(cfg, ranks):
        seen.append(cfg)
        raise PowerflowError("stopped before loading anything")

    monkeypatch.setattr(setup_module, "setup", stop_at_setup)
    config = tmp_path / "c.yaml"
    config.write_text("model: m\nalpha: 2\nprompts: p.jsonl\nignore_eos: true\ngradient_checkpointing: true\n")
    assert main(["train", "--config", str(config), "--no-ignore-eos"]) == 2
    assert main(["train", "--config", str(config), "--no-gradient-checkpointing", "--ignore-eos"]) == 2
    assert [(cfg.ignore_eos, cfg.gradient_checkpointing) for cfg in seen] == [(False, True), (True, False)]
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--ignore-eos", "--no-ignore-eos"]) == 2
    assert "--ignore-eos and --no-ignore-eos contradict each other" in capsys.readouterr().err
    assert len(seen) == 2  # refused before setup


def test_sample_writes_jsonl_with_base_and_adapter_scores(trained, tiny_model_dir, tmp_path, capsys):
    _, out, _ = trained
    target = tmp_path / "samples.jsonl"
    code = main(["sample", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"), "--prompt", "Hi",
                 "-n", "3", "--max-new-tokens", "5", "--out", str(target)])
    assert code == 0
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2]
    for record in records:
        assert record["prompt"] == "Hi" and 1 <= record["tokens"] <= 5
        assert record["finish_reason"] in ("eos", "length") and record["logp"] < 0 and record["logp_base"] < 0
    assert records[0]["completion"] in capsys.readouterr().out
    # an existing --out is refused, not overwritten
    assert main(["sample", "--model", str(tiny_model_dir), "--prompt", "Hi", "--out", str(target)]) == 2
    assert len(target.read_text().splitlines()) == 3


def test_adapter_from_another_base_is_refused(trained, tmp_path, capsys):
    from powerflow_lite.tiny import write_tiny_model

    _, out, _ = trained
    other = write_tiny_model(tmp_path / "other", hidden_size=32)
    assert main(["sample", "--model", str(other), "--adapter", str(out / "adapter"), "--prompt", "Hi"]) == 2
    assert "does not fit this model" in capsys.readouterr().err


def test_merge_adapter_command(trained, tiny_model_dir, tmp_path):
    _, out, _ = trained
    merged = tmp_path / "merged"
    assert main(["merge-adapter", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"),
                 "--output", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()


def test_env_reports_versions_and_4bit(capsys):
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    assert torch.__version__ in printed and "nf4 on cpu" in printed and "trust_remote_code" in printed


def test_console_script_exit_code_and_single_error_line(tmp_path):
    """The installed entry point, as a user runs it: no traceback, exit code 2."""
    result = subprocess.run([sys.executable, "-m", "powerflow_lite", "train", "--model", str(tmp_path / "none"),
                             "--alpha", "0", "--prompts", "p.jsonl"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --alpha must be > 0, got 0.0"


def test_nothing_is_printed_before_the_run_header(tiny_model_dir, prompts_file, tmp_path):
    """A new process, as a user starts it: on the 4-bit path no library notice (bitsandbytes tries to fetch a CPU
    kernel from the hub when it is imported on a CPU with AVX512-BF16) comes before the header, or anywhere on
    stderr."""
    done = subprocess.run([sys.executable, "-m", "powerflow_lite", "train", "--model", str(tiny_model_dir),
                           "--alpha", "2", "--prompts", str(prompts_file), "--output", str(tmp_path / "run"),
                           "--max-steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
                           "--max-new-tokens", "4", "--quant", "nf4", "--show-every", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"powerflow: {tiny_model_dir} (nf4, cpu)")
