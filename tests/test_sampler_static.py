"""The static-cache sampler (samplers/static.py) against Hugging Face generate and teacher forcing, on tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from powerflow_lite.config import TrainConfig
from powerflow_lite.errors import PowerflowError
from powerflow_lite.logprobs import score
from powerflow_lite.model import add_lora, load_base_model, load_tokenizer
from powerflow_lite.samplers.rollouts import SamplingSettings, eos_token_ids, left_pad, sample_in_batches
from powerflow_lite.samplers.static import sample_static
from powerflow_lite.setup import setup
from powerflow_lite.tiny import write_tiny_model
from powerflow_lite.train import train


@pytest.fixture(scope="module")
def peaky_dir(tmp_path_factory):
    # logits x4: some rows reach EOS within a dozen tokens, others do not
    return write_tiny_model(tmp_path_factory.mktemp("static") / "model", logit_scale=4.0)


def policy(model_dir, quant="none", seed=0):
    """The tiny base with a LoRA whose B is not zero, so the adapter changes what is sampled."""
    torch.manual_seed(seed)
    model = add_lora(load_base_model(str(model_dir), quant, torch.device("cpu")), 8, 16, 0.0, "all-linear", False)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.eval(), load_tokenizer(str(model_dir))


def ragged_prompts(tokenizer) -> list[list[int]]:
    return [tokenizer("hello there, how are you").input_ids, tokenizer("a b").input_ids]


def test_greedy_tokens_equal_hf_generate(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    prompts = ragged_prompts(tokenizer)
    ids, mask = left_pad([p for p in prompts for _ in range(2)], tokenizer.pad_token_id, torch.device("cpu"))
    stop_ids = eos_token_ids(model, tokenizer)
    reference = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=16, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id))
    reference = reference[:, ids.shape[1]:]
    ours = sample_static(model, tokenizer, prompts, 2, SamplingSettings(16), greedy=True)
    assert torch.equal(ours.prompt_ids, ids) and torch.equal(ours.prompt_mask, mask)
    width = ours.completion_ids.shape[1]
    # generate pads finished rows with the pad id, as we do; its width is ours unless every row stopped earlier
    assert torch.equal(ours.completion_ids, reference[:, :width])
    for row in range(4):  # a row ends at its first stop id (included), or runs to the limit
        ended = [t for t, token in enumerate(reference[row].tolist()) if token in stop_ids]
        assert int(ours.lengths[row]) == (ended[0] + 1 if ended else 16)
        assert bool(ours.truncated[row]) == (not ended)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_sampling_in_batches_puts_the_rows_back_together(peaky_dir, batch_size):
    # greedy, so each row is a function of its prompt alone: batches of 1 or 3 (splitting a prompt's group, with
    # prompts of two lengths and rows that stop early) must give the one-call rollouts, re-padded identically
    model, tokenizer = policy(peaky_dir)
    prompts = ragged_prompts(tokenizer)

    def greedy(*args, **kwargs):
        return sample_static(*args, greedy=True, **kwargs)

    # greedy rows here never emit EOS: make the 5th token of prompt 1's completion a stop id instead
    stop = int(sample_static(model, tokenizer, prompts[:1], 1, SamplingSettings(16), greedy=True).completion_ids[0, 4])
    settings = SamplingSettings(16, stop_ids=(stop,))
    whole = sample_in_batches(greedy, model, tokenizer, prompts, 3, settings, 0)
    parts = sample_in_batches(greedy, model, tokenizer, prompts, 3, settings, batch_size)
    assert whole.lengths.unique().numel() > 1  # some rows stopped early: the completions are ragged
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "group_ids", "truncated"):
        assert torch.equal(getattr(parts, name), getattr(whole, name)), name
    torch.testing.assert_close(parts.sampled_logps, whole.sampled_logps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("quant, tolerance", [("none", 1e-5), ("nf4", 5e-4)])
def test_returned_logps_equal_teacher_forced_ones(peaky_dir, quant, tolerance):
    model, tokenizer = policy(peaky_dir, quant)
    torch.manual_seed(3)
    rollouts = sample_static(model, tokenizer, ragged_prompts(tokenizer), 3, SamplingSettings(12))
    teacher_forced, _ = score(model, rollouts, 8, adapter=True)  # [N, L], 0 on padding
    assert rollouts.sampled_logps.shape == teacher_forced.shape
    torch.testing.assert_close(rollouts.sampled_logps, teacher_forced, rtol=0, atol=tolerance)
    assert torch.all(rollouts.sampled_logps[rollouts.completion_mask == 0] == 0)
    assert rollouts.completion_mask.sum() > 0 and (rollouts.sampled_logps < 0).any()


def test_eos_rows_are_padded_and_masked(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    torch.manual_seed(0)
    rollouts = sample_static(model, tokenizer, ragged_prompts(tokenizer), 8, SamplingSettings(24))
    stops = set(eos_token_ids(model, tokenizer))
    assert rollouts.truncated.any() and (~rollouts.truncated).any(), "the seed must give both kinds of rows"
    for row in range(len(rollouts)):
        n = int(rollouts.lengths[row])
        tokens = rollouts.completion_ids[row].tolist()
        assert rollouts.completion_mask[row].tolist() == [1] * n + [0] * (len(tokens) - n)
        assert all(token == tokenizer.pad_token_id for token in tokens[n:])
        assert not any(token in stops for token in tokens[:n - 1])  # no stop id before the last token
        assert (tokens[n - 1] in stops) == (not rollouts.truncated[row])


def test_same_seed_same_samples_and_ignore_eos_fills_the_length(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(sample_static(model, tokenizer, ragged_prompts(tokenizer), 4, SamplingSettings(10)))
    assert torch.equal(draws[0].completion_ids, draws[1].completion_ids)
    torch.manual_seed(8)
    assert not torch.equal(sample_static(model, tokenizer, ragged_prompts(tokenizer), 4,
                                         SamplingSettings(10)).completion_ids, draws[0].completion_ids)
    full = sample_static(model, tokenizer, ragged_prompts(tokenizer), 4, SamplingSettings(10, ignore_eos=True))
    assert full.lengths.tolist() == [10] * 8 and full.truncated.all()


def test_min_new_tokens_forbids_early_stops(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    torch.manual_seed(1)
    rollouts = sample_static(model, tokenizer, ragged_prompts(tokenizer), 8, SamplingSettings(24, min_new_tokens=6))
    assert int(rollouts.lengths.min()) >= 6


def test_training_with_the_static_sampler_skips_the_pi_old_pass(tiny_model_dir, prompts_file, tmp_path,
                                                                 monkeypatch):
    import powerflow_lite.scoring as scoring

    calls = []
    real_score = scoring.score
    monkeypatch.setattr(scoring, "score", lambda model, rollouts, size, adapter=True:
                        calls.append(adapter) or real_score(model, rollouts, size, adapter=adapter))
    cfg = TrainConfig(model=str(tiny_model_dir), alpha=2.0, prompts=str(prompts_file), output=str(tmp_path / "out"),
                      quant="none", max_steps=2, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6,
                      micro_batch_size=4, lr=1e-2, warmup_steps=0, show_every=0, sampler="static")
    rows = [result.metrics for result in train(setup(cfg))]
    assert calls == [False, False]  # one base pass per step, no log pi_old pass
    assert all(torch.isfinite(torch.tensor(row["loss"])) and row["grad_norm"] > 0 for row in rows)
    # with one inner epoch every importance weight is 1 up to rounding: nothing clips
    assert all(row["clip_frac"] == 0 for row in rows)


def test_static_sampler_refuses_top_p(tiny_model_dir, prompts_file, tmp_path):
    with pytest.raises(PowerflowError, match="--sampler static does not implement --top-p"):
        TrainConfig(model=str(tiny_model_dir), alpha=2.0, prompts=str(prompts_file), sampler="static", top_p=0.9)


def test_bench_runs_both_samplers_on_the_same_work(capsys):
    import json

    from powerflow_lite.cli import main

    code = main(["bench", "--shape", "tiny", "--batch", "3", "--prompt-len", "8", "--new-tokens", "5", "--quant",
                 "none", "--lora-r", "4", "--device", "cpu", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and set(report["results"]) == {"hf generate", "powerflow static"}
    for row in report["results"].values():
        assert row["tokens"] == 3 * 5  # EOS ignored: both make exactly batch x new-tokens tokens
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
        assert row["ms_per_step"] == pytest.approx(1000 * row["seconds"] / 5)
    ratio = report["results"]["powerflow static"]["tokens_per_s"] / report["results"]["hf generate"]["tokens_per_s"]
    assert report["speedup"] == pytest.approx(ratio)
    step = report["train_step"]  # one trainer step at the same size: 3 completions (G = 3 when --batch < 8)
    assert step["completions"] == 3
    assert step["seconds"] == pytest.approx(step["time_sample"] + step["time_score"] + step["time_update"])
    assert min(step["time_sample"], step["time_score"], step["time_update"]) > 0
    assert main(["bench", "--batch", "0"]) == 2  # bad input: one line, exit 2


def test_draw_inverts_the_cumulative_distribution(monkeypatch):
    from powerflow_lite.samplers.static import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [2.0, 1.0, 1.0, 0.0]])  # the second row is not normalised
    # row 1: u * 1 in [0, 0.5) -> token 1, [0.5, 1) -> token 3 (zero-width tokens 0 and 2 are never drawn)
    # row 2: u * 4 in [0, 2) -> token 0, [2, 3) -> 1, [3, 4) -> 2; e.g. u = 0.74: 2.96 -> 1, u = 0.8: 3.2 -> 2
    for u, expected in [(0.0, [1, 0]), (0.49, [1, 0]), (0.5, [3, 1]), (0.74, [3, 1]), (0.8, [3, 2]),
                        (0.9999, [3, 2])]:
        monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u, dtype=torch.float64))
        assert draw(probs).tolist() == expected, u
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        draw(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        draw(torch.tensor([[0.0, 0.0]]))


def test_draws_follow_the_distribution():
    from powerflow_lite.samplers.static import draw

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 50) * 2, -1)  # [1, 50]
    n = 200_000
    counts = torch.bincount(draw(probs.expand(n, -1)), minlength=50).double()
    expected = probs[0].double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100  # 49 degrees of freedom: P(chi2 > 100) < 1e-4


def count_forwards(model) -> tuple[list, object]:
    shapes = []
    hook = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes, hook


def test_each_distinct_prompt_is_prefilled_once(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    prompts = ragged_prompts(tokenizer)
    shapes, hook = count_forwards(model)
    # prompts repeated as sample_in_batches passes them (one row each) are found to be the same prompt too
    torch.manual_seed(0)
    grouped = sample_static(model, tokenizer, prompts, 3, SamplingSettings(6), compact=False)
    torch.manual_seed(0)
    rows = sample_static(model, tokenizer, [p for p in prompts for _ in range(3)], 1, SamplingSettings(6),
                         compact=False)
    hook.remove()
    width = len(prompts[0])
    assert shapes[0] == (2, width) and shapes[1:grouped.completion_ids.shape[1]] == [(6, 1)] * (
        grouped.completion_ids.shape[1] - 1)
    assert shapes[grouped.completion_ids.shape[1]] == (2, width)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(grouped, name), getattr(rows, name)), name


def test_stopped_rows_leave_the_batch_and_nothing_else_changes(peaky_dir):
    model, tokenizer = policy(peaky_dir)
    prompts = ragged_prompts(tokenizer)
    # greedy, so each row is a function of its prompt alone; stops at a token the greedy rows emit early
    probe = sample_static(model, tokenizer, prompts, 1, SamplingSettings(16), greedy=True, compact=False)
    settings = SamplingSettings(16, stop_ids=(int(probe.completion_ids[1, 2]),))
    shapes, hook = count_forwards(model)
    compacted = sample_static(model, tokenizer, prompts, 4, settings, greedy=True, compact=True)
    hook.remove()
    full = sample_static(model, tokenizer, prompts, 4, settings, greedy=True, compact=False)
    assert (~full.truncated).sum() == 4 and full.truncated.sum() == 4  # prompt 2's rows stop, prompt 1's run on
    for name in ("completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(compacted, name), getattr(full, name)), name
    torch.testing.assert_close(compacted.sampled_logps, full.sampled_logps, rtol=0, atol=1e-5)
    assert {shape[0] for shape in shapes[1:]} == {8, 4}  # decode steps ran 8 rows, then the 4 still going


def test_auto_sampler_and_quant_pick_what_runs_fastest_here():
    from powerflow_lite.model import resolve_quant
    from powerflow_lite.samplers import resolve_sampler

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_sampler("auto", cpu)[0] == "static" and resolve_sampler("auto", gpu)[0] == "hf"
    assert resolve_sampler("auto", cpu, top_p=0.9)[0] == "hf"  # the static loop has no nucleus sampling
    assert resolve_sampler("hf", cpu) == ("hf", "as asked")
    assert resolve_quant("auto", cpu)[0] == "none" and resolve_quant("nf4", cpu) == ("nf4", "as asked")
    assert "CPU" in resolve_quant("auto", cpu)[1] and "CPU" in resolve_sampler("auto", cpu)[1]
