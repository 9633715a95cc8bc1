"""The inference-time power samplers (samplers/resample.py, samplers/mcmc.py): their arithmetic by hand, and that
what they return is distributed as p_base^alpha on a problem small enough to enumerate every completion."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import one_error_line, run_cli

from powerflow_lite import exact
from powerflow_lite.model import load_base_model, load_tokenizer
from powerflow_lite.samplers import SAMPLERS
from powerflow_lite.samplers.mcmc import log_acceptance
from powerflow_lite.samplers.resample import importance_weights
from powerflow_lite.samplers.rollouts import PowerSettings, SamplingSettings
from powerflow_lite.samplers.static import sample_static
from powerflow_lite.tiny import write_tiny_model

ALPHA, LENGTH = 4.0, 2


def test_importance_weights_by_hand():
    # alpha 2; proposals with log p_base -1, -2 and log q -0.5, -1.5:
    # log w = 2 (-1) + 0.5 = -1.5 and 2 (-2) + 1.5 = -2.5, so w = (1, e^-1) / (1 + e^-1) = (0.7311, 0.2689)
    # ESS = 1 / (0.7311^2 + 0.2689^2) = 1.6481
    weights, ess = importance_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, -1.5]]), 2.0)
    first = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(weights, torch.tensor([[first, 1 - first]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert ess.item() == pytest.approx(1 / (first**2 + (1 - first) ** 2), abs=1e-12)
    # equal weights: every proposal counts (ESS = N)
    assert importance_weights(torch.zeros(1, 4), torch.zeros(1, 4), 3.0)[1].item() == pytest.approx(4.0)


def test_acceptance_ratio_by_hand():
    # alpha 4; the current suffix has log p_base -3 (-1, -2) and log q -2; the proposed one -1.5 and -1:
    # log r = 4 (-1.5 - (-3)) + (-2) - (-1) = 6 - 1 = 5, answers of the same length
    assert log_acceptance(4.0, [-1.5], [-1.0, -2.0], [-1.0], [-0.5, -1.5], 3, 3) == pytest.approx(5.0)
    # a proposal the target likes less: 4 (-3 - (-1)) + (-1) - (-2) = -7
    assert log_acceptance(4.0, [-1.0, -2.0], [-1.0], [-0.5, -1.5], [-1.0], 3, 3) == pytest.approx(-7.0)
    # the first, restarted at position 1 of a 3-token answer, the proposal ending (EOS) after 1 token: the answer
    # goes from 3 tokens to 2, and a restart at 1 is chosen with chance 1/2 from it against 1/3 from the
    # current one, so log r = 5 + log 3 - log 2
    assert log_acceptance(4.0, [-1.5], [-1.0, -2.0], [-1.0], [-0.5, -1.5], 2, 3) == pytest.approx(
        5.0 + math.log(3 / 2))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A peaky tiny model over 8 tokens and its 64 completions of 2 tokens, with p_base^alpha exactly."""
    directory = write_tiny_model(tmp_path_factory.mktemp("power") / "model", hidden_size=32, chat_template=False,
                                 alphabet="abcde", logit_scale=4.0)
    model, tokenizer = load_base_model(str(directory), "none", torch.device("cpu")), load_tokenizer(str(directory))
    prompt = tokenizer("ab").input_ids
    problem = exact.build_problem(model, [prompt], LENGTH, len(tokenizer), ALPHA, stop_ids=())
    return model, tokenizer, prompt, problem, directory


def distance(toy, sampler: str, settings: SamplingSettings, answers: int = 3000) -> float:
    """Total variation between the answers' distribution and p_base^alpha."""
    model, tokenizer, prompt, problem, _ = toy
    torch.manual_seed(0)
    rollouts = SAMPLERS[sampler].sample(model, tokenizer, [prompt], answers, settings)
    shares = exact.empirical(problem, rollouts.completion_ids, rollouts.completion_mask)
    return exact.total_variation(shares, problem.target_alpha[0].exp())


