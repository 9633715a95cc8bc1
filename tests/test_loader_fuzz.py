"""load_prompts on arbitrary input: rows with a non-empty prompt text, or a PowerflowError, never another exception.

Two kinds of input. Arbitrary bytes (random, near-miss text, and valid files
with a few bytes changed) under each supported extension, with arbitrary field
names. And structured files built from random JSON values (JSONL, a JSON list,
Parquet), read alongside by a reference reader written from data.py's contract:
the rows load_prompts must return, or the `FILE:N:` of the line it must name.

    python -m pytest tests/test_loader_fuzz.py -q --hypothesis-show-statistics
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from powerflow_lite.data import SUFFIXES, load_prompts
from powerflow_lite.errors import PowerflowError
from powerflow_lite.presets import PROMPT_FIELDS


def load(name: str, content: bytes, **kwargs) -> tuple[list[dict] | None, PowerflowError | None, str]:
    """load_prompts on a file `name` holding `content`: (rows, None, path) or (None, the error, path)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            return load_prompts(str(path), **kwargs), None, str(path)
        except PowerflowError as err:
            return None, err, str(path)


def assert_prompt_rows(rows) -> None:
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row, dict) and isinstance(row["prompt"], str) and row["prompt"].strip(), row


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.parquet"
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), path)
        return path.read_bytes()


# --- arbitrary bytes

FRAGMENTS = ['{', '}', '[', ']', '"', ':', ',', '\n', '\r\n', ' ', '\\', 'null', '1', '-2.5e3', 'true', '"prompt"',
             '"question"', '"problem"', '"answer"', '"Hi."', '"  "', '""', 'prompt', 'question,answer', ',,',
             '"a,b"', '\ufeff', '\x00', '\u2028', 'é', 'PAR1', '{"prompt": "Hi."}', '[{"question": "Why?"}]',
             'prompt\nHi.\n']
NEAR_MISSES = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(lambda parts: "".join(parts).encode())
GOOD_FILES = {  # a valid file of each kind, to change a few bytes of
    ".jsonl": b'{"prompt": "Hi.", "answer": "2"}\n\n{"prompt": "Why?", "id": [1, 2]}\n',
    ".json": b'[{"question": "Hi."}, {"question": "Bye.", "answer": null}]',
    ".csv": b'problem,answer\nHi.,2\n"A, quoted\ncell",3\n',
    ".txt": b"First prompt.\n\n  Second prompt.\n",
    ".parquet": parquet_bytes([{"prompt": "Hi.", "answer": "2"}, {"prompt": "Bye.", "answer": None}]),
}


@st.composite
def mutated(draw, good: bytes) -> bytes:
    """`good` with one to four bytes replaced, inserted or deleted."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        at, byte, how = draw(st.integers(0, len(data))), draw(st.integers(0, 255)), draw(st.sampled_from("rid"))
        if how == "i" or at == len(data):
            data.insert(at, byte)
        elif how == "r":
            data[at] = byte
        else:
            del data[at]
    return bytes(data)


CONTENT = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode), NEAR_MISSES)
FILES = st.sampled_from(SUFFIXES).flatmap(
    lambda suffix: st.tuples(st.just(suffix), st.one_of(CONTENT, mutated(GOOD_FILES[suffix]))))
FIELDS = st.one_of(st.just(""), st.sampled_from(PROMPT_FIELDS), st.text(max_size=8))
ANSWER_FIELDS = st.one_of(st.none(), st.just(""), st.sampled_from(["answer", "solution"]), st.text(max_size=8))


@settings(max_examples=400, deadline=None)
@given(file=FILES, field=FIELDS, answer_field=ANSWER_FIELDS)
def test_arbitrary_bytes_give_prompts_or_a_powerflow_error(file, field, answer_field):
    suffix, content = file
    rows, err, path = load("prompts" + suffix, content, field=field, answer_field=answer_field)
    event("rows" if rows is not None else "PowerflowError")
    if rows is not None:
        assert_prompt_rows(rows)
        if answer_field is not None:
            assert all(row["answer"] is None or isinstance(row["answer"], str) for row in rows)
    else:  # the error names the file, and blames JSON only in a JSON file
        assert path in str(err) or "no prompts" in str(err)
        assert suffix in (".json", ".jsonl") or "JSON" not in str(err), err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("text", ['[{"prompt": "Hi.", "id": ' + "9" * 5000 + "}]", "[" * 100_000 + "]" * 100_000],
                         ids=["5000-digit number", "nested 100000 deep"])
def test_json_a_parser_refuses_is_a_powerflow_error(suffix, text):
    rows, err, path = load("prompts" + suffix, text.encode())
    assert rows is None and f"{path}" in str(err) and "not valid JSON" in str(err)


# --- structured files, and a reference reader

KEYS = st.one_of(st.sampled_from([*PROMPT_FIELDS, "answer", "solution", "id"]), st.text(max_size=6))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
CONTAINERS = [lambda inner: st.lists(inner, max_size=3), lambda inner: st.dictionaries(KEYS, inner, max_size=3)]
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(*(make(inner) for make in CONTAINERS)), max_leaves=6)
PROMPT_TEXT = st.text(min_size=1, max_size=20).filter(str.strip)
GOOD_ROWS = st.dictionaries(st.sampled_from(PROMPT_FIELDS), PROMPT_TEXT, min_size=1).flatmap(
    lambda row: st.dictionaries(KEYS, JSON_VALUES, max_size=2).map(lambda extra: {**extra, **row}))
RECORDS = st.one_of(GOOD_ROWS, GOOD_ROWS, st.dictionaries(KEYS, JSON_VALUES, max_size=3), JSON_VALUES)


def expected_reading(records: list[tuple[int, object]], field: str) -> tuple[str, object]:
    """data.py's contract on parsed records: ("rows", rows), ("line", N of the first bad row) or ("file", None)."""
    if not records:
        return "file", None  # no prompts
    if not field:  # the first record's first prompt field, or "prompt" when it is not an object
        first = records[0][1]
        field = next((name for name in PROMPT_FIELDS if name in first), None) if isinstance(first, dict) else "prompt"
        if field is None:
            return "line", records[0][0]
    rows = []
    for n, record in records:
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            return "line", n
        rows.append({**record, "prompt": text})
    return "rows", rows


