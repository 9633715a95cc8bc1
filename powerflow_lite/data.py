"""Prompts: read from files or datasets, ordered per step, turned into token ids.

    load_prompts("examples/prompts/creative.jsonl")      # JSONL with a "prompt" field
    load_prompts("my_prompts.jsonl")                     # the first of PROMPT_FIELDS (presets.py) the file has
    load_prompts("problems.csv", field="question")       # CSV / Parquet column
    load_prompts("AI-MO/NuminaMath-CoT", field="problem") # a hub dataset, where reachable
    load_prompts("math500", answer_field="")              # a preset (presets.py); rows get row["answer"]
    load_prompts("gsm8k", answer_field="")                # GSM8K: row["answer"] is the N of its "#### N" line

Each row is a dict whose "prompt" key holds the text; the file's other fields
are kept. Which prompts a training step takes is a pure function of (seed, step)
(seeds.prompt_indices).
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from .errors import PowerflowError, first_line
from .presets import ANSWER_FIELDS, PRESETS, PROMPT_FIELDS
from .rewards import gsm8k_answer, last_boxed

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def package_data_path(name: str) -> Path:
    """A prompt or problem file shipped in the package (powerflow_lite/data/, used by the demos)."""
    return Path(str(resources.files("powerflow_lite") / "data" / name))


class Prompts(list):
    """The rows of a prompt source, with the file line (or dataset row) each came from, for error messages: a
    number, or "file:line" in a mixture of sources. `weights`: each row's share of a training step's draws, in a
    mixture (None: every row alike)."""

    def __init__(self, rows: list[dict], lines: list, weights: list[float] | None = None):
        super().__init__(rows)
        self.lines = lines
        self.weights = weights

    def lines_of(self, rows: list[dict]) -> list:
        """The lines of `rows`, a selection of these rows (the same dicts)."""
        line = {id(row): n for row, n in zip(self, self.lines)}
        return [line[id(row)] for row in rows]

    def select(self, indices) -> "Prompts":
        """These rows at `indices`, with their lines and weights."""
        indices = list(indices)
        return Prompts([self[i] for i in indices], [self.lines[i] for i in indices],
                       None if self.weights is None else [self.weights[i] for i in indices])


@dataclass(frozen=True)
class Source:
    """One prompt source of --prompts: its name, its weight (its share of a step's prompts beside the others) and
    its cap (its first N rows; 0: all)."""

    name: str
    weight: float = 1.0
    cap: int = 0


def parse_sources(spec: str) -> list[Source]:
    """--prompts "a.jsonl:2,b.jsonl" -> the sources: each NAME[:WEIGHT[:CAP]], comma-separated."""
    sources = []
    for item in (part.strip() for part in spec.split(",")):
        pieces = item.split(":")
        numbers: list[str] = []
        while len(pieces) > 1 and len(numbers) < 2 and _is_number(pieces[-1]):
            numbers.insert(0, pieces.pop())
        name = ":".join(pieces).strip()
        if not name:
            raise PowerflowError(f"--prompts {spec!r}: a source has no name (NAME[:WEIGHT[:CAP]], comma-separated)")
        weight = float(numbers[0]) if numbers else 1.0
        if not (math.isfinite(weight) and weight > 0):
            raise PowerflowError(f"--prompts {spec!r}: the weight of {name!r} must be a positive number, got "
                                 f"{numbers[0]}")
        cap = numbers[1] if len(numbers) == 2 else "0"
        if not cap.isdigit() or (len(numbers) == 2 and int(cap) == 0):
            raise PowerflowError(f"--prompts {spec!r}: the cap of {name!r} must be a whole number of rows > 0, got "
                                 f"{cap}")
        sources.append(Source(name, weight, int(cap)))
    return sources


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_prompts(source: str, field: str = "", split: str = "", answer_field: str | None = None) -> Prompts:
    """Rows of one source (load_source), or of several: --prompts "a.jsonl:2,b.jsonl:1:500" (NAME[:WEIGHT[:CAP]]).
    A mixture's rows come source after source, each source's first CAP rows, and weigh WEIGHT / its rows, so
    that a source's share of a training step's prompts is its weight's share (Prompts.weights)."""
    sources = parse_sources(source)
    if len(sources) == 1:
        rows = load_source(sources[0].name, field, split, answer_field)
        return rows.select(range(sources[0].cap)) if 0 < sources[0].cap < len(rows) else rows
    rows, lines, weights = [], [], []
    for each in sources:
        part = load_source(each.name, field, split, answer_field)
        part = part.select(range(min(each.cap or len(part), len(part))))
        rows += part
        lines += [f"{each.name}:{n}" for n in part.lines]
        weights += [each.weight / len(part)] * len(part)
    return Prompts(rows, lines, weights)


def load_source(source: str, field: str = "", split: str = "", answer_field: str | None = None) -> Prompts:
    """Rows with a non-empty prompt text in row["prompt"] (the file's other fields kept); errors name file and line.

    `source` is a file, a preset name (presets.py) or a hub dataset. `field` names
    the prompt field, which every row must have; empty: the preset's, else the first
    of PROMPT_FIELDS (prompt, problem, question, instruction, input, text) in the
    first row. With `answer_field` given (empty: answer, else the last \\boxed{} of
    solution) each row also gets row["answer"]: the reference answer as a string, or
    None where there is none. A text whose last line is GSM8K's "#### N" gives N.
    """
    preset = PRESETS.get(source)
    config = ""
    if preset:
        source, split, config = preset.hub_id, split or preset.split, preset.config
        field = field or preset.prompt_field
        answer_field = preset.answer_field if answer_field == "" else answer_field
    path = Path(source).expanduser()
    if path.suffix.lower() in SUFFIXES or path.exists():
        if not path.is_file():
            raise PowerflowError(f"prompt file {source!r} not found")
        numbered = _read_file(path)
    else:
        numbered = _read_dataset(source, split or "train", config)
        path = Path(source)
    records, rows = [], []
    for n, record in numbered:  # rows are checked as they are read: an error names the first bad line
        if not field:  # a first record that is not an object gets its own error, with its line, from _row
            field = _first_present(record, PROMPT_FIELDS, "prompt", "--prompt-field", f"{path}:{n}") \
                if isinstance(record, dict) else "prompt"
        rows.append(_row(record, field, path, n))
        records.append((n, record))
    if not records:
        raise PowerflowError(f"no prompts in {source!r}")
    if answer_field is not None:
        _attach_answers(rows, records, answer_field, path)
    return Prompts(rows, [n for n, _ in records])


def _first_present(record: dict, names: tuple[str, ...], what: str, flag: str, where: str) -> str:
    for name in names:
        if name in record:
            return name
    fields = ", ".join(map(str, record)) or "none"
    raise PowerflowError(f"{where}: no {what} field (looked for {', '.join(names)}; fields: {fields}; "
                         f"pick one with {flag})")


def _attach_answers(rows: list[dict], records: list, field: str, path: Path) -> None:
    """row["answer"]: the field's text, or for a worked solution the last \\boxed{...} in it.

    A text that ends with GSM8K's "#### N" line gives N, whichever the field.

    An empty `field` takes the first of ANSWER_FIELDS that any row has, and rows
    without it get None; a named field must be in every row.
    """
    named = bool(field)
    field = field or next((name for name in ANSWER_FIELDS if any(name in record for _, record in records)), "")
    for row, (n, record) in zip(rows, records):
        if named and field not in record:
            raise PowerflowError(f"{path}:{n}: no {field!r} field for the reference answer "
                                 f"(fields: {', '.join(map(str, record))}; pick one with --answer-field)")
        value = record.get(field) if field else None
        text = None if value is None else str(value).strip()
        row["answer"] = _reference(text, field) if text else None


def _reference(text: str, field: str) -> str | None:
    """The answer in an answer field's text: GSM8K's "#### N", else a solution's last \\boxed{}, else the text."""
    return gsm8k_answer(text) or (last_boxed(text) if field == "solution" else text)


def _read_file(path: Path) -> Iterable[tuple[int, object]]:
    """(line or record number, record) pairs; CSV rows are numbered by their line (the header is line 1)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path)  # lazily: a bad row is found before a later syntax error
    try:  # utf-8-sig: a byte-order mark (Excel's CSV export) is not part of the first field's name
        if suffix == ".json":
            records = _json_list(path)
            return list(enumerate(records, 1))
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return _csv_records(handle)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(enumerate(pq.read_table(path).to_pylist(), 1))
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        return [(n, {"prompt": line}) for n, line in enumerate(lines, 1) if line.strip()]
    except UnicodeDecodeError:
        raise PowerflowError(f"{path}: not UTF-8 text") from None
    except (csv.Error, OSError) as err:
        raise PowerflowError(f"{path}: cannot read prompts ({err})") from None
    except Exception as err:  # pyarrow's errors share no base class we can import cheaply
        if suffix != ".parquet":
            raise
        raise PowerflowError(f"{path}: not a readable Parquet file ({first_line(err)})") from None


def _json_list(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise PowerflowError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
        raise PowerflowError(f"{path}: not valid JSON ({first_line(err)[:100]})") from None
    if not isinstance(records, list):
        raise PowerflowError(f"{path}: a .json prompt file must hold a list of objects")
    return records


def _csv_records(handle) -> list[tuple[int, dict]]:
    """Rows as csv.DictReader reads them, numbered by the line each starts on (a quoted cell may span lines)."""
    reader = csv.reader(handle)
    header = next(reader, None)
    records, start = [], reader.line_num + 1
    for values in reader:
        if values:  # DictReader's rules: blank lines skipped, missing cells None, extra cells under the key None
            record = dict(zip(header, values + [None] * (len(header) - len(values))))
            if len(values) > len(header):
                record[None] = values[len(header):]
            records.append((start, record))
        start = reader.line_num + 1
    return records


def _jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    n = 0
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for n, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PowerflowError(f"{path}:{n}: not valid JSON ({err.msg}, column {err.colno})") from None
                except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
                    raise PowerflowError(f"{path}:{n}: not valid JSON ({first_line(err)[:100]})") from None
                yield n, record
    except UnicodeDecodeError:
        raise PowerflowError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise PowerflowError(f"{path}: cannot read prompts ({err})") from None


def _row(record, field: str, path: Path, n: int) -> dict:
    if not isinstance(record, dict):
        raise PowerflowError(f"{path}:{n}: expected an object with a {field!r} field")
    if field not in record:
        raise PowerflowError(f"{path}:{n}: no {field!r} field (fields: {', '.join(map(str, record)) or 'none'}; "
                             f"pick one with --prompt-field)")
    text = record[field]
    if isinstance(text, list):  # a conversation: row["prompt"] is its last user turn, for display and grading
        messages = _conversation(text, f"{path}:{n}: {field!r}")
        return {**record, "prompt": messages[-1]["content"], "messages": messages}
    if not isinstance(text, str) or not text.strip():
        raise PowerflowError(f"{path}:{n}: {field!r} must be a non-empty string or a list of messages")
    return {**record, "prompt": text}


ROLES = ("system", "user", "assistant")


def _conversation(messages: list, where: str) -> list[dict]:
    """A conversation the model answers: {role, content} turns (system, user, assistant), ending with a user's."""
    turns = []
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise PowerflowError(f"{where}: each message must be an object with a role and a text content")
        if turn.get("role") not in ROLES:
            raise PowerflowError(f"{where}: unknown role {turn.get('role')!r} (use {', '.join(ROLES)})")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(turn["role"] == "user" for turn in turns):
        raise PowerflowError(f"{where}: the conversation has no user turn")
    if turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise PowerflowError(f"{where}: the conversation must end with a non-empty user turn (the model answers it)")
    return turns


def prompt_input(row: dict) -> str | list[dict]:
    """What a row's prompt is rendered from: its conversation (messages), else its text."""
    return row.get("messages") or row["prompt"]


def _read_dataset(name: str, split: str, config: str = "") -> list[tuple[int, dict]]:
    try:
        import datasets

        # a configuration only where the dataset has several (GSM8K: "main", "socratic")
        dataset = datasets.load_dataset(name, split=split, **({"name": config} if config else {}))
    except Exception as err:  # offline, unknown name, bad split: datasets raises many types
        raise PowerflowError(f"{name!r} is neither a prompt file nor a reachable dataset ({first_line(err)})") from None
    return list(enumerate(dataset, 1))


def render_prompt(tokenizer, prompt: str | list[dict], chat_template: str = "auto",
                  system_prompt: str | None = None) -> str:
    """The exact text the model is conditioned on: the chat template (the tokenizer's, or --chat-template FILE)
    when there is one and it is wanted, with the generation prompt added. `prompt` is a text (one user turn) or a
    conversation (prompt_input); a conversation's own system message wins over `system_prompt`."""
    conversation = isinstance(prompt, list)
    messages = prompt if conversation else [{"role": "user", "content": prompt}]
    if system_prompt and not any(turn["role"] == "system" for turn in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if uses_chat_template(tokenizer, chat_template):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 **template_argument(chat_template))
        except Exception as err:  # jinja2 raises TemplateError subclasses, templates raise their own
            hint = " (it may not accept a system message: drop --system-prompt)" if system_prompt else ""
            which = "the tokenizer's chat template" if chat_template == "auto" else f"--chat-template {chat_template}"
            raise PowerflowError(f"{which} failed to render{hint}: {first_line(err)}") from None
    if conversation:
        raise PowerflowError("a conversation (messages) is rendered by a chat template, and there is none here: the "
                             "tokenizer has none or --chat-template is none; give --chat-template FILE (Jinja)")
    return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt


@functools.cache
def _template_file(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PowerflowError(f"--chat-template {path!r}: cannot read it ({err})") from None


def template_argument(chat_template: str) -> dict:
    """apply_chat_template's chat_template= for --chat-template FILE (the file's Jinja text); {} for auto and none."""
    return {} if chat_template in ("auto", "none") else {"chat_template": _template_file(chat_template)}


def chat_stop_ids(tokenizer, chat_template: str = "auto") -> list[int]:
    """The special token that ends an assistant turn in the chat template (e.g. <|im_end|>, <|eot_id|>).

    A base model's generation config often lists only <|endoftext|>, while its chat
    template closes turns with another token; sampling must stop there too. We render a
    conversation with a known answer and take the special token that follows it.
    With `chat_template="none"` (or no template) prompts are raw text and there is none.
    """
    if not uses_chat_template(tokenizer, chat_template):
        return []
    marker = "POWERFLOW_ANSWER"
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, **template_argument(chat_template))
    except Exception:  # templates that cannot render this conversation have no turn end to find
        return []
    after = text[text.find(marker) + len(marker):] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
    special = set(tokenizer.all_special_ids)
    special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    return [ids[0]] if ids and ids[0] in special else []


def encode_prompt(tokenizer, rendered: str, chat_template_used: bool) -> list[int]:
    """Token ids of a rendered prompt; a chat template already holds its special tokens."""
    return tokenizer(rendered, add_special_tokens=not chat_template_used).input_ids


def uses_chat_template(tokenizer, chat_template: str) -> bool:
    """Whether prompts are rendered by a chat template: a --chat-template FILE, or the tokenizer's under auto."""
    if chat_template not in ("auto", "none"):
        return True
    return chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def encode_prompts(tokenizer, texts: list[str | list[dict]], chat_template: str, system_prompt: str,
                   max_new_tokens: int, max_positions: int | None, source: str = "--prompt",
                   lines: list[int] | None = None) -> list[list[int]]:
    """Render and tokenize every prompt (a text or a conversation: prompt_input); refuse one that is empty or
    leaves no room for the completion.

    `lines`: where each text is in `source` (Prompts.lines), for the error message.
    """
    if max_positions and max_new_tokens >= max_positions:
        raise PowerflowError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                             f"of {max_positions} tokens")
    templated = uses_chat_template(tokenizer, chat_template)
    encoded = []
    for n, text in enumerate(texts, 1):
        line = lines[n - 1] if lines else None
        where = (f"prompt {n} of {source!r}" if line is None else f"{line}: the prompt" if isinstance(line, str)
                 else f"{source}:{line}: the prompt")  # a mixture's lines name their file
        ids = encode_prompt(tokenizer, render_prompt(tokenizer, text, chat_template, system_prompt), templated)
        if not ids:
            raise PowerflowError(f"{where} encodes to no tokens")
        if max_positions and len(ids) + max_new_tokens > max_positions:
            raise PowerflowError(f"{where} is {len(ids)} tokens: with --max-new-tokens {max_new_tokens} it exceeds "
                                 f"the model's context of {max_positions}")
        encoded.append(ids)
    return encoded
