"""The math task: answers graded against references, and the estimators avg@k, pass@k, maj@k.

    powerflow eval --run runs/reasoning-alpha4 --data math500 -k 16 --compare-base
    grade_math("... so the answer is \\boxed{0.5}", "\\frac{1}{2}")   # Grade(correct=True, answer='\\frac{1}{2}', ...)
    pass_at_k(n=16, c=3, k=4)                                      # unbiased pass@4 from 16 samples, 3 right

Answers are compared with Hugging Face's `math-verify` (the grader Open-R1 and
lighteval use): the final answer is the last \\boxed{...}, or failing that an
anchored statement ("the final answer is 7"), or the whole completion when it is
nothing but an expression; both sides are parsed with sympy and compared
symbolically, so 1/2, 0.5 and \\frac12 agree. The last bare number of a longer
text is not taken as its answer (math-verify's loosest fallback): a completion
cut off mid-sentence would be graded on noise. Two boxes close together
("\\boxed{3}, \\boxed{5}") are read as one answer, the set {3, 5}. `answer` is
math-verify's reading (0.5 comes back as \\frac{1}{2}); `boxed` records whether
the model followed the format, and the summary reports that fraction separately.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

from ..errors import PowerflowError
from ..metrics import mean, stderr
from ..rewards import gsm8k_answer, has_boxed
from .task import Measures, Row, Task, percent

# A completion that is only an answer: a number somewhere, and nothing but math characters around it.
BARE_EXPRESSION = re.compile(r"(?=.*\d)[\w\s.,+\-*/^()\[\]{}=\\!%']*")
# A completion that ends by stating a number: "... = 7", "... equals 7.", "... is 81." (and nothing after it).
FINAL_STATEMENT = re.compile(r"(?:=|\bequals|\bis)\s*\$?(-?\d+(?:\.\d+)?)\$?\s*[.!]?\s*$")
UNREADABLE = "math-verify cannot read the reference answer"
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."  # the paper's
INSTALL_HINT = "pip install math-verify (or pip install 'powerflow-lite[eval]')"


@dataclass(frozen=True)
class Grade:
    correct: bool
    answer: str | None  # the extracted final answer, as math-verify reads it; None when there is none
    boxed: bool  # the completion holds a complete \boxed{...}
    parsed: tuple = field(default=(), repr=False, compare=False)  # math-verify's parse, for maj@k's vote


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise PowerflowError(f"--task math grades answers with math-verify: {INSTALL_HINT}") from None
    return math_verify


def _timeouts() -> dict:
    """math-verify times its sympy work with signal.alarm, which only the main thread may use."""
    if threading.current_thread() is threading.main_thread():
        return {}
    return {"parsing_timeout": None, "timeout_seconds": None}


def parse_answer(text: str, reference: bool = False, ended: bool = True) -> list:
    """math-verify's parse of a completion's final answer, or of a reference answer.

    A completion's answer is, in this order: its last \\boxed{} or an anchored statement
    ("the final answer is 7"; when math-verify reads such a statement across a paragraph
    break as text it cannot parse, the last paragraph whose statement it can read); the
    N of a closing GSM8K line "#### N" (commas dropped); the whole completion when it is
    nothing but an expression; or, for a completion that
    `ended` on its own (EOS), a final statement of a number at its very end ("... so
    3 + 4 = 7.", "... 9 times 9 is 81."). Never just the last number in the text: a
    completion cut off mid-sentence would otherwise be graded on whatever number it
    stopped near.
    A reference answer is bare LaTeX ("\\frac{1}{2}"), so it is read as $...$.
    """
    mv = _math_verify()
    timeouts = _timeouts()
    parse_timeout = {"parsing_timeout": timeouts["parsing_timeout"]} if timeouts else {}
    if not reference:
        anchored = [mv.LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0),
                    mv.ExprExtractionConfig(try_extract_without_anchor=False)]
        parsed = mv.parse(text, extraction_config=anchored, **parse_timeout)
        if parsed and not _has_value(parsed):  # e.g. "The answer is 10.\n\n3 + 7 ..." read as one string
            paragraphs = [part for part in re.split(r"\n\s*\n", text) if part.strip()]
            readable = (mv.parse(part, extraction_config=anchored, **parse_timeout) for part in reversed(paragraphs))
            parsed = next((found for found in readable if _has_value(found)), parsed)
        if parsed or not text.strip():
            return parsed
        marked = gsm8k_answer(text)  # GSM8K's closing "#### N" line: as explicit as "the final answer is N"
        if marked is not None and (parsed := mv.parse(f"${marked}$", **parse_timeout)):
            return parsed
        # A completion that is nothing but an expression ("6", "\\frac{1}{2}") is its own answer.
        bare = text.strip().strip("$").strip()
        if BARE_EXPRESSION.fullmatch(bare) and not re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", bare)):
            parsed = mv.parse(f"${bare}$", **parse_timeout)
            if parsed and parsed[-1].replace(" ", "") == bare.replace(" ", ""):
                return parsed
        final = FINAL_STATEMENT.search(text) if ended else None
        return mv.parse(f"${final.group(1)}$", **parse_timeout) if final else []
    if not re.search(r"(?<!\\)\$", text) and "\\boxed" not in text:  # an escaped \$ (money) is not math mode
        parsed = mv.parse(f"${text}$", **parse_timeout)
        if parsed:
            return parsed
    return mv.parse(text, **parse_timeout)


def same_answer(gold: list, prediction: list) -> bool:
    if not gold or not prediction:
        return False
    mv = _math_verify()
    timeouts = _timeouts()
    # verify() takes lists (a tuple would be wrapped as one opaque item and never match)
    return bool(mv.verify(list(gold), list(prediction), **({"timeout_seconds": None} if timeouts else {})))


def _has_value(parsed: list) -> bool:
    """math-verify returns [value, source text]; only the text when sympy could not read what it extracted."""
    return any(not isinstance(item, str) for item in parsed)


def grade_math(completion: str, reference: str, ended: bool = True) -> Grade:
    """`ended`: the completion stopped on its own (EOS), so a number at its very end is a final statement."""
    gold = parse_answer(reference, reference=True)
    if not gold:
        raise PowerflowError(f"{UNREADABLE} {reference!r}")
    prediction = parse_answer(completion, ended=ended)
    answer = str(prediction[-1]) if prediction else None  # math-verify returns [sympy value, source text]
    return Grade(same_answer(gold, prediction), answer, has_boxed(completion), tuple(prediction))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # The product form avoids huge binomials: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(answers: list, correct: list[bool]) -> bool:
    """maj@k: the most common final answer (equivalent forms count as one) is right.

    `answers` are math-verify parses of the k samples (empty when a sample has none,
    and those do not vote). Ties go to the answer seen first.
    """
    clusters: list[list[int]] = []  # sample indices per distinct answer
    for index, parsed in enumerate(answers):
        if not parsed:
            continue
        for cluster in clusters:
            if same_answer(answers[cluster[0]], parsed):
                cluster.append(index)
                break
        else:
            clusters.append([index])
    if not clusters:
        return False
    winner = max(clusters, key=len)  # max keeps the first of equal sizes
    return correct[winner[0]]


def pass_ks(k: int) -> list[int]:
    """The k' at which pass@k' is reported: powers of two below k, and k itself."""
    values = [2**i for i in range(int(math.log2(k)) + 1) if 2**i < k]
    return values + [k]


def summarize(rows: list[dict], by_prompt: list[list[dict]], k: int, measures: Measures) -> dict:
    """avg@k, pass@k' and maj@k over the problems (with their per-problem values) and the boxed fraction; grades
    each record in place (reference, answer, boxed, correct)."""
    accuracy, passes, majority, boxed = [], {j: [] for j in pass_ks(k)}, [], []
    for row, group in zip(rows, by_prompt):
        grades = [grade_math(r["completion"], row["answer"], ended=r["finish_reason"] == "eos") for r in group]
        for record, grade in zip(group, grades):
            record.update(reference=row["answer"], answer=grade.answer, boxed=grade.boxed, correct=grade.correct)
        correct = sum(g.correct for g in grades)
        accuracy.append(correct / k)
        for j in passes:
            passes[j].append(pass_at_k(k, correct, j))
        majority.append(majority_correct([g.parsed for g in grades], [g.correct for g in grades]))
        boxed += [g.boxed for g in grades]
    return {
        "avg_at_k": mean(accuracy),
        "avg_at_k_stderr": stderr(accuracy),  # across prompts: how much another draw of problems could move it
        "avg_at_k_per_prompt": accuracy,
        "pass_at": {str(j): mean(values) for j, values in passes.items()},
        "pass_at_k": mean(passes[k]),
        "pass_at_k_per_prompt": passes[k],
        "maj_at_k": mean(majority),
        "maj_at_k_per_prompt": [float(m) for m in majority],
        "boxed_frac": mean(boxed),
    }


def _rows(figures: dict, k: int) -> list[Row]:
    return [(f"avg@{k}", "avg_at_k", percent), ("  ± std. error over prompts", "avg_at_k_stderr", percent),
            *[(f"pass@{j}", f"pass_at.{j}", percent) for j in figures["pass_at"]],
            (f"maj@{k}", "maj_at_k", percent), ("with \\boxed{} answer", "boxed_frac", percent)]


def _line(m: dict) -> str:
    if "eval_avg_at_k" not in m:
        return ""
    return (f"avg@k {m['eval_avg_at_k']:.1%}  pass@k {m['eval_pass_at_k']:.1%}  maj@k {m['eval_maj_at_k']:.1%}  "
            f"boxed {m['eval_boxed_frac']:.0%}")


MATH = Task(
    summarize=summarize,
    applies=lambda rows: any(row.get("answer") for row in rows),
    needs_answers=True,
    unreadable=lambda answer: None if parse_answer(answer, reference=True) else UNREADABLE,
    min_k=1,
    min_k_why="",
    system_prompt=MATH_SYSTEM_PROMPT,
    metrics={
        "eval_avg_at_k": "math: mean accuracy of the --eval-k samples per problem (avg@k).",
        "eval_pass_at_k": "math: fraction of problems with at least one right sample among k (pass@k).",
        "eval_maj_at_k": "math: fraction of problems whose most common answer is right (maj@k).",
        "eval_boxed_frac": "math: fraction of samples with a \\boxed{} answer.",
    },
    paired=("avg_at_k", "pass_at_k", "maj_at_k"),
    rows=_rows,
    line=_line,
    plot_panels=(("eval: accuracy", ("eval_avg_at_k", "eval_pass_at_k", "eval_maj_at_k", "eval_boxed_frac")),),
    uses_embedder=False,
    uses_judge=False,
    states_answers=True,
    shows_samples=False,
    data_note="its reference answers are read only to grade these samples, never in training",
)