def check(name: str, content: bytes, field: str, expected: tuple[str, object]) -> None:
    rows, err, path = load(name, content, field=field)
    kind, value = expected
    if kind == "rows":
        assert err is None, err
        assert rows == value
        assert_prompt_rows(rows)
    else:
        assert rows is None, f"expected an error, got {rows}"
        if kind == "line":
            assert f"{path}:{value}:" in str(err), f"line {value} not named: {err}"


BLANK = st.sampled_from(["", "  ", "\t", "\u3000"])
NOT_JSON = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=10)
LINES = st.lists(st.one_of(RECORDS.map(json.dumps), RECORDS.map(lambda v: json.dumps(v, ensure_ascii=False)),
                           BLANK, NOT_JSON), max_size=8)


def parsed_lines(lines: list[str]) -> tuple[list[tuple[int, object]], int | None]:
    """Reference JSONL reading: blank lines skipped but counted; (records, the first line that is not JSON)."""
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except ValueError:
            return records, n
    return records, None


@settings(max_examples=300, deadline=None)
@given(lines=LINES, field=FIELDS)
def test_jsonl_of_random_values_names_the_bad_line(lines, field):
    records, not_json = parsed_lines(lines)
    # rows are checked as they are read: the first bad line is named, whether bad JSON or a bad row
    expected = expected_reading(records, field)
    if not_json and not (expected[0] == "line" and expected[1] < not_json):
        expected = ("line", not_json)
    event(f"expected: {expected[0]}")
    check("prompts.jsonl", "".join(line + "\n" for line in lines).encode(), field, expected)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(RECORDS, max_size=6), field=FIELDS)
def test_json_list_of_random_values_names_the_bad_record(records, field):
    expected = expected_reading(list(enumerate(records, 1)), field)  # a .json file's rows: their place in the list
    event(f"expected: {expected[0]}")
    check("prompts.json", json.dumps(records).encode(), field, expected)


COLUMN_VALUES = st.sampled_from([st.text(max_size=8) | st.none(), st.integers(-5, 5), st.floats(allow_nan=False),
                                 st.booleans(), PROMPT_TEXT])


@st.composite
def tables(draw) -> list[dict]:
    """Parquet-shaped rows: every row has the same columns, each column one type (or null); often a prompt column."""
    length = draw(st.integers(0, 5))
    columns = {}
    if draw(st.booleans()):
        columns[draw(st.sampled_from(PROMPT_FIELDS))] = draw(st.lists(PROMPT_TEXT, min_size=length, max_size=length))
    for name in draw(st.lists(KEYS, min_size=1, max_size=3, unique=True)):
        columns.setdefault(name, draw(st.lists(draw(COLUMN_VALUES), min_size=length, max_size=length)))
    return [{name: values[i] for name, values in columns.items()} for i in range(length)]


@settings(max_examples=80, deadline=None)
@given(rows=tables(), field=FIELDS)
def test_parquet_of_random_columns_names_the_bad_row(rows, field):
    expected = expected_reading(list(enumerate(rows, 1)), field)  # rows numbered from 1, as data.py does
    event(f"expected: {expected[0]}")
    check("prompts.parquet", parquet_bytes(rows), field, expected)


def test_the_first_bad_line_is_the_one_named():
    lines = [json.dumps({"prompt": "Fine."}), json.dumps({"prompt": ""}), "{not json"]
    check("prompts.jsonl", "".join(line + "\n" for line in lines).encode(), "", ("line", 2))
