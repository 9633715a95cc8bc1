"""docs/experiments/README.md's readings of two studies: is training worth it (examples/power_real.py, with the
exact samplers of examples/power_exact.py) and which alpha (examples/alpha_choice.py)."""

from __future__ import annotations

import math

from power_real import RAMP, RECIPES, paired  # the study's row names and its paired differences

from doc_blocks import Block, lr_text, points, span, wrap

DEMO, ONE_TASK, LONGER = RECIPES  # PowerFlow's rows: the demo's recipe, the one-task recipe, 4 x the demo's steps
TASK_ONE, TASK_TWO, WORDS = "single-digit", "two-digit", "word problems"




def gains(vs: dict) -> str:
    """The change as a verb: gains +18.1 ± 4.7, or loses 4.9 ± 6.8."""
    return f"gains {points(vs)}" if vs["mean"] >= 0 else f"loses {points(vs, sign=False)}"





def bullets(items: list[str]) -> str:
    """Markdown bullets, wrapped like the page."""
    return "".join(wrap(item, bullet=True) for item in items)


# --- is training worth it? (examples/results/power_real.json, examples/results/power_exact.json)


def exact_rows(study: dict, alpha: float, regime: str) -> dict[tuple[str, float], dict]:
    """One problem of the exact study: (method, setting) -> row."""
    found = next(r for r in study["results"] if r["alpha"] == alpha and r["regime"] == regime)
    return {(row["method"], row["setting"]): row for row in found["rows"]}


def exact_bullets(study: dict, alpha: float) -> list[str]:
    """The power samplers against p_base^alpha, exactly: how close the largest setting of each gets, and
    sequential Monte Carlo's options at N = 8."""
    fixed, eos = exact_rows(study, alpha, "fixed"), exact_rows(study, alpha, "eos")
    proposals = max(s for m, s in fixed if m == "importance resampling")
    particles = max(s for m, s in fixed if m == "sequential Monte Carlo")
    steps = max(s for m, s in fixed if m == "Metropolis-Hastings")
    tempered = next(row for (m, _), row in fixed.items() if m == "temperature 1/alpha")
    tempered_eos = next(row for (m, _), row in eos.items() if m == "temperature 1/alpha")
    resampled, smc, mh = (("importance resampling", proposals), ("sequential Monte Carlo", particles),
                          ("Metropolis-Hastings", steps))
    n = 8  # the options were tried at N = 8 (examples/power_exact.py's SMC_OPTIONS)
    default = ("sequential Monte Carlo", n)
    every, rarely, ramp = ((f"sequential Monte Carlo, {option}", n) for option in
                           ("ESS threshold 1", "ESS threshold 0.25", "ramp over 2 tokens"))
    p = f"p_base^{alpha:g}"
    return [f"**Exactly, on enumerable problems** (`python examples/power_exact.py`, "
            f"`examples/results/power_exact.md`): at fixed length the three power samplers converge to {p} "
            f"(total variation {fixed[resampled]['tv']:.3f} at N = {proposals} proposals, {fixed[smc]['tv']:.3f} "
            f"at {particles} particles, {fixed[mh]['tv']:.3f} after {steps} steps a block) where the base at "
            f"temperature 1/{alpha:g} stays {tempered['tv']:.2f} away. With EOS, where {p} is far from the "
            f"proposal, they close the gap slowly: {tempered_eos['tv']:.2f} to {eos[resampled]['tv']:.2f} at "
            f"N = {proposals} proposals ({eos[resampled]['tokens_per_answer']:.0f} tokens per answer), to "
            f"{eos[smc]['tv']:.2f} at {particles} particles ({eos[smc]['tokens_per_answer']:.0f} tokens: an ended "
            f"particle draws no more, and resampling copies it), to {eos[mh]['tv']:.2f} after {steps} steps. "
            "Sequential Monte Carlo matches importance resampling per N, and costs less where answers end early.",
            f"**Power-SMC's options, exactly, at N = {n}.** Resampling at every token (threshold 1) or rarely "
            f"(0.25) does no better than the default 0.5 (TV {fixed[every]['tv']:.3f} and {fixed[rarely]['tv']:.3f} "
            f"against {fixed[default]['tv']:.3f} at alpha {alpha:g}, fixed length; {eos[every]['tv']:.3f} and "
            f"{eos[rarely]['tv']:.3f} against {eos[default]['tv']:.3f} with EOS). Ramping the exponent over the "
            f"first 2 of 3 tokens is neutral at fixed length ({fixed[ramp]['tv']:.3f} against "
            f"{fixed[default]['tv']:.3f}) and helps with EOS ({eos[ramp]['tv']:.2f} against "
            f"{eos[default]['tv']:.2f}, at {eos[ramp]['tokens_per_answer']:.0f} tokens per answer against "
            f"{eos[default]['tokens_per_answer']:.0f})."]


