"""Math grading (math-verify) and the estimators `powerflow eval --task math` reports: pass@k, maj@k."""

from __future__ import annotations

import math
import signal
import threading
from fractions import Fraction

import pytest
import sympy

from powerflow_lite.errors import PowerflowError
from powerflow_lite.rewards import last_boxed
from powerflow_lite.tasks.math import (
    grade_math,
    majority_correct,
    parse_answer,
    pass_at_k,
    pass_ks,
)

pytest.importorskip("math_verify")


# ----------------------------------------------------------------------------------------------------------------------
# grade_math: right, wrong, unboxed, missing
# ----------------------------------------------------------------------------------------------------------------------


def test_right_boxed_answer():
    grade = grade_math("3 + 4 = 7, so the answer is \\boxed{7}.", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (True, "7", True)


def test_wrong_boxed_answer():
    grade = grade_math("3 + 4 = 8, so the answer is \\boxed{8}.", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (False, "8", True)


def test_unboxed_anchored_answer_is_read():
    # Without a box, an anchored statement still counts; `boxed` records the missing format.
    grade = grade_math("3 + 4 = 7. The final answer is 7.", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (True, "7", False)


def test_unboxed_wrong_answer_is_wrong():
    grade = grade_math("The answer is 8.", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (False, "8", False)


def test_last_bare_number_is_not_an_answer():
    # math-verify's loosest fallback would read 7 here; a cut-off completion must not be graded on noise
    grade = grade_math("so x equals 7", "7", ended=False)
    assert (grade.correct, grade.answer, grade.boxed) == (False, None, False)
    assert not grade_math("we pick 3 and then 7, so", "7").correct
    assert not grade_math("we pick 7 and then 3 more.", "7").correct  # a number at the end, but no statement of it


@pytest.mark.parametrize("text, answer", [
    ("To add 8 + 4, you simply add them together: 8 + 4 = 12.", "12"),
    ("9 times 9 is 81.", "81"),
    ("So 3 + 7 equals 10", "10"),
    ("Taking 5 away leaves 4 - 1 = $3$.", "3"),
])
def test_a_completion_that_ends_by_stating_a_number_is_graded_on_it(text, answer):
    grade = grade_math(text, answer)  # it ended with EOS: the statement is its last word
    assert grade.correct and grade.answer == answer
    wrong = grade_math(text, str(int(answer) + 1))
    assert not wrong.correct and wrong.answer == answer
    assert grade_math(text, answer, ended=False).answer is None  # cut off there, the number may be unfinished


def test_a_statement_followed_by_more_text_is_not_final():
    assert grade_math("3 + 7 = 10\n\nThis is a classic example of addition.", "10").answer is None
    assert not grade_math("and 4 is 1 less than 5.", "5").correct  # "less than 5" states no result


def test_an_answer_statement_math_verify_reads_across_paragraphs_is_read_in_its_own():
    # math-verify takes "10.\n\n3 + 7" as the anchored answer here and cannot parse it
    grade = grade_math("The answer is 10.\n\n3 + 7 is equal to 10, adding 1 to the equation.", "10")
    assert grade.correct and grade.answer == "10"
    assert grade_math("The answer is 9.\n\nAlso 3.", "9").correct


def test_no_answer_at_all():
    grade = grade_math("I don't know", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (False, None, False)
    assert grade.parsed == ()


def test_empty_box_is_neither_boxed_nor_an_answer():
    grade = grade_math("The answer is \\boxed{}", "7")
    assert (grade.correct, grade.answer, grade.boxed) == (False, None, False)


def test_unreadable_reference_raises():
    with pytest.raises(PowerflowError, match="cannot read the reference"):
        grade_math("\\boxed{7}", "")


# ----------------------------------------------------------------------------------------------------------------------
# grade_math: equivalent forms
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion", ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{\\frac{1}{2}}",
                                        "\\boxed{\\dfrac{1}{2}}"])
@pytest.mark.parametrize("reference", ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}"])
def test_forms_of_one_half_agree(completion, reference):
    grade = grade_math(f"The answer is {completion}.", reference)
    assert grade.correct and grade.boxed


@pytest.mark.parametrize("completion", ["\\boxed{0.51}", "\\boxed{\\frac{1}{3}}", "\\boxed{2}"])
def test_near_misses_of_one_half_are_wrong(completion):
    assert not grade_math(f"The answer is {completion}.", "\\frac{1}{2}").correct


@pytest.mark.parametrize(("completion", "reference"), [("\\boxed{10\\sqrt{2}}", "\\sqrt{200}"),
                                                        ("\\boxed{\\sqrt{200}}", "10\\sqrt{2}")])
def test_surds_agree(completion, reference):
    # sqrt(200) = sqrt(100 * 2) = 10 sqrt(2)
    assert grade_math(completion, reference).correct


def test_wrong_surd_is_wrong():
    # sqrt(20) = 2 sqrt(5) != 10 sqrt(2)
    assert not grade_math("\\boxed{\\sqrt{20}}", "10\\sqrt{2}").correct


def test_ordered_pair():
    assert grade_math("The point is \\boxed{(1,2)}.", "(1,2)").correct
    assert grade_math("The point is \\boxed{(1, 2)}.", "(1,2)").correct
    assert not grade_math("The point is \\boxed{(2,1)}.", "(1,2)").correct  # order matters


def test_reference_is_read_as_latex():
    # A bare reference is wrapped in $...$: read as plain text, "10\sqrt{2}" would be just 10 and "\sqrt{200}" nothing.
    assert parse_answer("10\\sqrt{2}", reference=True)[0] == 10 * sympy.sqrt(2)
    assert parse_answer("10\\sqrt{2}")[0] == 10 * sympy.sqrt(2)  # a completion that is only an expression: itself
    assert parse_answer("it is 10\\sqrt{2} or so") == []  # words around it and no anchor: no answer
    assert sympy.simplify(parse_answer("\\sqrt{200}", reference=True)[0] - 10 * sympy.sqrt(2)) == 0
    assert sympy.simplify(parse_answer("\\sqrt{200}")[0] - 10 * sympy.sqrt(2)) == 0  # bare LaTeX completion: LaTeX
    assert parse_answer("\\frac{3}{4}", reference=True)[0] == sympy.Rational(3, 4)


def test_reference_as_bare_latex():
    # 3/4 = 0.75
    assert grade_math("\\boxed{0.75}", "\\frac{3}{4}").correct
    assert grade_math("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}").correct
    assert not grade_math("\\boxed{\\frac{4}{3}}", "\\frac{3}{4}").correct


def test_reference_as_number_string():
    assert grade_math("\\boxed{27}", "27.0").correct
    assert not grade_math("\\boxed{28}", "27.0").correct


# ----------------------------------------------------------------------------------------------------------------------
# grade_math: two boxes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion", [
    "I first thought \\boxed{3}. On reflection the answer is \\boxed{5}.",
    "Wrong: \\boxed{3}\n\nCorrect: \\boxed{5}",
    "$\\boxed{3}$ and later $\\boxed{5}$",
])
def test_last_boxed_answer_wins(completion):
    assert grade_math(completion, "5").correct
    assert not grade_math(completion, "3").correct
    assert grade_math(completion, "5").answer == "5"


def test_adjacent_boxes_are_read_as_one_multi_answer():
    # math-verify joins boxes fewer than 10 characters apart (or split by "and"/","): {3, 5}, neither 3 nor 5.
    # last_boxed (the format check) still takes the last one; this pins the grader's reading.
    completion = "\\boxed{3}. Wait. \\boxed{5}"
    assert last_boxed(completion) == "5"
    grade = grade_math(completion, "5")
    assert (grade.correct, grade.answer) == (False, "3,5")


# ----------------------------------------------------------------------------------------------------------------------
# pass_at_k
# ----------------------------------------------------------------------------------------------------------------------


def test_pass_at_k_hand_cases():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    # n=10, c=3, k=1: 1 - C(7,1)/C(10,1) = 1 - 7/10 = 0.3 (pass@1 = c/n)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    # n=16, c=3, k=4: 1 - C(13,4)/C(16,4) = 1 - 715/1820 = 1 - 11/28 = 17/28
    assert pass_at_k(16, 3, 4) == pytest.approx(17 / 28, abs=1e-15)
    # n=6, c=1, k=6: one right among all six drawn -> certain
    assert pass_at_k(6, 1, 6) == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 64])
