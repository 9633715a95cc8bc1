"""Bad input through the CLI, as a matrix: one `error: ` line, exit code 2, no traceback, and nothing written.

"Nothing written" is checked on the whole temporary tree, the working directory
included: no output appears, and a previous run in --output keeps every file
byte for byte. The invalid option values are generated from the config
dataclasses (config.py), so a new int, float or choice field gets its cases
without a new test; `test_every_field_is_classified` makes a new text or range
field say what is invalid about it. Most cases fail before any model loads.

    python -m pytest tests/test_bad_input.py -q --durations=10
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import one_error_line, read_jsonl, run_cli, write_jsonl
from safetensors.torch import load_file

from powerflow_lite.cli import main
from powerflow_lite.config import EvalConfig, MergeConfig, SampleConfig, TrainConfig
from powerflow_lite.config_files import field_type
from powerflow_lite.options import flag_name
from powerflow_lite.tiny import write_tiny_model

COMMANDS = {"train": TrainConfig, "sample": SampleConfig, "merge-adapter": MergeConfig, "eval": EvalConfig}
TINY_TRAIN = ["--max-steps", "1", "--max-new-tokens", "4", "--prompts-per-step", "1", "--samples-per-prompt", "2",
              "--quant", "none", "--show-every", "0"]
ROWS = [{"prompt": "What is 1+1?", "answer": "2"}, {"prompt": "Name a color.", "answer": "red"}]

# --- what is invalid about each field: the spec the matrix is generated from

POSITIVE = ("alpha", "temperature", "lr", "z_lr", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "lora_r",
            "lora_alpha", "max_steps", "z_hidden", "micro_batch_size", "inner_epochs", "max_bad_steps", "n", "k",
            "batch_size", "replay_size", "explore_temperature")
NON_NEGATIVE = ("min_new_tokens", "warmup_steps", "weight_decay", "max_grad_norm", "save_every", "show_every",
                "eval_every", "eval_limit", "limit", "sample_batch_size", "keep_checkpoints", "truncation_penalty",
                "replay_steps", "replay_window", "replay_lr_scale")
OUT_OF_RANGE = {
    **{name: ("0", "-1") for name in POSITIVE},
    **{name: ("-1",) for name in NON_NEGATIVE},
    "eval_k": ("0",),
    "seed": ("-1", str(2**64)),  # torch seeds are 64-bit; train takes < 2**32
    "top_p": ("0", "1.5"),  # (0, 1]
    "lora_dropout": ("-0.1", "1"),  # [0, 1)
    "clip_eps": ("-0.1", "1"),  # [0, 1)
    "replay_best": ("-0.1", "1.5"),  # [0, 1]
    "explore_fraction": ("0", "1.5"),  # (0, 1]
    "power_alpha": ("0", "-1"),
    "candidates": ("0", "-1"),
    "proposal_temperature": ("-1",),  # 0: 1 / --power-alpha
    "mcmc_steps": ("-1",),
    "block_tokens": ("-1",),  # 0: --max-new-tokens / 16
    "particles": ("0", "-1"),
    "ess_threshold": ("0", "1.5"),  # (0, 1]
    "alpha_ramp_tokens": ("-1",),  # 0: no ramp
    "max_prompt_tokens": ("-1",),  # 0: keep every prompt
    "eval_temperature": ("-1",),  # 0: 1/alpha
}
BAD_TEXT = {  # a text field's bad value, and what its error must name
    "device": ("tpu", "--device"),
    "format_penalty": ("no_such_penalty", "--format-penalty"),
    "lora_targets": ("no_such_proj", "--lora-targets"),  # known only once the model is loaded
    "eval_data": ("math500", "--eval-data"),  # without --eval-every
    "run": ("/nonexistent/run", "--run"),
    "embedder": ("/nonexistent/embedder", "--embedder"),  # the eval data here is math
    "judge": ("/nonexistent/judge", "--judge"),
    "report_to": ("tensorbored", "--report-to"),
    "init_adapter": ("/nonexistent/adapter", "--init-adapter"),
}
ANY_TEXT = {  # fields that take any string: why there is no bad value to try
    "model": "any directory or hub id; broken model directories are their own cases",
    "prompts": "a file, preset or dataset; broken prompt files are their own cases",
    "data": "a file, preset or dataset; broken prompt files are their own cases",
    "prompt": "free text; too long for the context is its own case",
    "system_prompt": "free text",
    "prompt_field": "any column name; a missing one is test_data.py's",
    "answer_field": "any column name; a missing one is test_data.py's",
    "split": "any dataset split name",
    "output": "any path; unwritable ones are their own cases",
    "out": "any path; unwritable ones are their own cases",
    "adapter": "any path; an adapter from another base is its own case",
    "resume_from": "any path; checked against --output in test_cli_errors.py",
}
ON_OFF = "an on/off flag takes no value; a non-bool in YAML is a YAML case"

def option_cases(states: dict[str, tuple[str, ...]]) -> list:
    """(command, state, flag, value, what the error names) for every field of every command in `states`.

    A state is where the command runs: "fresh" (no output yet), "overwrite" (over a previous run, with
    --overwrite) or "resume" (continuing the previous run from its config.yaml).
    """
    cases = []
    for command, cls in COMMANDS.items():
        for f in dataclasses.fields(cls):
            kind, flag = field_type(cls, f.name), flag_name(f.name)
            values = {int: ["abc", "1.5"], float: ["abc", "nan", "inf", "-inf"]}.get(kind, [])
            values += ["no-such-choice"] if f.metadata.get("choices") else []
            values += OUT_OF_RANGE.get(f.name, ())
            named = [(value, flag) for value in values] + ([BAD_TEXT[f.name]] if f.name in BAD_TEXT else [])
            skip = ON_OFF if kind is bool else ANY_TEXT.get(f.name) if not named else None
            for state in states.get(command, ()):
                if skip and state == "fresh":  # listed once per field, whatever the states
                    cases.append(pytest.param(command, state, flag, "", "", id=f"{command}-{state} {flag}",
                                              marks=pytest.mark.skip(reason=skip)))
                for value, name in named[:1] if state == "resume" else named:  # resume: one bad value per field
                    cases.append(pytest.param(command, state, flag, value, name,
                                              id=f"{command}-{state} {flag} {value}"))
    return cases


def test_every_field_is_classified():
    """A new field must say what is invalid about it: a range, a bad text, or why any text will do."""
    for cls in COMMANDS.values():
        for f in dataclasses.fields(cls):
            kind = field_type(cls, f.name)
            if kind in (int, float):
                assert f.name in OUT_OF_RANGE, f"{cls.__name__}.{f.name}: add its range to OUT_OF_RANGE"
            elif kind is str and not f.metadata.get("choices"):
                assert f.name in BAD_TEXT or f.name in ANY_TEXT, f"{cls.__name__}.{f.name}: add to BAD_TEXT or ANY_TEXT"


# --- the workspace: a valid command line per command, whose only fault is the one a test adds


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A finished 1-step run (config.yaml, metrics.jsonl, checkpoint-1, adapter), shared: copy it to change it."""
    root = tmp_path_factory.mktemp("trained")
    prompts = write_jsonl(root / "prompts.jsonl", ROWS)
    args = ["train", "--model", tiny_model_dir, "--alpha", "2", "--prompts", prompts, "--output", root / "run"]
    assert main([str(a) for a in args + TINY_TRAIN]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def other_base(tmp_path_factory):
    """A tiny model of another hidden size: no adapter or checkpoint of the shared run fits it."""
    return write_tiny_model(tmp_path_factory.mktemp("other") / "model", hidden_size=32)


@pytest.fixture
def space(tmp_path, monkeypatch, tiny_model_dir, trained):
    """tmp_path as the working directory, with a prompt file (rows with answers, so eval grades them as math)."""
    monkeypatch.chdir(tmp_path)
    return SimpleNamespace(root=tmp_path, model=tiny_model_dir, run=trained, adapter=trained / "adapter",
                           prompts=write_jsonl(tmp_path / "prompts.jsonl", ROWS))


def command_line(space, command: str, model=None, prompts=None) -> list:
    """A valid, tiny `command` that would write under space.root; `prompts` replaces its prompt source."""
    model = model or space.model
    if command == "train":
        return ["train", "--model", model, "--alpha", "2", "--prompts", prompts or space.prompts,
                "--output", space.root / "run", *TINY_TRAIN]
    if command == "sample":
        source = ["--prompts", prompts] if prompts else ["--prompt", "Hi"]
        return ["sample", "--model", model, *source, "--out", space.root / "samples.jsonl", "--max-new-tokens", "4",
                "--quant", "none"]
    if command == "merge-adapter":
        return ["merge-adapter", "--model", model, "--adapter", space.adapter, "--output", space.root / "merged"]
    return ["eval", "--model", model, "--data", prompts or space.prompts, "--output", space.root / "eval",
            "--max-new-tokens", "4", "-k", "2", "--quant", "none"]


def previous_run(space, command: str) -> list[str]:
    """Put an earlier run where `command` writes; returns the flags that would replace or continue it."""
    if command == "train":
        shutil.copytree(space.run, space.root / "run")
    elif command == "merge-adapter":
        (space.root / "merged").mkdir()
        (space.root / "merged" / "config.json").write_text("{}")
        (space.root / "merged" / "model.safetensors").write_bytes(b"an earlier merge")
    elif command == "eval":
        (space.root / "eval").mkdir()
        write_jsonl(space.root / "eval" / "samples.jsonl", [{"variant": "base", "completion": "2"}])
        (space.root / "eval" / "summary.json").write_text('{"task": "math"}\n')
    return ["--overwrite"]


def tree(root: Path) -> dict[str, str]:
    """Every directory and file (by content hash) under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(capsys, args, root: Path, *names) -> str:
    """Exit 2 with one `error:` line that names each of `names`; nothing under root written, changed or removed."""
    before = tree(root)
    code, _, err = run_cli(capsys, args)
    assert code == 2, err
    one_error_line(err)
    for name in names:
        assert str(name) in err, f"{name!r} not named in {err!r}"
    assert tree(root) == before
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model weights are loaded: the input should have been refused before that."""
    from transformers import AutoModelForCausalLM

    def loaded(*args, **kwargs):
        raise AssertionError("model weights were loaded before the bad input was refused")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", loaded)


# --- every option's invalid values: on a fresh output, over a previous run (--overwrite), resuming one


@pytest.mark.parametrize("command, state, flag, value, name", option_cases(
    {"train": ("fresh", "overwrite", "resume"), "sample": ("fresh",), "merge-adapter": ("fresh", "overwrite"),
     "eval": ("fresh", "overwrite")}))
def test_invalid_option_value(space, capsys, command, state, flag, value, name):
    args = command_line(space, command)
    if state == "overwrite":
        args += previous_run(space, command)
    if state == "resume":
        previous_run(space, command)
        args = ["train", "--output", space.root / "run", "--resume"]  # the rest from the run's config.yaml
    refused(capsys, args + [flag, value], space.root, name)


CROSS_FIELD = [
    ("train", ["--min-new-tokens", "9", "--max-new-tokens", "8"], "--min-new-tokens"),
    ("train", ["--sampler", "static", "--top-p", "0.9"], "--top-p"),
    ("train", ["--objective", "rl-traj", "--samples-per-prompt", "1"], "--samples-per-prompt"),
    ("train", ["--log-z", "batch", "--samples-per-prompt", "1"], "--samples-per-prompt"),
    ("train", ["--eval-every", "2"], "--eval-data"),
    ("train", ["--eval-data", "math500", "--eval-every", "1", "--eval-task", "creative", "--eval-k", "1"], "--eval-k"),
    ("sample", ["--prompts", "prompts.jsonl"], "--prompt"),
    ("sample", ["--min-new-tokens", "9", "--max-new-tokens", "8"], "--min-new-tokens"),
    ("eval", ["--compare-base"], "--compare-base"),
    ("eval", ["--task", "creative", "-k", "1"], "-k"),
]


@pytest.mark.parametrize("command, extra, name", CROSS_FIELD)
def test_options_that_contradict_each_other(space, capsys, command, extra, name):
    refused(capsys, command_line(space, command) + extra, space.root, name)


# --- the YAML file of --config: a wrong type for every field, unknown keys

WRONG_TYPE = {int: "ten", float: "fast", bool: "maybe", str: "[1, 2]"}


def yaml_cases() -> list:
    cases = []
    for command, cls, foreign in (("train", TrainConfig, "adapter"), ("eval", EvalConfig, "alpha")):
        for f in dataclasses.fields(cls):
            text = f"{f.name}: {WRONG_TYPE[field_type(cls, f.name)]}\n"
            cases.append(pytest.param(command, text, f"'{f.name}'", id=f"{command} {text.strip()}"))
        for key in ("learning_rate", "max-step", foreign):  # a typo, a kebab typo, another command's option
            cases.append(pytest.param(command, f"{key}: 1\n", f"unknown key '{key}'", id=f"{command} unknown {key}"))
    return cases


@pytest.mark.parametrize("command, text, name", yaml_cases())
def test_bad_config_file(space, capsys, command, text, name):
    config = space.root / "config.yaml"
    config.write_text(text)
    refused(capsys, command_line(space, command) + ["--config", config], space.root, "--config", name)


# --- prompts longer than the model's context


def context_of(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["max_position_embeddings"]


def long_prompts(space, blank_line: bool) -> Path:
    """A prompt file whose last prompt alone fills the model's context."""
    long_row = {"prompt": "x" * context_of(space.model), "answer": "1"}
    lines = [json.dumps(ROWS[0])] + ([""] if blank_line else []) + [json.dumps(long_row)]
    path = space.root / "long.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_prompt_longer_than_the_context_is_refused(space, capsys, no_model_load, command):
    prompts = long_prompts(space, blank_line=False)
    refused(capsys, command_line(space, command, prompts=prompts), space.root, prompts,
            f"context of {context_of(space.model)}")


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_prompt_longer_than_the_context_names_its_line(space, capsys, no_model_load, command):
    prompts = long_prompts(space, blank_line=True)  # the long prompt is on line 3
    refused(capsys, command_line(space, command, prompts=prompts), space.root, f"{prompts}:3")


def test_a_too_long_prompt_text_names_the_flag(space, capsys):
    args = command_line(space, "sample") + ["--prompt", "x" * context_of(space.model)]
    refused(capsys, args, space.root, "--prompt", f"context of {context_of(space.model)}")


# --- tokenizers without a pad token (works: pads with EOS), and without pad or EOS


def strip_tokens(model_dir: Path, root: Path, *names: str) -> Path:
    """A copy of the model whose tokenizer files no longer name these special tokens."""
    model = root / ("model-without-" + "-".join(names))
    shutil.copytree(model_dir, model)
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        if (model / file).is_file():
            config = json.loads((model / file).read_text())
            assert file != "tokenizer_config.json" or set(names) <= set(config)  # there was something to remove
            (model / file).write_text(json.dumps({k: v for k, v in config.items() if k not in names}))
    return model


def test_train_without_a_pad_token_pads_with_eos(space, capsys):
    model = strip_tokens(space.model, space.root, "pad_token")
    prompts = write_jsonl(space.root / "two.jsonl", [{"prompt": "Tell me a long story, please."}, {"prompt": "Hi"}])
    args = command_line(space, "train", model=model, prompts=prompts) + ["--prompts-per-step", "2"]  # left padding
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    [row] = read_jsonl(space.root / "run" / "metrics.jsonl")
    assert row["step"] == 1 and 1 <= row["length_min"] <= row["length_max"] <= 4
    # step 1 samples before any update (LoRA B = 0): policy and base give the same tokens the same log-prob
    assert row["policy_logp_per_token"] == pytest.approx(row["base_logp_per_token"])
    assert row["base_logp_per_token"] < 0


def test_sampling_without_a_pad_token_matches_the_model_with_one(space, capsys):
    """The pad id only fills masked positions: padding with EOS must not change a single sampled token."""
    prompts = write_jsonl(space.root / "two.jsonl", [{"prompt": "Tell me a long story, please."}, {"prompt": "Hi"}])
    records = []
    for model in (space.model, strip_tokens(space.model, space.root, "pad_token")):
        out = space.root / f"{model.name}.jsonl"
        args = ["sample", "--model", model, "--prompts", prompts, "-n", "3", "--max-new-tokens", "8",
                "--quant", "none", "--out", out]
        assert run_cli(capsys, args)[0] == 0
        records.append([(r["completion"], r["tokens"], r["finish_reason"], round(r["logp"], 4))
                        for r in read_jsonl(out)])
    assert len(records[0]) == 6 and records[0] == records[1]


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_tokenizer_without_pad_or_eos_is_refused(space, capsys, no_model_load, command):
    model = strip_tokens(space.model, space.root, "pad_token", "eos_token")
    refused(capsys, command_line(space, command, model=model), space.root, "neither a pad nor an EOS token")


# --- model directories without usable weights


def broken_model(model_dir: Path, root: Path, kind: str) -> Path:
    model = root / kind
    if kind == "missing":
        return model
    shutil.copytree(model_dir, model)
    weights = model / "model.safetensors"
    if kind == "bin-only":
        torch.save(load_file(weights), model / "pytorch_model.bin")
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    return model


@pytest.mark.parametrize("kind, message", [("missing", "does not exist"), ("no-weights", "no *.safetensors"),
                                           ("bin-only", "no *.safetensors")])
@pytest.mark.parametrize("command", COMMANDS)
def test_model_without_safetensors_is_refused_before_loading(space, capsys, no_model_load, command, kind, message):
    model = broken_model(space.model, space.root, kind)  # bin-only: the pickle is never opened
    refused(capsys, command_line(space, command, model=model), space.root, model, message)


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_safetensors_is_refused(space, capsys, command):
    model = broken_model(space.model, space.root, "truncated")
    refused(capsys, command_line(space, command, model=model), space.root, model)


# --- an adapter or checkpoint trained on another base


@pytest.mark.parametrize("command", ["sample", "merge-adapter", "eval"])
def test_adapter_from_another_base_is_refused(space, capsys, other_base, command):
    args = command_line(space, command, model=other_base) + ["--adapter", space.adapter]
    refused(capsys, args, space.root, space.adapter, "another base")


def test_resume_on_another_base_leaves_the_run_as_it_was(space, capsys, other_base):
    previous_run(space, "train")
    args = ["train", "--output", space.root / "run", "--resume", "--model", other_base]
    refused(capsys, args, space.root, "does not match")


# --- an output that cannot be written, found before any model loads

@pytest.mark.parametrize("command, blocker", [
    (command, blocker) for command in COMMANDS for blocker in ("read-only parent", "file as parent")])
def test_unwritable_output_is_refused_before_loading(space, capsys, request, no_model_load, command, blocker):
    parent = space.root / "blocked"
    if blocker == "read-only parent":
        parent.mkdir()
        parent.chmod(0o500)
        request.addfinalizer(lambda: parent.chmod(0o700))  # so that tmp_path can be cleaned up
        if os.access(parent, os.W_OK):  # root (CAP_DAC_OVERRIDE) writes through directory permissions
            pytest.skip("this user can write to a read-only directory (root)")
    else:
        parent.write_text("a file, not a directory\n")
    flag = "--out" if command == "sample" else "--output"
    refused(capsys, command_line(space, command) + [flag, parent / "out"], space.root, flag)


# --- prompt files with a bad row on line 3 (line 2 is blank: lines are counted in the file)

BAD_ROWS = {
    "invalid JSON": '{"prompt": "unclosed',
    "no prompt field": json.dumps({"text": "Hi", "answer": "1"}),
    "empty prompt": json.dumps({"prompt": "", "answer": "1"}),
    "blank prompt": json.dumps({"prompt": "   ", "answer": "1"}),
    "number prompt": json.dumps({"prompt": 3, "answer": "1"}),
    "null prompt": json.dumps({"prompt": None, "answer": "1"}),
    "list row": json.dumps(["Hi"]),
}
PROMPT_SOURCES = {  # how each command takes a prompt file
    "train": lambda space, path: command_line(space, "train", prompts=path),
    "train --eval-data": lambda space, path: command_line(space, "train") + ["--eval-data", path, "--eval-every", "1"],
    "sample": lambda space, path: command_line(space, "sample", prompts=path),
    "eval": lambda space, path: command_line(space, "eval", prompts=path),
}


@pytest.mark.parametrize("row", BAD_ROWS)
@pytest.mark.parametrize("source", PROMPT_SOURCES)
def test_bad_prompt_row_names_its_line(space, capsys, source, row):
    path = space.root / "bad.jsonl"
    path.write_text(f"{json.dumps(ROWS[0])}\n\n{BAD_ROWS[row]}\n")
    refused(capsys, PROMPT_SOURCES[source](space, path), space.root, f"{path}:3:")


@pytest.mark.parametrize("source", PROMPT_SOURCES)
def test_bad_csv_row_names_its_line(space, capsys, source):
    path = space.root / "bad.csv"
    path.write_text("prompt,answer\nWhat is 1+1?,2\n\n,3\n")  # the empty prompt is on line 4
    refused(capsys, PROMPT_SOURCES[source](space, path), space.root, f"{path}:4:")


# --- a previous run survives bad input found at any stage


@pytest.mark.parametrize("fault", ["long prompt", "bad row", "no weights", "bad config key"])
@pytest.mark.parametrize("how", ["--overwrite", "--resume"])
def test_a_previous_run_survives_bad_input(space, capsys, how, fault):
    previous_run(space, "train")
    args = command_line(space, "train") if how == "--overwrite" else ["train", "--output", space.root / "run"]
    if fault == "long prompt":
        path = long_prompts(space, blank_line=False)
        extra, name = ["--prompts", path], path
    elif fault == "bad row":
        path = space.root / "bad.jsonl"
        path.write_text(f"{json.dumps(ROWS[0])}\n\n{BAD_ROWS['null prompt']}\n")
        extra, name = ["--prompts", path], f"{path}:3:"
    elif fault == "no weights":
        model = broken_model(space.model, space.root, "no-weights")
        extra, name = ["--model", model], model
    else:
        (space.root / "config.yaml").write_text("alpha: 2\nlearning_rate: 0.1\n")
        extra, name = ["--config", space.root / "config.yaml"], "learning_rate"
    refused(capsys, args + [how] + extra, space.root, name)
