"""Model cards: the README.md, with the Hub's YAML metadata, of a final adapter and of a merged model.

    write_card(tmp, adapter_card(out))                    # checkpoint.save_final_adapter, over PEFT's template
    write_card(tmp, merged_card(adapter, model, "nf4", out))  # merge.merge_adapter: the adapter's card carried over

    hf upload USER/NAME runs/x/adapter                    # publishing is the Hub's own CLI

An adapter's card is built from the run's files alone (config.yaml, metrics.jsonl,
evals/before_after.json, alpha_preview.json), so a resumed run writes the same
card. Nothing in it depends on the clock. The metadata keeps PEFT's conventions
(library_name, pipeline_tag, the base_model:adapter tag) and adds a `powerflow`
mapping with the facts a merged model's card needs to say how to sample it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from .config import TrainConfig
from .config_files import ALPHA_PREVIEW, read_yaml
from .tasks import COMMON_ROWS, POWER_ROWS, TASKS, percent

CARD = "README.md"
# a run's --chat-template FILE, copied beside its adapter; in a merged model's directory its tokenizer reads it
TEMPLATE = "chat_template.jinja"
NOT_RECIPE = ("output", "overwrite", "resume", "resume_from")  # where and how a run was started, not what it did
# the `powerflow` metadata: the facts a merged model's card takes from its adapter's
SUMMARY = ("alpha", "objective", "steps", "sampled_tokens", "chat_template", "system_prompt", "max_new_tokens")
VERSIONS = (("powerflow-lite", "powerflow-lite"), ("PEFT", "peft"), ("Transformers", "transformers"),
            ("PyTorch", "torch"))
EXAMPLE_PROMPT = "Write a haiku about the sea."


@dataclass(frozen=True)
class RunFacts:
    """What a card says about a training run (the `powerflow` metadata holds the SUMMARY fields)."""

    alpha: float
    objective: str
    steps: int  # steps done
    sampled_tokens: int  # tokens sampled over those steps (replayed steps sample none)
    chat_template: str  # how the policy was prompted: how to sample it
    system_prompt: str
    max_new_tokens: int
    base_model: str = ""
    recipe: dict = dataclasses.field(default_factory=dict)  # the options that differ from the defaults
    before_after: dict | None = None  # evaluate.before_after's summary
    alpha_choice: dict | None = None  # --alpha auto: the alpha, the rule and why


def copy_template(out: Path, directory: Path) -> None:
    """The run's --chat-template FILE into `directory` as TEMPLATE, so the adapter says how it was prompted
    wherever it goes; nothing for the tokenizer's template or none, or a file no longer there."""
    saved = read_yaml(str(out / "config.yaml"), TrainConfig, flag="the run's config")
    template = Path(str(saved.get("chat_template", "auto"))).expanduser()
    if saved.get("chat_template", "auto") not in ("auto", "none") and template.is_file():
        shutil.copyfile(template, Path(directory) / TEMPLATE)


def write_card(directory: Path, text: str) -> Path:
    """README.md in `directory`, replacing any there (PEFT's template card). Called on a directory not yet
    renamed into place, so a crash leaves the old adapter or model whole."""
    path = Path(directory) / CARD
    path.write_text(text, encoding="utf-8")
    return path


# --- the facts, from a run's files


def run_facts(out: Path) -> RunFacts:
    """The facts of the run in `out`; a metrics line cut short by a crash, or an unreadable table, is left out."""
    saved = read_yaml(str(out / "config.yaml"), TrainConfig, flag="the run's config")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    recipe = {k: v for k, v in saved.items() if k not in NOT_RECIPE and v != defaults.get(k)}
    rows = [row for row in _json_lines(out / "metrics.jsonl") if row.get("step", 0) >= 1]
    steps = max((int(row["step"]) for row in rows), default=0)
    compared = _json_file(out / "evals" / "before_after.json")
    if compared is not None and compared.get("steps") != steps:  # from an earlier ending of the run
        compared = None
    choice = _json_file(out / ALPHA_PREVIEW)
    cfg = {**defaults, **saved}
    return RunFacts(alpha=float(cfg["alpha"]), objective=cfg["objective"], steps=steps,
                    sampled_tokens=sum(int(row.get("sampled_tokens", 0)) for row in rows),
                    chat_template=cfg["chat_template"], system_prompt=cfg["system_prompt"],
                    max_new_tokens=cfg["max_new_tokens"], base_model=cfg["model"], recipe=recipe,
                    before_after=compared,
                    alpha_choice={k: choice[k] for k in ("alpha", "rule", "why") if k in choice} if choice else None)