def test_pass_at_k_matches_the_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))  # exact; C(m, k) = 0 when m < k
            assert pass_at_k(n, c, k) == pytest.approx(float(expected), rel=1e-12, abs=1e-14), (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(16, 0, 1) == 0.0  # no right sample
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0  # all right
    assert pass_at_k(16, 13, 4) == 1.0  # n - c = 3 < k = 4: every draw of 4 holds a right one


def test_pass_at_k_is_monotone_in_c_and_k():
    values = [[pass_at_k(12, c, k) for k in range(1, 13)] for c in range(13)]
    for c in range(13):
        assert all(a <= b for a, b in zip(values[c], values[c][1:]))
    for k in range(12):
        assert all(values[c][k] <= values[c + 1][k] for c in range(12))


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 0), (4, 1, 5), (4, -1, 2), (4, 5, 2), (0, 0, 0), (0, 0, 1),
                                           (4, 1, -1)])
def test_pass_at_k_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------------------------------------------------
# majority_correct (maj@k)
# ----------------------------------------------------------------------------------------------------------------------


def majority(completions: list[str], reference: str) -> bool:
    """maj@k over hand-made completions: their math-verify parses vote, the winner's grade decides."""
    grades = [grade_math(c, reference) for c in completions]
    return majority_correct([list(g.parsed) for g in grades], [g.correct for g in grades])


def test_equivalent_forms_vote_together():
    # 0.5 and 1/2 are one answer with two votes against one for 3
    assert majority(["\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{3}"], "\\frac{1}{2}")
    # 3 has two votes against one for 1/2
    assert not majority(["\\boxed{3}", "\\boxed{3}", "\\boxed{1/2}"], "\\frac{1}{2}")


