"""Tiny random-weight models and a character tokenizer, built in code.

Tests, examples and `powerflow bench` need a real Hugging Face model directory
without any download. This module writes one: a 2-layer Qwen2 with a character
level tokenizer (`tokenizers` library) and a ChatML chat template.

    python -c "from powerflow_lite.tiny import write_tiny_model; write_tiny_model('tiny')"
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARACTERS = list(string.printable)  # digits, letters, punctuation, whitespace

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(chat_template: bool = True, alphabet: str | None = None):
    """A character-level fast tokenizer: every printable ASCII character (or each of `alphabet`) is one token.

    A small alphabet gives a vocabulary small enough to enumerate every completion (`powerflow_lite.exact`).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = CHARACTERS if alphabet is None else list(dict.fromkeys(alphabet))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + characters)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    logit_scale: float = 1.0,
):
    """A random Qwen2 causal LM; `logit_scale` > 1 makes its next-token distributions peakier."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
        pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model.eval()


def write_tiny_model(
    path: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    chat_template: bool = True,
    alphabet: str | None = None,
    logit_scale: float = 1.0,
) -> Path:
    """Write a tiny model + tokenizer directory (safetensors) that `from_pretrained` loads."""
    path = Path(path)
    tokenizer = build_tokenizer(chat_template=chat_template, alphabet=alphabet)
    model = build_tiny_model(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, seed=seed,
                             logit_scale=logit_scale)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