def test_both_samplers_return_p_base_to_the_alpha(toy):
    # 3000 answers drawn from p_alpha itself are 0.04 from it in total variation (sampling noise); the proposal,
    # the base at temperature 1/alpha, is 0.20 away: it is not p_alpha
    settings = SamplingSettings(LENGTH, ignore_eos=True)
    tempered = distance(toy, "static", SamplingSettings(LENGTH, ignore_eos=True, temperature=1 / ALPHA))
    resampled = distance(toy, "power-resample", SamplingSettings(LENGTH, ignore_eos=True,
                                                                  power=PowerSettings(ALPHA, candidates=32)))
    few = distance(toy, "power-resample", SamplingSettings(LENGTH, ignore_eos=True,
                                                            power=PowerSettings(ALPHA, candidates=4)))
    chains = distance(toy, "power-mcmc", SamplingSettings(LENGTH, ignore_eos=True,
                                                           power=PowerSettings(ALPHA, mcmc_steps=10, block_tokens=1)))
    assert tempered > 0.15 and distance(toy, "static", settings) > 0.4
    assert resampled < 0.07 and chains < 0.07  # at the noise of 3000 draws
    assert resampled < few < tempered  # more proposals per answer, closer


def test_metropolis_hastings_with_eos_returns_p_base_to_the_alpha(toy):
    # With EOS, answers of 1 and 2 tokens: a restart position is drawn from the answer it restarts, so the ratio
    # carries |y| / |y'|. At alpha 1 the proposal is p_base itself and only that term decides; without it the
    # chains hold 1-token answers about half as often as p_base does (9% against 17%, TV 0.09).
    model, tokenizer, prompt, _, _ = toy
    problem = exact.build_problem(model, [prompt], LENGTH, len(tokenizer), 1.0, stop_ids=(tokenizer.eos_token_id,),
                                  pad_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    settings = SamplingSettings(LENGTH, power=PowerSettings(1.0, mcmc_steps=10, block_tokens=LENGTH))
    rollouts = SAMPLERS["power-mcmc"].sample(model, tokenizer, [prompt], 3000, settings)
    shares = exact.empirical(problem, rollouts.completion_ids, rollouts.completion_mask)
    target = problem.target_alpha[0].exp()
    short = problem.lengths == 1
    assert 0.1 < target[short].sum() < 0.9  # lengths vary
    assert exact.total_variation(shares, target) < 0.07
    assert abs(float(shares[short].sum() - target[short].sum())) < 0.03


def test_one_candidate_is_plain_sampling_at_the_proposal_temperature(toy):
    model, tokenizer, prompt, _, _ = toy
    settings = SamplingSettings(6, power=PowerSettings(ALPHA, candidates=1))
    torch.manual_seed(3)
    resampled = SAMPLERS["power-resample"].sample(model, tokenizer, [prompt], 5, settings)
    torch.manual_seed(3)
    plain = sample_static(model, tokenizer, [prompt], 5, SamplingSettings(6, temperature=1 / ALPHA))
    assert torch.equal(resampled.completion_ids, plain.completion_ids)
    assert resampled.ess.tolist() == [1.0] * 5
    assert resampled.sampled_tokens.tolist() == plain.completion_mask.sum(-1).tolist()  # one proposal each


def test_cost_is_every_proposal(toy):
    model, tokenizer, prompt, _, _ = toy
    settings = SamplingSettings(LENGTH, ignore_eos=True, power=PowerSettings(ALPHA, candidates=8, mcmc_steps=3,
                                                                              block_tokens=1))
    resampled = SAMPLERS["power-resample"].sample(model, tokenizer, [prompt], 2, settings)
    assert resampled.sampled_tokens.tolist() == [16, 16]  # 8 proposals of 2 tokens per answer
    # two blocks of one token, each followed by 3 proposals of the suffix after a position of the answer so far:
    # block 1: 1 + 3 x 1; block 2: 1 + 3 x (1 or 2), up to the block's end from a restart at 1 or 0
    costs = SAMPLERS["power-mcmc"].sample(model, tokenizer, [prompt], 4, settings).sampled_tokens.tolist()
    assert all(8 <= cost <= 11 for cost in costs)


def test_eval_reports_the_cost_and_the_effective_sample_size(toy, tmp_path, capsys):
    _, _, _, _, directory = toy
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("ab", "cd")))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", "--model", directory, "--data", data, "--task", "creative", "-k", 2,
                                         "--max-new-tokens", 3, "--sampler", "power-resample", "--candidates", 4,
                                         "--chat-template", "none", "--output", out])
    assert code == 0, err
    figures = json.loads((out / "summary.json").read_text())["results"]["base"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert figures["sampled_tokens_per_answer"] == pytest.approx(sum(s["sampled_tokens"] for s in samples) / 4)
    assert all(s["sampled_tokens"] >= s["tokens"] and 1 <= s["ess"] <= 4 for s in samples)
    assert "tokens sampled per answer" in stdout and "effective sample size" in stdout


@pytest.mark.parametrize("args, message", [
    (["--sampler", "power-resample", "--candidates", "0"], "--candidates must be > 0"),
    (["--sampler", "power-resample", "--power-alpha", "0"], "--power-alpha must be > 0"),
    (["--sampler", "power-mcmc", "--proposal-temperature", "-1"], "--proposal-temperature must be >= 0"),
    (["--sampler", "power-mcmc", "--min-new-tokens", "1"], "--min-new-tokens"),
    (["--sampler", "power-resample", "--top-p", "0.9"], "--sampler power-resample does not implement --top-p"),
])
def test_bad_power_settings_are_one_line(toy, capsys, args, message):
    _, _, _, _, directory = toy
    code, _, err = run_cli(capsys, ["sample", "--model", directory, "--prompt", "ab", *args])
    assert code == 2 and message in one_error_line(err)


def test_training_refuses_a_power_sampler(capsys):
    code, _, err = run_cli(capsys, ["train", "--model", "m", "--prompts", "p", "--alpha", "4", "--sampler",
                                    "power-mcmc"])
    assert code == 2 and "training samples the policy itself" in one_error_line(err)


def test_p_alpha_ess_by_hand():
    from powerflow_lite.evaluate import p_alpha_ess

    # one prompt, k = 2, alpha 2: log w = 2 (-1) - (-1) = -1 and 2 (-1) - (-2) = 0, so w = (e^-1, 1) / (1 + e^-1)
    # = (0.2689, 0.7311) and ESS / k = 1 / (2 (0.2689^2 + 0.7311^2)) = 0.8240
    records = [{"logp": -1.0, "logp_base": -1.0}, {"logp": -2.0, "logp_base": -1.0}]
    small = 1 / (1 + math.e)
    expected = 1 / (2 * (small**2 + (1 - small) ** 2))
    assert p_alpha_ess(records, 2, 2.0)["p_alpha_ess"] == pytest.approx(expected, abs=1e-12)
    # the base's own samples (no logp_base: logp is the base's) at alpha 1 are p_alpha itself: ESS / k = 1
    assert p_alpha_ess([{"logp": -1.0}, {"logp": -3.0}], 2, 1.0)["p_alpha_ess"] == pytest.approx(1.0)


def test_eval_of_a_run_reports_p_alpha_ess_at_the_runs_alpha(tiny_model_dir, prompts_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--model", tiny_model_dir, "--alpha", "3", "--prompts", prompts_file, "--output",
                            run, "--max-steps", "1", "--max-new-tokens", "4", "--prompts-per-step", "1",
                            "--samples-per-prompt", "2", "--quant", "none", "--show-every", "0"])[0] == 0
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", "--run", run, "--data", prompts_file, "--task", "creative", "-k", 2,
                                         "--compare-base", "--output", out])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for variant in ("base", "adapter"):
        figures = summary["results"][variant]
        assert figures["p_alpha"] == 3.0 and 0.5 <= figures["p_alpha_ess"] <= 1.0  # k = 2: between 1/k and 1
    assert "p_alpha_ess" in summary["change"] and "p_alpha ESS" in stdout
    # samples kept from EOS early are not the model's own: no ESS is reported for them
    code, stdout, err = run_cli(capsys, ["eval", "--run", run, "--data", prompts_file, "--task", "creative", "-k", 2,
                                         "--min-new-tokens", 2, "--output", tmp_path / "eval-min"])
    assert code == 0, err
    figures = json.loads((tmp_path / "eval-min" / "summary.json").read_text())["results"]["adapter"]
    assert "p_alpha_ess" not in figures and "p_alpha ESS" not in stdout
