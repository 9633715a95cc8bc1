"""Format penalties psi: the \\boxed{} check and loading a penalty by name, module or file."""

from __future__ import annotations

import pytest

from powerflow_lite.errors import PowerflowError
from powerflow_lite.rewards import BOXED_PENALTY, boxed, has_boxed, last_boxed, load_format_penalty, none


@pytest.mark.parametrize("text, expected", [
    ("The answer is \\boxed{42}.", True),
    ("so \\boxed{\\frac{1}{2}}", True),  # nested braces close the box at the last }
    ("\\boxed{}", False),  # nothing inside
    ("\\boxed{   }", False),  # only whitespace inside
    ("\\boxed{1", False),  # never closed
    ("\\boxed{\\frac{1}{2}", False),  # inner braces close, the box does not
    ("first \\boxed{} then \\boxed{7}", True),  # an empty box does not hide a later full one
    ("The answer is 42.", False),
    ("boxed{42}", False),  # no backslash
])
def test_has_boxed(text, expected):
    assert has_boxed(text) is expected


def test_boxed_penalty_values():
    assert BOXED_PENALTY == -0.5
    assert boxed("\\boxed{3}") == 0.0
    assert boxed("3") == -0.5
    assert boxed("\\boxed{}", "prompt") == -0.5


def test_builtin_names():
    assert load_format_penalty("boxed") is boxed
    assert load_format_penalty("none") is none
    assert none("anything \\boxed{}", "q") == 0.0


PENALTY_SOURCE = """
def no_code_blocks(completion, prompt):
    return -1.0 if "```" in completion else 0.0

NOT_A_FUNCTION = 3
"""


def test_module_function(tmp_path, monkeypatch):
    (tmp_path / "pf_user_penalties.py").write_text(PENALTY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    psi = load_format_penalty("pf_user_penalties:no_code_blocks")
    assert psi("```print(1)```", "q") == -1.0
    assert psi("plain text", "q") == 0.0


def test_file_function(tmp_path, monkeypatch):
    # a relative path/to/file.py, as typed on the command line
    (tmp_path / "path" / "to").mkdir(parents=True)
    (tmp_path / "path" / "to" / "file.py").write_text(PENALTY_SOURCE)
    monkeypatch.chdir(tmp_path)
    psi = load_format_penalty("path/to/file.py:no_code_blocks")
    assert psi("```x```", "") == -1.0
    assert psi("x", "") == 0.0


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "use boxed, none or module:function"),
    ("module_only:", "use boxed, none or module:function"),
    (":function_only", "use boxed, none or module:function"),
    ("pf_no_such_module_xyz:psi", "cannot import"),
    ("pf_user_penalties_b:missing", "has no function 'missing'"),
    ("pf_user_penalties_b:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
    ("missing_dir/absent.py:psi", "not found"),
    ("path/to/file.py:missing", "has no function 'missing'"),
])
def test_bad_specs_name_the_spec(tmp_path, monkeypatch, spec, message):
    (tmp_path / "pf_user_penalties_b.py").write_text(PENALTY_SOURCE)
    (tmp_path / "path" / "to").mkdir(parents=True)
    (tmp_path / "path" / "to" / "file.py").write_text(PENALTY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PowerflowError, match="--format-penalty") as err:
        load_format_penalty(spec)
    assert repr(spec) in str(err.value)
    assert message in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# last_boxed
# ----------------------------------------------------------------------------------------------------------------------


def test_last_boxed_nested_braces():
    assert last_boxed("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{ {a}{b{c}} }") == "{a}{b{c}}"  # inner braces kept, outer whitespace stripped


def test_last_boxed_takes_the_last_of_two():
    assert last_boxed("\\boxed{3} then \\boxed{5}") == "5"


def test_last_boxed_skips_an_unclosed_box_after_a_closed_one():
    assert last_boxed("\\boxed{3} and then \\boxed{5") == "3"
    assert last_boxed("\\boxed{\\frac{1}{2}} and then \\boxed{\\frac{5}{") == "\\frac{1}{2}"


def test_last_boxed_none():
    assert last_boxed("no box here") is None
    assert last_boxed("\\boxed{5") is None
    assert last_boxed("boxed{5}") is None
