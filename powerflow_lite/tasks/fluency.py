"""Fluency proxies that run offline on a CPU: is a text made of English words, whole, and not repeating itself?

    known = english_words()                                   # pyspellchecker's English list, 160k words
    english_share(words("The cat sat on the mat."), known)    # 1.0
    english_share(words("Generatedzzza Colour-talking-polka"), known)  # 0.5: "talking" and "polka" are words
    broken_share(words("MercePolansBusiby zzzap ok", lower=False))     # 2/3: glued capitals, a letter three times
    repeated_share(words("go home go home go home"))          # 2/4 of the word 3-grams repeat an earlier one

What each can and cannot tell you:

* English words: the share of a text's words (runs of letters, with inner apostrophes) found in the word list of
  the `pyspellchecker` package (lower-cased). Word salad of invented or glued words scores low; so do names the
  list lacks and British spellings ("colour"). Salad of real words ("Two Giant Black Volvo Switching") scores
  high: base log-prob per token is the guard rail for that.
* broken words: the share of words with a capital after a small letter inside them ("PolansBusiby") or one
  letter three or more times in a row ("zzz"): what sampling far into the tail glues together.
* repeated 3-grams: the share of a text's word 3-grams that already occurred earlier in it (loops).

Each is computed per sample; the creative task averages over a prompt's k samples, then over prompts.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import PowerflowError

WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")  # letters (any script), with inner apostrophes
GLUED = re.compile(r"[^\W\d_A-Z]+[A-Z]")  # a small letter, then a capital, inside one word
TRIPLED = re.compile(r"([^\W\d_])\1\1", re.IGNORECASE)
INSTALL_HINT = "pip install pyspellchecker (an English word list, offline)"


def words(text: str, lower: bool = True) -> list[str]:
    """The words of `text`: runs of letters with inner apostrophes (curly ones made straight)."""
    found = [w.replace("\u2019", "'") for w in WORD.findall(text)]
    return [w.lower() for w in found] if lower else found


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The English word list of the pyspellchecker package (lower-cased), loaded once."""
    try:
        from spellchecker import SpellChecker
    except ImportError:
        raise PowerflowError(f"--task creative measures fluency with an English word list: {INSTALL_HINT}") from None
    return frozenset(SpellChecker(language="en").word_frequency.keys())


def english_share(lowered: list[str], known: frozenset[str] | set[str]) -> float | None:
    """Share of the (lower-cased) words found in `known`; None when there are no words."""
    return sum(w in known for w in lowered) / len(lowered) if lowered else None


def broken_share(cased: list[str]) -> float | None:
    """Share of the (original-case) words glued at a capital or with a letter three times in a row; None when
    there are no words."""
    return sum(bool(GLUED.search(w) or TRIPLED.search(w)) for w in cased) / len(cased) if cased else None


def repeated_share(lowered: list[str], n: int = 3) -> float:
    """Share of the word n-grams that occurred earlier in the same text; 0 when it has none."""
    seen, repeats = set(), 0
    grams = [tuple(lowered[i:i + n]) for i in range(len(lowered) - n + 1)]
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def fluency(text: str, known: frozenset[str] | set[str]) -> dict[str, float | None]:
    """The three proxies of one text: english_words, broken_words (None for a text without words), repeated_3grams."""
    lowered = words(text)
    return {"english_words": english_share(lowered, known), "broken_words": broken_share(words(text, lower=False)),
            "repeated_3grams": repeated_share(lowered)}


def at_matched(curve: list[tuple[float, float]], x: float) -> float | None:
    """y at `x` on a curve of (x, y) points, by linear interpolation between the first two neighbouring points
    that bracket x, taken in their order up to the point of largest x: the part where x rises. Used with the
    base's (diversity, fluency) points in order of temperature, whose diversity rises and then falls once the
    text turns to noise; None where x lies outside what that part covers."""
    top = max(range(len(curve)), key=lambda i: curve[i][0])
    rising = curve[:top + 1]
    if len(rising) == 1:
        return rising[0][1] if x == rising[0][0] else None
    for (x0, y0), (x1, y1) in zip(rising, rising[1:]):
        if min(x0, x1) <= x <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None
