"""Config dataclasses: validation that names the flag, YAML reading, and the order sources are layered in."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from powerflow_lite.config import BenchConfig, MergeConfig, SampleConfig, TrainConfig
from powerflow_lite.config_files import from_yaml_file, load_config, read_yaml, resolve_train_config, to_yaml
from powerflow_lite.errors import PowerflowError

REQUIRED = {"model": "some/model", "prompts": "prompts.jsonl", "alpha": 4.0}


def train_config(**changes) -> TrainConfig:
    """A valid TrainConfig (model, prompts and alpha have no usable default) with `changes` applied."""
    return TrainConfig(**{**REQUIRED, **changes})


def write_yaml(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- TrainConfig validation


def test_required_fields_make_a_valid_config():
    cfg = train_config()
    assert (cfg.model, cfg.prompts, cfg.alpha) == ("some/model", "prompts.jsonl", 4.0)


@pytest.mark.parametrize("changes, flag", [
    ({"alpha": 0.0}, "--alpha"),
    ({"alpha": -1.0}, "--alpha"),
    ({"objective": "ppo"}, "--objective"),
    ({"top_p": 0.0}, "--top-p"),
    ({"top_p": 1.5}, "--top-p"),
    ({"min_new_tokens": 9, "max_new_tokens": 8}, "--min-new-tokens"),
    ({"objective": "rl-traj", "samples_per_prompt": 1}, "--samples-per-prompt"),
    ({"model": ""}, "--model"),
    ({"prompts": ""}, "--prompts"),
])
def test_bad_value_names_its_flag(changes, flag):
    with pytest.raises(PowerflowError, match=flag):
        train_config(**changes)


def test_boundary_values_are_allowed():
    # top_p's interval is closed at 1; min == max new tokens is fine; one sample suffices for latb
    cfg = train_config(top_p=1.0, min_new_tokens=8, max_new_tokens=8, objective="latb", samples_per_prompt=1)
    assert (cfg.top_p, cfg.min_new_tokens, cfg.samples_per_prompt) == (1.0, 8, 1)


def test_warnings():
    assert train_config().warnings() == []
    notes = train_config(temperature=0.7).warnings()
    assert len(notes) == 1 and "temperature=0.7" in notes[0] and "keeps its target" in notes[0]  # latb: off-policy
    notes = train_config(temperature=0.7, objective="rl-traj").warnings()  # REINFORCE is right only on-policy
    assert len(notes) == 1 and "no longer targets p_base^alpha" in notes[0]
    assert any("no longer targets" in n for n in train_config(top_p=0.9).warnings())  # top-p removes support
    assert any("--min-new-tokens" in note for note in train_config(min_new_tokens=2).warnings())
    # settings that do nothing where they are: said, not silently ignored
    assert any("--z-init zero has no effect with --log-z batch" in n for n in train_config(z_init="zero").warnings())
    assert train_config(z_init="zero", log_z="head").warnings() == []
    assert any("--truncation-penalty has no effect with --ignore-eos" in n
               for n in train_config(truncation_penalty=0.5, ignore_eos=True).warnings())
    assert train_config(truncation_penalty=0.5).warnings() == []
    # a micro-batch holds whole groups under the batch log Z': a smaller --micro-batch-size is said to be ignored
    (note,) = train_config(micro_batch_size=2, samples_per_prompt=8).warnings()
    assert "--micro-batch-size 2 is below one prompt's 8 completions" in note
    assert train_config(micro_batch_size=2, samples_per_prompt=8, log_z="head").warnings() == []


# --- reading YAML


def test_kebab_and_snake_keys(tmp_path):
    path = write_yaml(tmp_path, "max-steps: 7\nprompt_field: question\nformat-penalty: boxed\n")
    assert read_yaml(path, TrainConfig) == {"max_steps": 7, "prompt_field": "question", "format_penalty": "boxed"}


def test_unknown_key_is_named(tmp_path):
    path = write_yaml(tmp_path, "alpha: 2\nlearning-rate: 0.1\n")
    with pytest.raises(PowerflowError, match="'learning-rate'"):
        read_yaml(path, TrainConfig)


def test_int_for_float_field_becomes_float(tmp_path):
    cfg = load_config(TrainConfig, write_yaml(tmp_path, "model: m\nprompts: p.jsonl\nalpha: 4\n"))
    assert cfg.alpha == 4.0 and type(cfg.alpha) is float


def test_float_in_exponent_notation(tmp_path):
    # how learning rates are usually written; YAML 1.1 needs "5.0e-5" to see a float
    assert read_yaml(write_yaml(tmp_path, "lr: 5e-5\n"), TrainConfig) == {"lr": 5e-5}


@pytest.mark.parametrize("text", ["max_steps: ten\n", "max_steps: true\n", "max_steps: 2.5\n"])
def test_wrong_type_for_int_field_names_the_key(tmp_path, text):
    with pytest.raises(PowerflowError, match="'max_steps' must be an int"):
        read_yaml(write_yaml(tmp_path, text), TrainConfig)


def test_yaml_list_is_refused(tmp_path):
    with pytest.raises(PowerflowError, match="mapping"):
        read_yaml(write_yaml(tmp_path, "- model: m\n- alpha: 2\n"), TrainConfig)


def test_invalid_yaml_is_refused(tmp_path):
    path = write_yaml(tmp_path, "model: [unclosed\n")
    with pytest.raises(PowerflowError, match="not valid YAML") as err:
        read_yaml(path, TrainConfig)
    assert path in str(err.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(PowerflowError, match="not found"):
        read_yaml(str(tmp_path / "absent.yaml"), TrainConfig)


# --- layering


def test_load_config_precedence(tmp_path):
    defaults = {"model": "default-model", "prompts": "d.jsonl", "alpha": 1.0, "seed": 3, "lr": 0.1}
    path = write_yaml(tmp_path, "model: yaml-model\nalpha: 2.0\nlr: 0.2\n")
    overrides = {"alpha": 3.0, "lr": None, "max_steps": None}  # None: flag not given
    cfg = load_config(TrainConfig, path, overrides, defaults=defaults)
    assert (cfg.model, cfg.prompts, cfg.seed) == ("yaml-model", "d.jsonl", 3)  # yaml over defaults
    assert cfg.alpha == 3.0  # flag over yaml
    assert cfg.lr == 0.2  # a None flag leaves the yaml value
    assert cfg.max_steps == TrainConfig.max_steps  # and the dataclass default


def test_resolve_flags_over_config_file(tmp_path):
    path = write_yaml(tmp_path, "model: file-model\nprompts: p.jsonl\nalpha: 2.0\nmax_steps: 5\n")
    cfg = resolve_train_config(path, {"max_steps": 8, "alpha": None})
    assert (cfg.model, cfg.alpha, cfg.max_steps) == ("file-model", 2.0, 8)


def saved_run(tmp_path, **changes) -> str:
    """An output directory holding the config.yaml a previous run wrote."""
    output = tmp_path / "run"
    output.mkdir()
    saved = train_config(model="saved-model", alpha=2.5, max_steps=100, output=str(output), **changes)
    (output / "config.yaml").write_text(to_yaml(saved))
    return str(output)


def test_resume_restores_the_saved_config(tmp_path):
    output = saved_run(tmp_path, lr=1e-4)
    cfg = resolve_train_config(None, {"output": output, "resume": True, "max_steps": 9, "model": None})
    assert (cfg.model, cfg.alpha, cfg.lr) == ("saved-model", 2.5, 1e-4)  # from the saved file
    assert cfg.max_steps == 9  # from the flag
    assert cfg.resume is True


# config.yaml as a run wrote it before options were grouped (keys in the old field order), with a value changed
# in every group: a run started then resumes with exactly the settings it had
OLD_SAVED_CONFIG = """\
model: saved-model
alpha: 4.0
prompts: p.jsonl
prompt_field: question
split: ''
objective: tb-token
format_penalty: boxed
truncation_penalty: 0.5
output: {output}
chat_template: none
system_prompt: Think.
prompts_per_step: 2
samples_per_prompt: 6
max_new_tokens: 48
min_new_tokens: 1
ignore_eos: false
temperature: 0.9
top_p: 1.0
sampler: static
sample_batch_size: 3
quant: none
device: cpu
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_targets: q_proj,v_proj
gradient_checkpointing: false
trust_remote_code: false
max_steps: 12
lr: 1.0e-03
z_lr: 0.02
z_hidden: 64
z_init: zero
log_z: head
weight_decay: 0.01
lr_schedule: linear
warmup_steps: 1
max_grad_norm: 0.5
micro_batch_size: 4
inner_epochs: 2
clip_eps: 0.1
replay_steps: 2
replay_size: 8
replay_best: 0.25
replay_lr_scale: 0.5
replay_window: 4
replay_order: random
explore_temperature: 0.5
explore_fraction: 0.5
seed: 7
max_bad_steps: 2
eval_data: eval.jsonl
eval_every: 4
eval_k: 3
eval_limit: 10
eval_task: math
save_every: 4
keep_checkpoints: 2
show_every: 2
resume: false
resume_from: ''
overwrite: false
"""


def test_a_config_saved_before_options_were_grouped_resumes_with_its_settings(tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    text = OLD_SAVED_CONFIG.format(output=output)
    (output / "config.yaml").write_text(text)
    cfg = resolve_train_config(None, {"output": str(output), "resume": True})
    saved = yaml.safe_load(text)
    assert {name: getattr(cfg, name) for name in saved} == {**saved, "lr": 1e-3, "resume": True}
    # options added after this file was written take their defaults
    added_since = {"eval_tempered": False, "eval_temperature": 0.0, "report_to": "", "probe": True,
                   "init_adapter": "", "max_prompt_tokens": 0}
    assert set(saved) | set(added_since) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert {name: getattr(cfg, name) for name in added_since} == added_since
    again = tmp_path / "again.yaml"  # today's config.yaml of it reads back the same
    again.write_text(to_yaml(cfg))
    assert resolve_train_config(str(again), {}) == cfg


def test_resume_config_file_beats_saved_config(tmp_path):
    output = saved_run(tmp_path)
    path = write_yaml(tmp_path, "alpha: 0.5\n", name="new.yaml")
    cfg = resolve_train_config(path, {"output": output, "resume": True})
    assert (cfg.model, cfg.alpha) == ("saved-model", 0.5)


def test_saved_config_ignored_without_resume(tmp_path):
    output = saved_run(tmp_path)
    flags = {"output": output, "resume": False, "alpha": 1.0, "prompts": "p.jsonl"}
    with pytest.raises(PowerflowError, match="--model is required"):  # the saved model is not picked up
        resolve_train_config(None, flags)


def test_yaml_round_trip(tmp_path):
    cfg = train_config(alpha=0.5, lr=3e-5, objective="tb-token", ignore_eos=True, top_p=0.95, seed=12,
                       system_prompt="Reason: step by step.\n  Then answer — ünïcode.", chat_template="none")
    path = write_yaml(tmp_path, to_yaml(cfg))
    assert load_config(TrainConfig, path) == cfg
    assert from_yaml_file(TrainConfig, path) == cfg


def test_yaml_round_trip_of_defaults_is_exact_for_every_field(tmp_path):
    cfg = train_config()
    values = read_yaml(write_yaml(tmp_path, to_yaml(cfg)), TrainConfig)
    assert values == dataclasses.asdict(cfg)
    assert all(type(values[k]) is type(v) for k, v in dataclasses.asdict(cfg).items())


# --- SampleConfig and MergeConfig


def test_sample_config_takes_one_prompt_source():
    assert SampleConfig(model="m", prompt="Hi.").prompt == "Hi."
    assert SampleConfig(model="m", prompts="p.jsonl").prompts == "p.jsonl"
    for sources in ({}, {"prompt": "Hi.", "prompts": "p.jsonl"}):
        with pytest.raises(PowerflowError, match="exactly one of --prompt TEXT or --prompts FILE"):
            SampleConfig(model="m", **sources)


def test_sample_config_requires_model():
    with pytest.raises(PowerflowError, match="--model"):
        SampleConfig(prompt="Hi.")


def test_sample_config_refuses_existing_out(tmp_path):
    out = tmp_path / "samples.jsonl"
    assert SampleConfig(model="m", prompt="Hi.", out=str(out)).out == str(out)  # a new file is fine
    out.write_text("")
    with pytest.raises(PowerflowError, match="--out") as err:
        SampleConfig(model="m", prompt="Hi.", out=str(out))
    assert str(out) in str(err.value)


@pytest.mark.parametrize("missing", ["model", "adapter", "output"])
def test_merge_config_requires(missing):
    values = {"model": "m", "adapter": "run/adapter", "output": "merged"}
    values[missing] = ""
    with pytest.raises(PowerflowError, match=f"--{missing} is required"):
        MergeConfig(**values)


def test_bench_seed_fits_its_training_step():
    with pytest.raises(PowerflowError, match="--no-train-step"):  # found before the model is built and timed
        BenchConfig(seed=2**32)
    assert BenchConfig(seed=2**32, train_step=False).seed == 2**32
