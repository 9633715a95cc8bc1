"""Fluency proxies (tasks/fluency.py) against hand-counted values, and on texts a reader would call good or bad."""

import pytest

from powerflow_lite.metrics import stderr
from powerflow_lite.tasks.creative import fluency_summary
from powerflow_lite.tasks.fluency import broken_share, english_share, english_words, fluency, repeated_share, words

GOOD = ["The Universe is a world of wonder, and one that we often don't have the courage to visit.",
        "She opened the window and listened to the rain falling softly on the quiet street below.",
        "Every morning the old fisherman walked down to the harbour and talked to the gulls."]
BAD = ["In Two Giant Black Volvo Switching It In Generatedzzza Counta by Hungarian MercePolansBusiby Blonde",
       "SANE YYYNCWTIS qui fòh esbac èvo en esci mainta BEACO",
       "One Superstarly Combined Map: Osmanwarmoshed, Scurabake Stick, and Curfabake (opened in November)."]


def test_words_are_runs_of_letters_with_inner_apostrophes():
    assert words("Don\u2019t stop-the MUSIC 42 times!") == ["don't", "stop", "the", "music", "times"]
    assert words("Fòh èvo") == ["fòh", "èvo"]
    assert words("Hello World", lower=False) == ["Hello", "World"]


def test_shares_against_hand_counts():
    assert english_share(words("The cat sat on zzz"), {"the", "cat", "sat"}) == pytest.approx(3 / 5)
    assert english_share([], {"the"}) is None
    assert broken_share(["MercePolans", "zzzap", "ok", "Hello", "HELLO"]) == pytest.approx(2 / 5)
    # (go home go), (home go home), (go home go), (home go home): the last two repeat earlier ones
    assert repeated_share(words("go home go home go home")) == pytest.approx(2 / 4)
    assert repeated_share(words("one two")) == 0.0


def test_the_word_list_separates_prose_from_word_salad():
    known = english_words()
    good = [fluency(t, known) for t in GOOD]
    bad = [fluency(t, known) for t in BAD]
    assert all(g["english_words"] == 1.0 for g in good[:2]) and good[2]["english_words"] >= 14 / 15  # "harbour"
    # unknown, counted by hand: generatedzzza, counta, mercepolansbusiby (14 words); yyyncwtis, qui, fòh, esbac,
    # èvo, esci, mainta, beaco (10 words); superstarly, osmanwarmoshed, scurabake, curfabake (12 words)
    assert [b["english_words"] for b in bad] == pytest.approx([11 / 14, 2 / 10, 8 / 12])
    assert [b["broken_words"] for b in bad] == pytest.approx([2 / 14, 1 / 10, 0.0])
    assert max(b["english_words"] for b in bad) < min(g["english_words"] for g in good) - 0.1
    assert all(g["broken_words"] == 0.0 and g["repeated_3grams"] == 0.0 for g in good)


def test_summary_averages_samples_then_prompts():
    by_prompt = [[{"completion": "the cat sat"}, {"completion": "zzzq blorf"}],  # English 1, 0; broken 0, 1/2
                 [{"completion": "a dog ran"}, {"completion": "42"}]]  # English 1 (no words: left out); broken 0
    summary = fluency_summary(by_prompt)
    assert summary["english_words_per_prompt"] == pytest.approx([0.5, 1.0])
    assert summary["english_words"] == pytest.approx(0.75)
    assert summary["english_words_stderr"] == pytest.approx(stderr([0.5, 1.0])) == pytest.approx(0.25)
    assert summary["broken_words"] == pytest.approx((0.25 + 0.0) / 2)
    assert summary["repeated_3grams"] == 0.0


def test_matched_reading_on_a_synthetic_curve():
    from powerflow_lite.tasks.fluency import at_matched

    # diversity against fluency at temperatures 1, 1.2, 1.5, 2: diversity peaks at 1.5, then falls (noise)
    curve = [(60.0, 0.98), (70.0, 0.90), (80.0, 0.70), (75.0, 0.40)]
    assert at_matched(curve, 65.0) == pytest.approx(0.94)  # halfway between the first two points
    assert at_matched(curve, 77.5) == pytest.approx(0.75)  # on the rising part, not after the peak (0.40 side)
    assert at_matched(curve, 70.0) == pytest.approx(0.90)
    assert at_matched(curve, 85.0) is None and at_matched(curve, 55.0) is None  # beyond what temperature reaches
    assert at_matched([(60.0, 0.9)], 60.0) == 0.9 and at_matched([(60.0, 0.9)], 61.0) is None
