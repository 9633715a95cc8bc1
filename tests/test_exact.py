"""Exact evaluation (`exact.py`): the enumeration, log-probs and KL against brute force, the targets by hand,
and the claim it exists to check: training through the real loop moves the policy to p_base^alpha."""

import json
import math

import pytest
import torch

from powerflow_lite import exact
from powerflow_lite.config import TrainConfig
from powerflow_lite.setup import setup
from powerflow_lite.tiny import build_tiny_model, write_tiny_model
from powerflow_lite.train import train

EOS = 2  # <|im_end|> in the tiny tokenizer
LOG = torch.log


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: with other jobs on a 2-core machine, two spinning OpenMP threads make the file
    several times slower (measured 74 s against 18 s under such load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def masked_rows(ids, mask) -> list[tuple[int, ...]]:
    """Each completion as the tuple of its real tokens."""
    return [tuple(row[: int(m.sum())].tolist()) for row, m in zip(ids, mask)]


# --- enumerate_completions


@pytest.mark.parametrize("vocab, length, stops, expected", [
    (3, 2, (), 9),  # 3^2
    (8, 3, (), 512),  # 8^3
    (3, 2, (2,), 7),  # 1 + 2 + 2^2: the stop alone, one token then the stop, two non-stops
    (8, 3, (2,), 400),  # 1 + 7 + 49 + 7^3 = 57 + 343
    (5, 3, (1, 2), 53),  # 2 * (1 + 3 + 9) + 3^3 = 26 + 27 (two stops: each k-prefix ends in either)
])
def test_enumeration_counts(vocab, length, stops, expected):
    ids, mask = exact.enumerate_completions(vocab, length, stops)
    assert ids.shape == mask.shape == (expected, length)
    assert len(set(masked_rows(ids, mask))) == expected  # every completion once


def test_enumeration_rows_by_hand():
    # V = 3, L = 2, stop 2, pad 0: [2] | [0 2] [1 2] | [0 0] [0 1] [1 0] [1 1]
    ids, mask = exact.enumerate_completions(3, 2, stop_ids=(2,), pad_id=0)
    rows = sorted(zip(map(tuple, ids.tolist()), map(tuple, mask.tolist())))
    assert rows == sorted([
        ((2, 0), (1, 0)),
        ((0, 2), (1, 1)), ((1, 2), (1, 1)),
        ((0, 0), (1, 1)), ((0, 1), (1, 1)), ((1, 0), (1, 1)), ((1, 1), (1, 1)),
    ])


@pytest.mark.parametrize("stops", [(2,), (0, 3)])
def test_masks_cover_up_to_and_including_the_first_stop(stops):
    pad = 4
    ids, mask = exact.enumerate_completions(5, 3, stops, pad_id=pad)
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (3 - n)  # contiguous from the start
        assert row[n:] == [pad] * (3 - n)  # padded after the end
        assert not any(t in stops for t in row[: n - 1])  # no stop before the last real token
        assert n == 3 or row[n - 1] in stops  # a short completion ends at a stop


# --- exact log-probs and KL against brute force (plain forward passes, float64 loops)


def brute_force_logps(model, prompt: list[int], sequences) -> dict[tuple[int, ...], float]:
    """log p(y | q) = sum_t log_softmax(logits at the position before y_t)[y_t], one plain forward per prefix."""
    next_token = {}  # prefix -> log-probs of the next token, float64
    for sequence in sequences:
        for t in range(len(sequence)):
            if sequence[:t] not in next_token:
                with torch.no_grad():
                    logits = model(torch.tensor([prompt + list(sequence[:t])])).logits[0, -1]
                next_token[sequence[:t]] = logits.double().log_softmax(-1).tolist()
    return {y: math.fsum(next_token[y[:t]][token] for t, token in enumerate(y)) for y in sequences}


def brute_force_sequences(vocab: int, stops: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Two-token completions, cut after a stop in first place."""
    return [(y1,) if y1 in stops else (y1, y2) for y1 in range(vocab) for y2 in range(vocab)
            if not (y1 in stops and y2 > 0)]


@pytest.fixture(scope="module")
def two_models():
    """A base and a different policy over 5 tokens (ids 0..4, EOS = 2)."""
    return build_tiny_model(5, hidden_size=16, seed=0, logit_scale=3.0), build_tiny_model(5, hidden_size=16, seed=1)


@pytest.mark.parametrize("stops", [(), (EOS,)], ids=["fixed-length", "eos"])
def test_kl_matches_brute_force(two_models, stops):
    base, policy = two_models
    prompts, alpha = [[3, 4], [1, 0, 4]], 2.0
    problem = exact.build_problem(base, prompts, max_new_tokens=2, vocab_size=5, alpha=alpha, stop_ids=stops)
    report = exact.evaluate(policy, problem)
    sequences = brute_force_sequences(5, stops)
    assert sorted(masked_rows(problem.completion_ids, problem.completion_mask)) == sorted(sequences)

    kls, base_kls, lengths = [], [], []
    for q, prompt in enumerate(prompts):
        p, pi = brute_force_logps(base, prompt, sequences), brute_force_logps(policy, prompt, sequences)
        assert math.fsum(math.exp(v) for v in p.values()) == pytest.approx(1.0, abs=1e-6)
        assert math.fsum(math.exp(v) for v in pi.values()) == pytest.approx(1.0, abs=1e-6)
        log_norm = math.log(math.fsum(math.exp(alpha * v) for v in p.values()))
        p_alpha = {y: alpha * v - log_norm for y, v in p.items()}  # log p^alpha / sum p^alpha
        kls.append(math.fsum(math.exp(pi[y]) * (pi[y] - p_alpha[y]) for y in sequences))
        base_kls.append(math.fsum(math.exp(p[y]) * (p[y] - p_alpha[y]) for y in sequences))
        lengths.append(math.fsum(math.exp(pi[y]) * len(y) for y in sequences))
        # row by row: the same log-probs as the plain forward passes
        rows = masked_rows(problem.completion_ids, problem.completion_mask)
        torch.testing.assert_close(problem.base_logp[q], torch.tensor([p[y] for y in rows], dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(problem.target_alpha[q], torch.tensor([p_alpha[y] for y in rows],
                                                                         dtype=torch.float64), atol=1e-5, rtol=0)
    assert kls[0] > 0.01 and kls[1] > 0.01  # the policy really differs from the target
    assert report["kl_alpha"] == pytest.approx(sum(kls) / 2, abs=1e-5)
    assert report["kl_base_alpha"] == pytest.approx(sum(base_kls) / 2, abs=1e-5)
    assert report["length_policy"] == pytest.approx(sum(lengths) / 2, abs=1e-5)
    assert report["mass_check"] < 1e-5  # the policy's probabilities over the enumeration sum to 1
    torch.testing.assert_close(problem.base_logp.exp().sum(-1), torch.ones(2, dtype=torch.float64),
                               atol=1e-6, rtol=0)


# --- targets, KL and inversion rate by hand


def test_power_target_by_hand():
    # p = (1/2, 1/4, 1/4), alpha = 2: p^2 = (1/4, 1/16, 1/16), sum 3/8 -> (2/3, 1/6, 1/6)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(exact.power_target(p.log(), 2.0).exp(), torch.tensor([2 / 3, 1 / 6, 1 / 6],
                                                                                    dtype=torch.float64))
    # alpha = 0: uniform; alpha = 1: p itself
    torch.testing.assert_close(exact.power_target(p.log(), 0.0).exp(), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(exact.power_target(p.log(), 1.0).exp(), p)


def test_kl_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    q = torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=torch.float64)
    # KL(p || q) = 1/2 ln(1/2 / 2/3) + 2 * 1/4 ln(1/4 / 1/6) = 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8)
    assert exact.kl(p.log(), q.log()).item() == pytest.approx(0.5 * math.log(9 / 8), abs=1e-12)
    # KL(q || p) = 2/3 ln(4/3) + 2 * 1/6 ln(2/3) = 1/3 ln((4/3)^2 * 2/3) = 1/3 ln(32/27)
    assert exact.kl(q.log(), p.log()).item() == pytest.approx(math.log(32 / 27) / 3, abs=1e-12)
    # over the last dimension only: one KL per row, zero for a row against itself
    both = exact.kl(torch.stack([p, q]).log(), torch.stack([q, q]).log())
    torch.testing.assert_close(both, torch.tensor([0.5 * math.log(9 / 8), 0.0], dtype=torch.float64))


def test_expected_length_by_hand():
    # 1/2 * 1 + 1/4 * 2 + 1/4 * 3 = 1.75
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert exact.expected_length(p.log(), torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(1.75, abs=1e-12)


@pytest.mark.parametrize("pi, expected", [
    ([0.5, 0.3, 0.2], 0.0),  # same order a > b > c
    ([0.2, 0.3, 0.5], 1.0),  # c > b > a: all 3 pairs inverted
    ([0.3, 0.5, 0.2], 1 / 3),  # b > a > c: only (a, b) inverted
    ([0.1, 0.6, 0.3], 2 / 3),  # b > c > a: (a, b) and (a, c) inverted
])
def test_inversion_rate_by_hand(pi, expected):
    target = LOG(torch.tensor([0.5, 0.3, 0.2]))  # a > b > c
    assert exact.inversion_rate(LOG(torch.tensor(pi)), target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("pi, expected", [
    ([0.3, 0.5, 0.2], 0.0),  # a, b tied in the target: their order is no inversion; both above c as it should be
    ([0.3, 0.2, 0.5], 1.0),  # c above both: the 2 untied pairs (a, c), (b, c) inverted
    ([0.2, 0.5, 0.3], 0.5),  # c above a only: 1 of 2
])
def test_inversion_rate_leaves_out_ties_in_the_target(pi, expected):
    target = LOG(torch.tensor([0.4, 0.4, 0.2]))
    assert exact.inversion_rate(LOG(torch.tensor(pi)), target) == pytest.approx(expected, abs=1e-12)


def test_inversion_rate_counts_only_the_top_sequences():
    # target a > b > c > d; pi puts d first, keeps a > b > c
    target = LOG(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    pi = LOG(torch.tensor([0.3, 0.2, 0.1, 0.4]))
    assert exact.inversion_rate(pi, target, top=2) == 0.0  # only (a, b), in order
    assert exact.inversion_rate(pi, target, top=4) == pytest.approx(3 / 6, abs=1e-12)  # (a,d) (b,d) (c,d) of 6


# --- the LA-TB fixed point


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
def test_length_penalty_solves_the_normalisation(alpha):
    generator = torch.Generator().manual_seed(int(alpha * 10))
    for _ in range(5):
        base = (2 * torch.randn(40, generator=generator, dtype=torch.float64)).log_softmax(0)
        lengths = torch.randint(1, 6, (40,), generator=generator).double()
        lam = exact.solve_length_penalty(base, lengths, alpha)
        # sum_y p^alpha exp(-lambda |y|) = 1
        assert math.fsum((alpha * base - lam * lengths).exp().tolist()) == pytest.approx(1.0, abs=1e-9)
        log_target, lam_again = exact.latb_target(base, lengths, alpha)
        assert lam_again == lam
        # the target is p^alpha exp(-lambda |y|) itself (the renormalisation moves it only by rounding)
        torch.testing.assert_close(log_target, alpha * base - lam * lengths, atol=1e-9, rtol=0)


def test_length_penalty_is_found_far_from_zero():
    # p = 1e-30 on each of 4 sequences of length 1 (unnormalised on purpose), alpha = 4:
    # 4 * 1e-120 * exp(-lambda) = 1 -> lambda = ln 4 - 120 ln 10 = -274.9
    base = torch.full((4,), math.log(1e-30), dtype=torch.float64)
    lam = exact.solve_length_penalty(base, torch.ones(4), 4.0)
    assert lam == pytest.approx(math.log(4) - 120 * math.log(10), abs=1e-9)


def test_length_penalty_at_fixed_length_by_hand():
    # p = (1/2, 1/4, 1/4), alpha = 2, |y| = 3: exp(-3 lambda) sum p^2 = 1 -> lambda = ln(3/8) / 3
    base = LOG(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    lengths = torch.full((3,), 3.0, dtype=torch.float64)
    log_target, lam = exact.latb_target(base, lengths, 2.0)
    assert lam == pytest.approx(math.log(3 / 8) / 3, abs=1e-12)
    torch.testing.assert_close(log_target, exact.power_target(base, 2.0), atol=1e-12, rtol=0)  # p_alpha itself


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_length_penalty_by_the_quadratic_formula(alpha):
    # p = (0.6, 0.4) at lengths (1, 2): with x = exp(-lambda), a x + b x^2 = 1 where a = 0.6^alpha, b = 0.4^alpha,
    # so x = (-a + sqrt(a^2 + 4 b)) / (2 b) (the positive root), lambda = -ln x, target = (a x, b x^2)
    a, b = 0.6**alpha, 0.4**alpha
    x = (-a + math.sqrt(a * a + 4 * b)) / (2 * b)
    base = LOG(torch.tensor([0.6, 0.4], dtype=torch.float64))
    log_target, lam = exact.latb_target(base, torch.tensor([1.0, 2.0]), alpha)
    assert lam == pytest.approx(-math.log(x), abs=1e-10)
    torch.testing.assert_close(log_target.exp(), torch.tensor([a * x, b * x * x], dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_length_penalty_is_zero_at_alpha_one():
    # sum p exp(-lambda |y|) = 1 holds at lambda = 0 whatever the lengths, and the root is unique
    base = LOG(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    assert exact.solve_length_penalty(base, torch.tensor([1.0, 3.0, 2.0, 5.0]), 1.0) == pytest.approx(0.0, abs=1e-10)


def test_build_problem_targets_at_fixed_length(two_models):
    base, _ = two_models
    problem = exact.build_problem(base, [[3, 4]], max_new_tokens=2, vocab_size=5, alpha=4.0)
    assert problem.fixed_length
    torch.testing.assert_close(problem.target_latb, problem.target_alpha, atol=1e-10, rtol=0)
    # lambda = ln(sum p^4) / 2
    expected = math.log(math.fsum((4 * problem.base_logp[0]).exp().tolist())) / 2
    assert problem.length_penalty[0].item() == pytest.approx(expected, abs=1e-10)


# --- training through the real loop, and the KL floor


@pytest.fixture(scope="module")
def exact_setup(tmp_path_factory):
    """The tiny problem of examples/exact_alpha.py: 8 tokens (a..e = 3..7), two prompts, 3 new tokens."""
    root = tmp_path_factory.mktemp("exact")
    model = write_tiny_model(root / "model", hidden_size=32, num_layers=2, chat_template=False, alphabet="abcde",
                             logit_scale=4.0)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("abc", "edd")))
    return model, prompts


def make_run(exact_setup, output, alpha: float, max_steps: int, ignore_eos: bool = True):
    model, prompts = exact_setup
    cfg = TrainConfig(model=str(model), prompts=str(prompts), output=str(output), alpha=alpha, objective="latb",
                      max_steps=max_steps, prompts_per_step=2, samples_per_prompt=16, max_new_tokens=3,
                      ignore_eos=ignore_eos, chat_template="none", quant="none", device="cpu", lora_r=8, lora_alpha=16,
                      gradient_checkpointing=False, save_every=0, show_every=0, micro_batch_size=32, lr=1e-3,
                      z_lr=1e-2, warmup_steps=0, lr_schedule="constant", seed=0)
    run = setup(cfg)
    assert run.prompt_ids == [[3, 4, 5], [7, 6, 6]]  # "abc", "edd" with no template
    return run, exact.build_problem(run.model, run.prompt_ids, 3, 8, alpha, () if ignore_eos else (EOS,))


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_training_reduces_exact_kl(exact_setup, tmp_path, alpha):
    # Measured with model seed 0 and 1, run seeds 0-3: at 60 steps the KL falls by 0.90-0.93 (alpha 2) and
    # 0.975-0.99 (alpha 0.5), so 0.8 leaves margin.
    run, problem = make_run(exact_setup, tmp_path / "out", alpha, max_steps=60)
    before = exact.evaluate(run.model, problem)
    assert before["kl_alpha"] == pytest.approx(before["kl_base_alpha"], abs=1e-6)  # LoRA starts at the base
    assert before["kl_alpha"] > 0.03
    steps = [result.step for result in train(run)]
    assert steps == list(range(1, 61))
    after = exact.evaluate(run.model, problem)
    assert after["kl_alpha"] < 0.2 * before["kl_alpha"]
    # the base is scored with the adapter off: the trained policy gives the same problem
    again = exact.build_problem(run.model, run.prompt_ids, 3, 8, alpha, ())
    torch.testing.assert_close(again.base_logp, problem.base_logp, atol=1e-6, rtol=0)


def test_minimize_kl_lowers_the_exact_kl(exact_setup, tmp_path):
    run, problem = make_run(exact_setup, tmp_path / "out", 2.0, max_steps=1)
    start = exact.evaluate(run.model, problem)["kl_alpha"]
    curve = exact.minimize_kl(run.model, problem, steps=30)
    assert len(curve) == 30
    assert curve[0] == pytest.approx(start, abs=1e-5)  # the first value is taken before the first update
    end = exact.evaluate(run.model, problem)["kl_alpha"]
    assert end < 0.2 * start  # measured: 0.27 -> 0.009 (x 0.035)
    assert end == pytest.approx(curve[-1], rel=0.2)  # one more step than the curve's last value, so close


@pytest.mark.parametrize("start, end, floor, expected", [
    (1.0, 0.2, 0.0, 0.8),  # (1 - 0.2) / (1 - 0)
    (0.5, 0.3, 0.1, 0.5),  # (0.5 - 0.3) / (0.5 - 0.1) = 0.2 / 0.4
    (1.0, 0.05, 0.1, 0.95 / 0.9),  # past the floor: above 1
])
def test_fraction_attained_by_hand(start, end, floor, expected):
    assert exact.fraction_attained(start, end, floor) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("floor", [1.0, 1.5])
def test_fraction_attained_is_nan_without_a_gap(floor):
    assert math.isnan(exact.fraction_attained(1.0, 0.2, floor))


def test_latb_with_eos_learns_the_length_aware_target_not_p_alpha(exact_setup, tmp_path):
    """With EOS, latb's fixed point is p_base^alpha exp(-lambda |y|): KL to it falls, KL to p_alpha stays large."""
    run, problem = make_run(exact_setup, tmp_path / "out", 2.0, max_steps=60, ignore_eos=False)
    before = exact.evaluate(run.model, problem)
    assert before["length_alpha"] < before["length_base"] - 1  # p_alpha is much shorter than the base here
    list(train(run))
    after = exact.evaluate(run.model, problem)
    assert after["kl_latb"] < 0.2 * before["kl_latb"]
    assert after["kl_alpha"] > 0.5 * before["kl_alpha"] and after["kl_alpha"] > 10 * after["kl_latb"]
    assert abs(after["length_policy"] - after["length_latb"]) < 0.1
