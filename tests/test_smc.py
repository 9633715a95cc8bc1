"""`--sampler power-smc` (samplers/smc.py): its resampling and schedule by hand, that its answers are distributed
as p_base^alpha on a problem small enough to enumerate (at fixed length and with EOS), that resampling keeps every
particle's cache rows with it, and its command line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_error_line, run_cli

from powerflow_lite import exact
from powerflow_lite.logprobs import completion_logprobs, score
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.samplers import SAMPLERS
from powerflow_lite.samplers.rollouts import PowerSettings, SamplingSettings
from powerflow_lite.samplers.smc import effective_sample_size, particles, ramp, systematic
from powerflow_lite.tiny import write_tiny_model

ALPHA, LENGTH = 4.0, 2


def test_systematic_resampling_by_hand():
    # weights (0.5, 0.25, 0.25, 0) and u = 0.5: positions (0.5 + i) / 4 = 0.125, 0.375, 0.625, 0.875 against the
    # cumulative weights 0.5, 0.75, 1, 1: ancestors 0, 0, 1, 2 (particle 0 twice, N w = 2; the zero weight never)
    weights = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
    assert systematic(weights, torch.tensor([0.5], dtype=torch.float64)).tolist() == [[0, 0, 1, 2]]
    # u = 0: positions 0, 0.25, 0.5, 0.75: ancestors 0, 0, 1, 2 again (a position on a boundary goes right)
    assert systematic(weights, torch.tensor([0.0], dtype=torch.float64)).tolist() == [[0, 0, 1, 2]]
    # each row its own weights: equal weights keep every particle
    both = torch.tensor([[0.25] * 4, [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert systematic(both, torch.tensor([0.5, 0.9], dtype=torch.float64)).tolist() == [[0, 1, 2, 3], [2, 2, 2, 2]]


def test_effective_sample_size_and_ramp_by_hand():
    # log weights (0, log 3): w = (0.25, 0.75), ESS = 1 / (0.0625 + 0.5625) = 1.6
    ess = effective_sample_size(torch.tensor([[0.0, 3.0]], dtype=torch.float64).log().nan_to_num(neginf=0.0))
    assert ess.item() == pytest.approx(1.6)
    assert effective_sample_size(torch.zeros(1, 5, dtype=torch.float64)).item() == pytest.approx(5.0)
    # alpha 4 over 3 tokens: 1 + 3 (t + 1) / 3 = 2, 3, 4, then 4; no ramp: 4 from the first token
    assert [ramp(t, 4.0, 3) for t in range(5)] == [2.0, 3.0, 4.0, 4.0, 4.0]
    assert ramp(0, 4.0, 0) == 4.0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A peaky tiny model over 8 tokens: its completions of 2 tokens, with p_base^alpha exactly, with and without
    EOS."""
    directory = write_tiny_model(tmp_path_factory.mktemp("smc") / "model", hidden_size=32, chat_template=False,
                                 alphabet="abcde", logit_scale=4.0)
    model, tokenizer = load_base_model(str(directory), "none", torch.device("cpu")), load_tokenizer(str(directory))
    prompt = tokenizer("ab").input_ids
    problems = {eos: exact.build_problem(model, [prompt], LENGTH, len(tokenizer), ALPHA,
                                         stop_ids=(tokenizer.eos_token_id,) if eos else (),
                                         pad_id=tokenizer.pad_token_id) for eos in (False, True)}
    return model, tokenizer, prompt, problems, directory


def distance(toy, eos: bool, answers: int = 3000, **power) -> tuple[float, object]:
    """Total variation between the answers' distribution and p_base^alpha, and the rollouts."""
    model, tokenizer, prompt, problems, _ = toy
    torch.manual_seed(0)
    settings = SamplingSettings(LENGTH, ignore_eos=not eos, power=PowerSettings(ALPHA, **power))
    rollouts = SAMPLERS["power-smc"].sample(model, tokenizer, [prompt], answers, settings)
    shares = exact.empirical(problems[eos], rollouts.completion_ids, rollouts.completion_mask)
    return exact.total_variation(shares, problems[eos].target_alpha[0].exp()), rollouts


