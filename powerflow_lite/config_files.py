"""Where a config comes from: YAML files, flags, --demo, and a training run's saved config.yaml, layered.

    cfg = load_config(TrainConfig, "examples/creative.yaml", {"max_steps": 20})  # flags win over YAML
    cfg = resolve_train_config("my.yaml", flags, demo=False)                    # + --demo and --resume layers
    cfg = resolve_eval_config(None, {"run": "runs/demo", "data": "math500"})    # a run's model and prompt format

YAML keys may be snake_case or kebab-case; an unknown key is named in the error,
and values are checked against the field's type before the dataclass sees them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .config import EvalConfig, SampleConfig, TrainConfig
from .demo import demo_defaults
from .errors import PowerflowError, first_line
from .options import as_dict

RUN_KEYS = ("model", "quant", "chat_template", "system_prompt", "max_new_tokens", "trust_remote_code")
ALPHA_PREVIEW = "alpha_preview.json"  # in a training run's OUT: --alpha auto's preview table, choice and rule


def field_type(cls, name: str) -> type:
    """The plain Python type of a config field (str, int, float or bool)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _coerce(cls, name: str, value, source: str, key: str | None = None):
    kind = field_type(cls, name)
    if value in cls.__dataclass_fields__[name].metadata.get("words", ()):  # alpha: auto
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None and kind is str:
        return ""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        article = "an" if kind is int else "a"
        raise PowerflowError(f"{source}: {(key or name)!r} must be {article} {kind.__name__}, got {value!r}")
    return value


def read_yaml(path: str, cls, flag: str = "--config") -> dict:
    """A YAML mapping of config keys (snake_case or kebab-case); unknown keys are named in the error."""
    file = Path(path)
    if not file.is_file():
        raise PowerflowError(f"{flag} {path!r} not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise PowerflowError(f"{flag} {path!r} is not valid YAML ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise PowerflowError(f"{flag} {path!r} must hold a mapping of option: value")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise PowerflowError(f"{flag} {path!r}: unknown key {key!r}")
        values[name] = _coerce(cls, name, value, f"{flag} {path!r}", key=str(key))
    return values


def load_config(cls, yaml_path: str | None = None, overrides: dict | None = None, defaults: dict | None = None):
    """dataclass defaults < `defaults` (e.g. --demo) < YAML file < flags that were given (not None)."""
    values = dict(defaults or {})
    if yaml_path:
        values.update(read_yaml(yaml_path, cls))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**values)


def to_yaml(config) -> str:
    """The config as flat YAML, in the reading order of --help (what --config and a resumed run read back)."""
    return yaml.safe_dump(as_dict(config), sort_keys=False, allow_unicode=True)


def from_yaml_file(cls, path: str | Path):
    """Re-read a config.yaml that powerflow wrote."""
    return load_config(cls, str(path))


def resolve_train_config(config_path: str | None, flags: dict, demo: str | None = None) -> TrainConfig:
    """Layer the sources of a training config, lowest first:

    dataclass defaults < the demo's settings (`demo`: a key of demo.DEMOS) < the run's saved config.yaml
    (on --resume) < --config FILE < flags.
    """
    file_values = read_yaml(config_path, TrainConfig) if config_path else {}
    given = {k: v for k, v in flags.items() if v is not None}
    explicit = {**file_values, **given}
    layered: dict = {}
    if demo:
        resuming = explicit.get("resume") or explicit.get("resume_from")
        layered.update(demo_defaults(demo, need_model="model" not in explicit and not resuming))
    if explicit.get("resume_from") and "output" not in explicit:
        explicit["output"] = str(Path(explicit["resume_from"]).expanduser().parent)  # the run the checkpoint is in
    if explicit.get("resume") or explicit.get("resume_from"):
        output = explicit.get("output", layered.get("output", TrainConfig.__dataclass_fields__["output"].default))
        saved = Path(output).expanduser() / "config.yaml"
        if saved.is_file():
            restored = read_yaml(str(saved), TrainConfig)
            for name in ("resume", "resume_from", "overwrite"):
                restored.pop(name, None)
            layered.update(restored)
            if explicit.get("alpha") == "auto":  # the choice the run made when it started, not a new preview
                if not (saved.parent / ALPHA_PREVIEW).is_file():
                    raise PowerflowError(f"--alpha auto: {saved.parent} was started at alpha {restored.get('alpha')}, "
                                         "not chosen by --alpha auto; resume without --alpha")
                explicit["alpha"] = restored["alpha"]
    return TrainConfig(**{**layered, **explicit})


def resolve_eval_config(config_path: str | None, flags: dict) -> EvalConfig:
    """dataclass defaults < the run's config.yaml and adapter (--run) < --config FILE < flags."""
    file_values = read_yaml(config_path, EvalConfig) if config_path else {}
    explicit = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    return EvalConfig(**{**run_values(explicit), **explicit})


def resolve_sample_config(flags: dict) -> SampleConfig:
    """dataclass defaults < the run's config.yaml and adapter (--run) < flags: the run's model, adapter, template
    and system prompt, so that `powerflow sample --run OUT` samples the policy as it was trained."""
    explicit = {k: v for k, v in flags.items() if v is not None}
    return SampleConfig(**{**run_values(explicit), **explicit})


def run_values(explicit: dict) -> dict:
    """What --run OUT (a `powerflow train` output directory) sets: its model and prompt format (RUN_KEYS), its
    alpha as --power-alpha, and its final adapter unless --adapter names another (a checkpoint); {} without --run."""
    if not explicit.get("run"):
        return {}
    run = Path(explicit["run"]).expanduser()
    if not (run / "config.yaml").is_file():
        raise PowerflowError(f"--run {explicit['run']!r} is not a powerflow train output directory (no config.yaml)")
    saved = read_yaml(str(run / "config.yaml"), TrainConfig, flag="--run: the run's config")
    layered = {key: saved[key] for key in RUN_KEYS if key in saved}
    if "alpha" in saved:  # the run's target: what its faithfulness and the power samplers aim at
        layered["power_alpha"] = saved["alpha"]
    layered["adapter"] = str(run / "adapter")
    if not (run / "adapter").is_dir() and "adapter" not in explicit:
        checkpoints = sorted(run.glob("checkpoint-*"), key=lambda p: p.stat().st_mtime)
        hint = f" (pass --adapter {checkpoints[-1]})" if checkpoints else ""
        raise PowerflowError(f"--run {explicit['run']!r} has no final adapter yet{hint}")
    return layered