def _json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _json_file(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


# --- the cards


def adapter_card(out: Path) -> str | None:
    """The card of OUT/adapter: the Hub's metadata, what was trained and how to sample it. None where `out` holds
    no run (no config.yaml): PEFT's own card stays."""
    if not (out / "config.yaml").is_file():
        return None
    facts = run_facts(out)
    base = facts.base_model
    data = ModelCardData(base_model=base, library_name="peft", pipeline_tag="text-generation",
                         tags=[f"base_model:adapter:{base}", "lora", "peft", "powerflow", "transformers"],
                         powerflow=_summary(facts))
    intro = (f"# {_name(base)}, sampling p_base^alpha at alpha {facts.alpha:g}\n\n"
             f"A LoRA adapter for `{base}`, trained with powerflow-lite so that the model samples from its own "
             f"power distribution p_base(y|x)^alpha (alpha > 1 sharpens it, < 1 flattens it). The reward is the "
             "base model itself, with the adapter off: no reward model and no labels.\n")
    sections = [intro, _training(facts), _evaluation(facts.before_after),
                _how_to_sample(facts, base, str(out / "adapter")), _versions()]
    return _card(data, sections)


def merged_card(adapter: Path, model: str, base: str, out: Path) -> str:
    """The card of the model merged into `out` from `adapter` and `model` (its --base weights): the adapter's card
    carried over (when it is powerflow's), with Transformers' metadata and how to sample a model without PEFT."""
    carried, facts = _read_adapter_card(Path(adapter) / CARD)
    data = ModelCardData(base_model=model, library_name="transformers", pipeline_tag="text-generation",
                         tags=["powerflow", "transformers"], **({"powerflow": _summary(facts)} if facts else {}))
    weights = ("the NF4-quantized weights, dequantized (what training saw)" if base == "nf4"
               else "the original weights")
    title = f"{_name(model)}, sampling p_base^alpha at alpha {facts.alpha:g}" if facts else f"{_name(model)}, merged"
    intro = (f"# {title}\n\nThe LoRA adapter `{adapter}` merged into {weights} of `{model}` by `powerflow "
             "merge-adapter`: a plain Transformers model that needs no PEFT.\n")
    if not facts:
        intro += "\nThe adapter had no powerflow model card: what it was trained on is not recorded here.\n"
    return _card(data, [intro, *carried, _how_to_sample(facts, str(out), ""), _versions()])


def _read_adapter_card(path: Path) -> tuple[list[str], RunFacts | None]:
    """The sections of a powerflow adapter card worth carrying over, and its facts; nothing from another card."""
    try:
        card = ModelCard.load(path)
    except Exception:  # noqa: BLE001 - no card, or a damaged one: the merged model still gets its own
        return [], None
    summary = card.data.to_dict().get("powerflow")
    if not isinstance(summary, dict) or not set(SUMMARY) <= set(summary):  # not powerflow's
        return [], None
    facts = RunFacts(**{name: summary[name] for name in SUMMARY})
    sections = re.split(r"(?m)^(?=## )", card.text)[1:]  # the first part is the adapter's title and intro
    own = ("## How to sample it", "## Framework versions")
    return [s.rstrip() + "\n" for s in sections if not s.startswith(own)], facts


def _card(data: ModelCardData, sections: list[str]) -> str:
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(s for s in sections if s)


def _summary(facts: RunFacts) -> dict:
    return {name: getattr(facts, name) for name in SUMMARY}


def _name(model: str) -> str:
    return model.rstrip("/").split("/")[-1] or model


def _training(facts: RunFacts) -> str:
    lines = ["## Training\n", "| | |", "|---|---|", f"| base model | `{facts.base_model}` |",
             f"| alpha | {facts.alpha:g} |", f"| objective | `{facts.objective}` |", f"| steps | {facts.steps} |",
             f"| sampled tokens | {facts.sampled_tokens} |", ""]
    if facts.alpha_choice:
        choice = facts.alpha_choice
        lines += ["### Alpha chosen by the preview\n",
                  f"`--alpha auto` chose alpha {choice.get('alpha', facts.alpha):g}: {choice.get('why', '')}. "
                  f"The rule: {choice.get('rule', '')}.", ""]
    lines += ["### Recipe\n", "The options that differ from powerflow's defaults (the run's `config.yaml` has them "
              "all):\n", "```yaml", yaml.safe_dump(facts.recipe, sort_keys=False, allow_unicode=True).rstrip(),
              "```", ""]
    return "\n".join(lines)


def _evaluation(summary: dict | None) -> str:
    """The before/after table of a run evaluated during training: each variant's figures, then the change."""
    if not summary or summary.get("task") not in TASKS:
        return ""
    results, k = summary["results"], summary["k"]
    names = list(results)
    first = results[names[0]]
    rows = TASKS[summary["task"]].rows(first, k) + COMMON_ROWS + [
        row for row in POWER_ROWS if any(row[1] in result for result in results.values())]
    lines = ["## Evaluation before and after training\n",
             f"`{summary['task']}` on `{summary['data']}`: {summary['prompts']} prompts x {k} samples each, "
             "at temperature 1. The change is the last column's from the first, ± its paired standard error.\n",
             "| | " + " | ".join(names) + " | change |", "|---" * (len(names) + 2) + "|"]
    for label, key, render in rows:
        values = [_lookup(results[name], key) for name in names]
        cells = [render(v) if v is not None else "-" for v in values]
        paired = summary.get("change", {}).get("pass_at_k" if key == f"pass_at.{k}" else key)
        change = "" if None in (values[0], values[-1]) or key.endswith("_stderr") else _change(
            paired["mean"] if paired else values[-1] - values[0], render, paired)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {change} |")
    return "\n".join(lines) + "\n"


def _lookup(result: dict, key: str) -> float | None:
    for part in key.split("."):
        result = result.get(part) if isinstance(result, dict) else None
    return result


def _change(delta: float, render, paired: dict | None) -> str:
    if render is percent:
        return f"{100 * delta:+.1f}" + (f" ± {100 * paired['stderr']:.1f}" if paired else "") + " pts"
    sign = "+" if delta >= 0 else "-"
    return sign + render(abs(delta)) + (f" ± {render(paired['stderr'])}" if paired else "")


def _how_to_sample(facts: RunFacts | None, model: str, adapter: str) -> str:
    """`powerflow sample` and the Transformers code that sample it as trained: temperature 1, nothing else reshaping
    the distribution, the run's chat template and system prompt. `adapter` empty: a merged model."""
    if facts is None:
        return ("## How to sample it\n\nAs its adapter was trained: at temperature 1, with the chat template and "
                "system prompt of its training run.\n")
    system, own = facts.system_prompt, facts.chat_template not in ("auto", "none")  # own: a --chat-template FILE
    template = ("no chat template" if facts.chat_template == "none" else "the tokenizer's chat template" if not own
                else f"the chat template in {TEMPLATE} (its training run's --chat-template file)")
    said = f"the system prompt {json.dumps(system, ensure_ascii=False)}" if system else "no system prompt"
    # a merged model's tokenizer reads TEMPLATE itself; an adapter names it
    chat_template = f"{adapter}/{TEMPLATE}" if own and adapter else "auto" if own else facts.chat_template
    command = ["powerflow", "sample", "--model", model, *(["--adapter", adapter] if adapter else []),
               "--chat-template", chat_template, *(["--system-prompt", system] if system else []),
               "--temperature", "1", "--max-new-tokens", str(facts.max_new_tokens), "--prompt", EXAMPLE_PROMPT]
    return "\n".join([
        "## How to sample it\n",
        f"As it was trained to be sampled: temperature 1 with no top-k or top-p, {template}, {said}, up to "
        f"{facts.max_new_tokens} new tokens. Another temperature samples another distribution than p_base^alpha.\n",
        "```bash", shlex.join(command), "```\n",
        "With Transformers" + (" and PEFT" if adapter else "") + ":\n",
        "```python", _python(facts, model, adapter), "```", ""])


def _python(facts: RunFacts, model: str, adapter: str) -> str:
    system, prompt = facts.system_prompt, EXAMPLE_PROMPT
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig",
             *(["from peft import PeftModel"] if adapter else []), "",
             f"tokenizer = AutoTokenizer.from_pretrained({_py(model)})",
             f"model = AutoModelForCausalLM.from_pretrained({_py(model)})",
             "# as in training: none of the model's own sampling defaults (top_k, top_p, penalties)",
             "model.generation_config = GenerationConfig(eos_token_id=model.generation_config.eos_token_id)"]
    if adapter:
        lines.append(f"model = PeftModel.from_pretrained(model, {_py(adapter)})  # or the Hub repo it was uploaded to")
    if facts.chat_template != "none":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        if facts.chat_template != "auto" and adapter:  # the run's own template, kept beside the adapter
            lines.append(f"tokenizer.chat_template = open({_py(adapter + '/' + TEMPLATE)}).read()")
        lines += [f"messages = {_py(messages)}",
                  "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
                  'inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)']
    else:
        text = f"{system}\n\n{prompt}" if system else prompt
        lines.append(f'inputs = tokenizer({_py(text)}, return_tensors="pt")')
    lines += [f"output = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, "
              f"max_new_tokens={facts.max_new_tokens})",
              'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return "\n".join(lines)


def _py(value) -> str:
    """A Python literal of strings, lists and dicts of strings (JSON's syntax is Python's for them)."""
    return json.dumps(value, ensure_ascii=False)


def _versions() -> str:
    lines = ["## Framework versions\n"]
    for label, package in VERSIONS:
        try:
            lines.append(f"- {label} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"