def test_more_particles_come_closer_to_p_base_to_the_alpha_at_fixed_length(toy):
    # 3000 answers from p_alpha itself are about 0.04 from it (sampling noise). One particle is the proposal, the
    # base at temperature 1/alpha, 0.20 away; the particles' weights bring 4 to about 0.08 and 32 to the noise.
    one, single = distance(toy, eos=False, particles=1)
    four, _ = distance(toy, eos=False, particles=4)
    many, rollouts = distance(toy, eos=False, particles=32)
    assert one > 0.15 and many < 0.06 and many < four < one
    assert single.ess.tolist() == [1.0] * 3000 and single.resamples.sum() == 0  # one particle: nothing to weigh
    assert rollouts.sampled_tokens.tolist() == [64] * 3000  # 32 particles of 2 tokens per answer


@pytest.mark.parametrize("power", [dict(particles=32), dict(particles=32, ramp_tokens=2, proposal_temperature=1.0,
                                                                ess_threshold=1.0)],
                         ids=["plain", "ramp, another proposal, resampling at every token"])
def test_with_eos_the_answers_are_whole_sequences_of_p_base_to_the_alpha(toy, power):
    # With EOS, answers of 1 and 2 tokens: p_alpha puts 98.7% on the answer that ends at once, the proposal (one
    # particle) far less, 0.6 away in total variation. An ended particle keeps its weight; the ramp's catch-up and
    # the auxiliary weight of another proposal keep the target: all within the noise of 3000 draws
    _, tokenizer, _, problems, _ = toy
    tv, rollouts = distance(toy, eos=True, **power)
    target = problems[True].target_alpha[0].exp()
    short = problems[True].lengths == 1
    shares = exact.empirical(problems[True], rollouts.completion_ids, rollouts.completion_mask)
    assert 0.9 < target[short].sum() < 0.99 and distance(toy, eos=True, answers=1000, particles=1)[0] > 0.5
    assert tv < 0.03 and abs(float(shares[short].sum() - target[short].sum())) < 0.01
    assert (rollouts.sampled_tokens >= 32).all() and (rollouts.sampled_tokens <= 64).all()


def test_without_resampling_the_weights_are_p_base_to_the_alpha_over_the_proposal(toy):
    # Never resampled (threshold 1e-9), a particle's log weight is the sum of its steps' log Z_t; by the algebra of
    # the power proposal q = p^alpha / Z that is alpha log p_base(y) - log q(y) exactly, q the base at 1/alpha,
    # here scored afresh over the whole completion (with EOS, so the ended particles stop adding)
    model, tokenizer, prompt, _, _ = toy
    torch.manual_seed(3)
    settings = SamplingSettings(5, power=PowerSettings(ALPHA, particles=6, ess_threshold=1e-9))
    population, log_w = particles(model, tokenizer, [prompt, prompt], settings)
    assert population.resamples.sum() == 0 and population.lengths.min() < 5  # some ended early
    log_p = completion_logprobs(model, population)[0].sum(-1).double()
    log_q = completion_logprobs(model, population, temperature=1 / ALPHA)[0].sum(-1).double()
    torch.testing.assert_close(log_w.flatten(), ALPHA * log_p - log_q, rtol=0, atol=1e-4)


def test_resampling_moves_each_particles_cache_with_it(toy):
    # Resampling at every token (threshold 1), three prompts of different lengths (left padding), two answers each:
    # the log-probs the sampler kept for each answer are the model's log-probs of that answer given its prompt,
    # scored afresh. A cache row left behind by its particle would condition a token on another particle's prefix.
    model, tokenizer, _, _, _ = toy
    prompts = [tokenizer(text).input_ids for text in ("ab", "cdeab", "ba")]
    torch.manual_seed(1)
    settings = SamplingSettings(6, ignore_eos=True, power=PowerSettings(2.0, particles=4, ess_threshold=1.0))
    rollouts = SAMPLERS["power-smc"].sample(model, tokenizer, prompts, 2, settings)
    assert (rollouts.resamples >= 3).all()  # resampled on most of the 6 tokens
    rescored = score(model, rollouts, 16, adapter=False)[0]
    torch.testing.assert_close(rollouts.sampled_logps, rescored, rtol=0, atol=1e-4)
    assert rollouts.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert all(tuple(row[mask.bool()].tolist()) == tuple(prompts[g]) for row, mask, g in
               zip(rollouts.prompt_ids, rollouts.prompt_mask, rollouts.group_ids.tolist()))
    assert rollouts.ess_trace.shape == (6, 6) and (rollouts.ess_trace >= 1).all() and (rollouts.ess_trace <= 4).all()