def worth_it(study: dict, exact: dict) -> str:
    """The bullets beyond power_real.md's summary table."""
    settings, tables = study["settings"], study["tables"]
    alpha, top = settings["power_alpha"], max(settings["particles"])
    one, two, words = (tables[task]["rows"] for task in (TASK_ONE, TASK_TWO, WORDS))
    tempered = f"base, temperature {1 / alpha:g}"
    mh, smc, resampled = "Metropolis-Hastings, defaults", f"sequential Monte Carlo, N = {top}", \
        f"importance resampling, N = {top}"
    smc8 = "sequential Monte Carlo, N = 8"
    ramped = f"{smc8}, exponent ramped over {RAMP} tokens"
    recipe = settings["recipes"][ONE_TASK][2]
    recipe_text = (f"{recipe['max_steps']} steps of {recipe['prompts_per_step']} x {recipe['samples_per_prompt']} "
                   f"completions at lr {lr_text(recipe['lr'])}")
    over = paired(one[smc]["avg_at_k_per_problem"], one[ONE_TASK]["avg_at_k_per_problem"])
    times = {name: one[name]["tokens_per_answer"] / one[ONE_TASK]["tokens_per_answer"] for name in (mh, smc)}
    vs_t = "vs base T=1/alpha"
    powerflow = [name for name in one if name.startswith("PowerFlow")]
    arithmetic = [row["p_alpha_ess"] for rows in (one, two) for name, row in rows.items() if name in powerflow]
    base_ess = [rows["base, temperature 1"]["p_alpha_ess"] for rows in (one, two)]
    word_ess = [row["p_alpha_ess"] for name, row in words.items() if name in powerflow]
    p = f"p_base^{alpha:g}"
    ramp_bullet = exact_bullets(exact, alpha)
    ramp_bullet[-1] += (f" On SmolLM2, N = 8 with a ramp over {RAMP} tokens gave {100 * one[ramped]['avg_at_k']:.1f}% "
                        f"avg@{settings['k']} on single-digit against {100 * one[smc8]['avg_at_k']:.1f}% without "
                        "(`examples/results/power_real.md`), within noise on the other tasks; the ramp stays an "
                        "option (`--alpha-ramp-tokens`), off by default.")
    return bullets([
        f"**Single-digit, in detail.** The one-task recipe ({recipe_text}) beats the best temperature of the grid "
        f"by {points(one[ONE_TASK]['vs best temperature']['avg_at_k'])} points of avg@{settings['k']}. "
        f"Metropolis-Hastings does as well ({100 * one[mh]['avg_at_k']:.1f}%) at {times[mh]:.0f} times the tokens "
        f"per answer, and sequential Monte Carlo at N = {top} better ({100 * one[smc]['avg_at_k']:.1f}%, "
        f"{points(over)} over the recipe) at {times[smc]:.0f} times. pass@{settings['k']} rises too "
        f"({100 * one[ONE_TASK]['pass_at_k']:.1f}% against {100 * one[tempered]['pass_at_k']:.1f}% at temperature "
        f"1/{alpha:g}, {100 * one[resampled]['pass_at_k']:.1f}% for resampling at N = {top} and "
        f"{100 * one[smc]['pass_at_k']:.1f}% for sequential Monte Carlo at N = {top}).",
        "**How you train matters more than how long.** The demo's recipe on the three tasks' prompts together "
        f"{gains(one[DEMO][vs_t]['avg_at_k'])} points over temperature 1/{alpha:g} on single-digit but "
        f"{gains(two[DEMO][vs_t]['avg_at_k'])} on two-digit, and four times its steps "
        f"{gains(two[LONGER][vs_t]['avg_at_k']).replace('loses', 'lose').replace('gains', 'gain')} there. Trained "
        f"on one task's prompts, with {recipe['prompts_per_step'] * recipe['samples_per_prompt']} completions a "
        f"step at half the learning rate, it {gains(one[ONE_TASK][vs_t]['avg_at_k'])} on single-digit and "
        f"{gains(two[ONE_TASK][vs_t]['avg_at_k']).removeprefix('gains ')} on two-digit.",
        f"**Seeds spread.** avg@{settings['k']} on single-digit varies over the {len(settings['seeds'])} seeds by a "
        f"standard deviation of {100 * one[ONE_TASK]['avg_at_k_seed_std']:.0f} points for the one-task recipe and "
        f"{100 * one[DEMO]['avg_at_k_seed_std']:.0f} for the demo's. Quote a trained figure with its seeds.",
        f"**Word problems.** {p} is not more often right than the base on these for a 135M model: resampling, "
        "Metropolis-Hastings and training all stay within two standard errors of the base at temperature 1.",
        f"**Closer to {p}, by its own samples.** The normalised effective sample size of the weights {p} / pi over "
        f"the policy's own samples (`powerflow eval` reports it; 1 means the policy is {p}) rises from "
        f"{span(base_ess)} for the base to {span(arithmetic)} for PowerFlow's policies on the arithmetic tasks "
        f"({span(word_ess)} on word problems).",
        *ramp_bullet])


# --- which alpha? (examples/results/alpha_choice.json)