def test_forms_outvote_a_single_wrong_answer_listed_first():
    # 3 is seen first and "first seen" alone would say False: 1/2 = 0.5 = \dfrac{1}{2} has three votes to 3's two
    assert majority(["\\boxed{3}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{3}"],
                    "1/2")
    # and the other way round: 1/2 first, 3 = 3.0 = \frac{6}{2} outvotes it
    assert not majority(["\\boxed{1/2}", "\\boxed{3}", "\\boxed{3.0}", "\\boxed{\\frac{6}{2}}"], "1/2")


def test_samples_without_an_answer_do_not_vote():
    # three empties would outvote the single 7 if they counted as one answer
    assert majority(["I don't know", "no idea", "hmm", "\\boxed{7}"], "7")
    assert not majority(["I don't know", "no idea", "hmm", "\\boxed{8}"], "7")
    # the empties listed first must not make the first answered sample the winner by default either
    assert majority(["no idea", "\\boxed{8}", "\\boxed{7}", "\\boxed{7.0}"], "7")


def test_all_without_answers_is_false():
    assert not majority(["I don't know", "no idea"], "7")
    assert not majority_correct([[], []], [False, False])
    assert not majority_correct([], [])


def test_ties_go_to_the_first_seen_answer():
    # one vote each: the first decides
    assert majority(["\\boxed{1/2}", "\\boxed{3}"], "0.5")
    assert not majority(["\\boxed{3}", "\\boxed{1/2}"], "0.5")
    # two votes each (3, 3.0 vs 0.5, 1/2): 3 is seen first
    assert not majority(["\\boxed{3}", "\\boxed{0.5}", "\\boxed{3.0}", "\\boxed{1/2}"], "0.5")
    assert majority(["\\boxed{0.5}", "\\boxed{3}", "\\boxed{3.0}", "\\boxed{1/2}"], "0.5")


def test_the_winner_is_judged_by_its_own_grade():
    # correct[] is taken from the winning cluster's first sample, whatever the other flags say
    parsed = [parse_answer("\\boxed{3}"), parse_answer("\\boxed{3}"), parse_answer("\\boxed{4}")]
    assert majority_correct(parsed, [True, True, False])
    assert not majority_correct(parsed, [False, False, True])


def test_majority_over_grade_parsed_as_evaluate_passes_it():
    # evaluate.py calls majority_correct([g.parsed for g in grades], ...) with Grade.parsed tuples
    grades = [grade_math(c, "1/2") for c in ["\\boxed{3}", "\\boxed{1/2}", "\\boxed{0.5}"]]
    assert majority_correct([g.parsed for g in grades], [g.correct for g in grades])  # 1/2 has two votes to one


# ----------------------------------------------------------------------------------------------------------------------
# pass_ks
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "expected"), [(16, [1, 2, 4, 8, 16]), (6, [1, 2, 4, 6]), (1, [1]), (2, [1, 2]),
                                             (3, [1, 2, 3]), (9, [1, 2, 4, 8, 9]), (64, [1, 2, 4, 8, 16, 32, 64])])
def test_pass_ks(k, expected):
    assert pass_ks(k) == expected


# ----------------------------------------------------------------------------------------------------------------------
# off the main thread
# ----------------------------------------------------------------------------------------------------------------------


def test_grading_works_off_the_main_thread(monkeypatch):
    # math-verify's default timeouts call signal.signal / signal.alarm, which raise ValueError off the main thread.
    calls = []
    real_signal, real_alarm = signal.signal, signal.alarm

    def spy_signal(*args):
        calls.append(("signal", threading.current_thread().name))
        return real_signal(*args)

    def spy_alarm(*args):
        calls.append(("alarm", threading.current_thread().name))
        return real_alarm(*args)

    monkeypatch.setattr(signal, "signal", spy_signal)
    monkeypatch.setattr(signal, "alarm", spy_alarm)

    results, errors = [], []

    def work():
        try:
            results.append(grade_math("The answer is \\boxed{0.5}.", "\\frac{1}{2}"))
            results.append(grade_math("The answer is \\boxed{3}.", "\\frac{1}{2}"))
            results.append(majority(["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}"], "1/2"))
        except Exception as err:  # surfaced below with its message
            errors.append(err)

    thread = threading.Thread(target=work, name="grader")
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert [results[0].correct, results[0].boxed, results[1].correct, results[2]] == [True, True, False, True]
    assert [c for c in calls if c[1] == "grader"] == []


def test_money_reference_with_an_escaped_dollar():
    # MATH writes money as \$18.90: the escaped $ is not math mode, so the reference is still read as LaTeX
    assert parse_answer("\\$18.90", reference=True)[0] == sympy.Float("18.9")
    assert grade_math("It costs \\boxed{18.90} dollars.", "\\$18.90").correct
    assert not grade_math("It costs \\boxed{18.80} dollars.", "\\$18.90").correct


def test_symbol_soup_is_not_an_answer():
    # a tiny model's noise: no digit, symbols that are not math; it must not vote in maj@k as an "answer"
    assert parse_answer("T>_]/S,z") == []
    assert parse_answer("x+1") != []  # a bare expression with a number still counts