def test_answers_that_end_early_leave_the_batch(toy):
    # With EOS on, answers of one prompt end at different steps: the answers whose particles have all ended leave
    # the decode batch (their cache rows dropped), the others continue; each answer's cost is its particles' tokens
    model, tokenizer, prompt, _, _ = toy
    torch.manual_seed(2)
    settings = SamplingSettings(8, power=PowerSettings(ALPHA, particles=3))
    rollouts = SAMPLERS["power-smc"].sample(model, tokenizer, [prompt], 40, settings)
    lengths = rollouts.lengths
    assert lengths.min() < lengths.max()  # some ended before others
    assert ((rollouts.sampled_tokens >= 3) & (rollouts.sampled_tokens <= 24)).all()
    rescored = score(model, rollouts, 64, adapter=False)[0]
    torch.testing.assert_close(rollouts.sampled_logps, rescored, rtol=0, atol=1e-4)


def test_eval_reports_cost_resamplings_and_the_ess_trace(toy, tmp_path, capsys):
    *_, directory = toy
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("ab", "cd")))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", "--model", directory, "--data", data, "--task", "creative", "-k", 2,
                                         "--max-new-tokens", 4, "--sampler", "power-smc", "--particles", 4,
                                         "--ess-threshold", 1, "--chat-template", "none", "--output", out])
    assert code == 0, err
    figures = json.loads((out / "summary.json").read_text())["results"]["base"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert figures["sampled_tokens_per_answer"] == pytest.approx(sum(s["sampled_tokens"] for s in samples) / 4)
    assert figures["resamples_per_answer"] == pytest.approx(sum(s["resamples"] for s in samples) / 4)
    for s in samples:
        assert s["tokens"] <= len(s["ess_trace"]) <= 4 and all(1 <= e <= 4 for e in s["ess_trace"])
        assert s["sampled_tokens"] >= s["tokens"] and 1 <= s["ess"] <= 4
    assert "resamplings per answer" in stdout and "tokens sampled per answer" in stdout


@pytest.mark.parametrize("args, message", [
    (["--particles", "0"], "--particles must be > 0"),
    (["--ess-threshold", "0"], "--ess-threshold must be in (0, 1]"),
    (["--ess-threshold", "1.5"], "--ess-threshold must be in (0, 1]"),
    (["--alpha-ramp-tokens", "-1"], "--alpha-ramp-tokens must be >= 0"),
    (["--top-p", "0.9"], "--sampler power-smc does not implement --top-p"),
    (["--min-new-tokens", "1"], "--min-new-tokens"),
    (["--adapter", "some/adapter"], "--sampler power-smc draws from the base itself"),
])
def test_bad_smc_settings_are_one_line(toy, capsys, args, message):
    *_, directory = toy
    code, _, err = run_cli(capsys, ["sample", "--model", directory, "--prompt", "ab", "--sampler", "power-smc", *args])
    assert code == 2 and message in one_error_line(err)


def test_a_command_without_a_sampler_refuses_its_options(capsys):
    for command in (["train", "--model", "m", "--prompts", "p"], ["preview", "--model", "m", "--prompts", "p"]):
        code, _, err = run_cli(capsys, [*command, "--particles", "4"])
        assert code == 2 and "No such option: --particles" in one_error_line(err)
    code, _, err = run_cli(capsys, ["train", "--model", "m", "--prompts", "p", "--alpha", "4", "--sampler",
                                    "power-smc"])
    assert code == 2 and "training samples the policy itself" in one_error_line(err)