def which_alpha(result: dict) -> str:
    """The bullets beyond choosing-alpha.md's summary of the alpha sweep."""
    k = result["preview"]["k"]
    one, two = result["tables"]["single-digit"], result["tables"]["two-digit"]
    rows = one["rows"]
    order = sorted(rows, key=lambda a: -rows[a]["predicted"]["avg_at_1"])

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    predicted = [pct(rows[a]["predicted"]["avg_at_1"]) for a in order]
    trained = [pct(rows[a]["avg_at_k"]) for a in order]
    guessed_maj = [100 * row["predicted"]["maj_at_k"] for row in rows.values()]
    reached_maj = [100 * row["maj_at_k"] for row in rows.values()]
    rows2 = two["rows"]
    guesses = [100 * row["predicted"]["avg_at_1"] for row in rows2.values()]
    reached = {a: 100 * row["avg_at_k"] for a, row in rows2.items()}
    low, high = min(reached.values()), max(reached.values())

    def at(value: float) -> str:
        return " and ".join(a for a, v in reached.items() if f"{v:.1f}" == f"{value:.1f}")

    beat = [reached[a] - 100 * row["predicted"]["avg_at_1"] for a, row in rows2.items()]
    # auto's choices per seed, and the modal-share gain per doubling after the alpha it chose
    choices = [(task, seed, alpha) for task, tab in result["tables"].items()
               for seed, alpha in enumerate(tab["auto"]["alphas"])]
    common = max({alpha for _, _, alpha in choices}, key=[alpha for _, _, alpha in choices].count)

    def rise(task: str, seed: int, upto: float) -> float:
        """How much the modal-answer share auto saw rose from the common choice to `upto` (points)."""
        shares = result["tables"][task]["auto"]["training_modal_share"][seed]
        return 100 * (shares[f"{upto:g}"] - shares[f"{common:g}"])

    after = [rise(task, seed, 2 * common) for task, seed, alpha in choices if alpha == common]
    odd = [(task, seed, alpha) for task, seed, alpha in choices if alpha != common]
    odd_text = "".join(f"; on {task} seed {seed} the share still rose {rise(task, seed, alpha):.1f} points from "
                       f"{common:g} to {alpha:g}, and auto chose {alpha:g}" for task, seed, alpha in odd)
    steps = RECIPES[ONE_TASK][2]["max_steps"]
    previews = [tab["auto"]["preview_seconds"] / 60 for tab in result["tables"].values()]
    training = [row["training_seconds"] / 60 for tab in result["tables"].values() for row in tab["rows"].values()]
    auto = one["auto"]
    again = [(seed, value) for seed, (alpha, value) in enumerate(zip(auto["alphas"], auto["avg_at_k_per_seed"] or []))
             if alpha == common]
    again_text = " and ".join(pct(value) for _, value in again)
    return bullets([
        f"**What the preview predicted well.** On single-digit arithmetic its ranking: alpha {order[0]} and "
        f"{order[1]} ahead (predicted avg@1 {predicted[0]} and {predicted[1]}), then {order[2]} ({predicted[2]}), "
        f"then {order[3]} ({predicted[3]}); training reached {trained[0]}, {trained[1]}, {trained[2]} and "
        f"{trained[3]}. Its predicted maj@{k} ({span(guessed_maj, '.1f')}%) sat below what training reached "
        f"({span(reached_maj, '.1f')}%).",
        "**What it predicted badly.** On two-digit addition it saw the alphas within "
        f"{math.ceil(max(guesses) - min(guesses))} points ({span(guesses, '.1f')}%) where training ranged from "
        f"{low:.1f}% (alpha {at(low)}) to {high:.1f}% (alpha {at(high)}), and every trained policy beat its "
        f"prediction by {span(beat, '.0f')} points. The preview estimates p_alpha itself; {steps} steps of training do "
        "not reach it, and on this task the trained policies beat it.",
        "**What auto chose, and why.** The modal-answer share on 24 training prompts rose steeply up to alpha "
        f"2-4 and then by {span(after, '.0f')} points per doubling, so the rule stopped at {common:g} on "
        f"{len(choices) - len(odd)} of {len(choices)} seeds{odd_text}. Auto's preview took "
        f"{span(previews, '.1f')} minutes (the mean per task) on 2 cores, against {span(training, '.1f')} minutes "
        "for one training run.",
        "**Re-training is noise.** Auto's single-digit choices were also trained again with later code: alpha "
        f"{common:g} on seeds {' and '.join(str(seed) for seed, _ in again)} reached {again_text}, above the "
        f"sweep's own seed-averaged {pct(one['rows'][f'{common:g}']['avg_at_k'])}. Training is not bit-for-bit "
        f"reproducible across code versions, and {steps} sampled steps amplify any rounding difference, by as "
        "much as another seed does."])


BLOCKS = {
    "experiments-worth-it": Block(("power_real.json", "power_exact.json"), worth_it),
    "experiments-which-alpha": Block(("alpha_choice.json",), which_alpha),
}
