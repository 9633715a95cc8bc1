"""docs/choosing-alpha.md's measured figures: `powerflow preview --demo`'s output (examples/results/preview_demo.json),
the preview's accuracy against exact p_alpha (examples/preview_exact.py) and `--alpha auto` against a fixed-alpha
sweep (examples/alpha_choice.py; its table is doc_blocks/alpha.py's)."""

from __future__ import annotations

import dataclasses
import io
import math

from alpha_choice import RECIPE, RECIPES, SEEDS  # the study's own reading of its rows
from rich.console import Console

from doc_blocks import Block
from doc_blocks.alpha import auto_verdict
from powerflow_lite.config import PreviewConfig
from powerflow_lite.display import preview_table
from powerflow_lite.errors import PowerflowError
from powerflow_lite.preview import MIN_ESS, choose_alpha

# --- `powerflow preview --demo` (examples/results/preview_demo.json, written by the same command with --json)


def preview_command(found: dict) -> str:
    """The page's two example commands, the demo's with its wall time."""
    return ("```bash\n"
            f"powerflow preview --demo    # SmolLM2-135M on the demo's {found['prompts']} held-out problems: under "
            f"{math.ceil(found['seconds'] / 60)} minutes on 2 CPU cores\n"
            "powerflow preview --model M --prompts my_prompts.jsonl --max-new-tokens 512 --json preview.json "
            "--plot preview.png\n```\n")


def printed_table(found: dict) -> list[str]:
    """The preview table as the CLI prints it (powerflow_lite.display.preview_table through rich, no colour)."""
    console = Console(file=io.StringIO(), width=120, highlight=False, soft_wrap=True, color_system=None)
    console.print(preview_table(found, MIN_ESS))
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def auto_line(found: dict) -> str:
    """The CLI's last line after a preview: what --alpha auto would choose (cli.preview)."""
    try:
        choice = choose_alpha(found)
    except PowerflowError as why:
        return f"--alpha auto would not choose: {why}"
    return f"--alpha auto would choose {choice['alpha']:g}: the {choice['rule']} ({choice['why']})"


def preview_demo(found: dict) -> str:
    """The demo preview's table and auto's choice as printed, and what the page reads from them."""
    rows = {float(alpha): row for alpha, row in found["alphas"].items()}
    sharp = [row for alpha, row in rows.items() if alpha > 1]
    lengths = [row["length_mean"] for row in sharp]
    best = max((alpha for alpha in rows if alpha > 1), key=lambda alpha: rows[alpha]["avg_at_1"])
    noise = [alpha for alpha, row in rows.items() if row["ess"] < MIN_ESS]
    noisy = "".join(f"Alpha {alpha:g} is noise: its estimates rest on {rows[alpha]['ess']:.1f} samples per prompt "
                    "on average, about one.\n" for alpha in noise)
    return ("```\n" + "\n".join(printed_table(found)) + "\n...\n" + auto_line(found) + "\n```\n\n"
            "(abridged: between the table and its last line the command says how to read the table and prints two\n"
            "samples of p_alpha per alpha; the figures and the samples are in\n"
            "[examples/results/preview_demo.json](../examples/results/preview_demo.json), written by the same command\n"
            f"with `--json`). On this model p_alpha for any alpha of {min(a for a in rows if a > 1):g} or more "
            f"answers in {min(lengths):.1f}-{max(lengths):.1f} tokens,\nand agrees with itself more as alpha grows, "
            f"while its predicted accuracy stops rising after alpha {best:g}.\n" + noisy)


# --- the preview's accuracy (examples/results/preview_exact.json)

FIGURE_NAMES = {"length_mean": "length", "base_logp_per_token": "base log-prob", "modal_share": "modal share"}
REGIME_NAMES = {"eos": "with EOS", "fixed": "at fixed length"}
SHOWN_ALPHA = 4.0  # the alpha whose modal-share errors the page quotes


def smc_counts(result: dict) -> dict[str, list[tuple[str, str]]]:
    """Sequential Monte Carlo's error against the preview's, as examples/preview_exact.py's report counts it:
    "worse" / "tie" / "better" -> the (regime, figure) of each comparison."""
    counts: dict[str, list[tuple[str, str]]] = {"worse": [], "tie": [], "better": []}
    for regime, found in result["regimes"].items():
        for row in found["rows"]:
            for key in FIGURE_NAMES:
                ours, theirs = row[key]["error"], row["smc"][key]["error"]
                counts["tie" if abs(ours - theirs) < 1e-9 else "worse" if theirs > ours else "better"].append(
                    (regime, key))
    return counts


def default_candidates() -> int:
    """`powerflow preview`'s default N (--candidates)."""
    return next(field.default for field in dataclasses.fields(PreviewConfig) if field.name == "candidates")


def preview_accuracy(result: dict) -> str:
    """How far the preview's estimates are from exact p_alpha, against N, and against sequential Monte Carlo."""
    rows = [row for found in result["regimes"].values() for row in found["rows"]]
    largest, default = max(row["candidates"] for row in rows), default_candidates()

    def worst(n: int, keys: tuple[str, ...]) -> float:
        return max(row[key]["error"] for row in rows if row["candidates"] == n for key in keys)

    every = ("length_mean", "truncated_frac", "base_logp_per_token", "modal_share")
    counts = smc_counts(result)
    ties = sorted(set(counts["tie"]))
    where = ", ".join(f"{FIGURE_NAMES[key]} {REGIME_NAMES[regime]}" for regime, key in ties)
    alphas = sorted({row["alpha"] for row in rows})
    shown = next(row for row in result["regimes"]["eos"]["rows"]
                 if row["candidates"] == default and row["alpha"] == SHOWN_ALPHA)
    return ("The estimates converge to the exact values. On an enumerable model (every completion listed), the mean\n"
            f"absolute error of every figure is at most {worst(largest, every):.2f} at N = {largest}, and at the "
            f"default N = {default} at most {worst(default, ('length_mean',)):.2f}\ntokens of length and "
            f"{worst(default, ('truncated_frac', 'modal_share')):.2f} of a share (means over {result['seeds']} "
            "previews;\n[examples/results/preview_exact.md](../examples/results/preview_exact.md), "
            "`python examples/preview_exact.py`).\nThe ESS column says how many samples stand behind each row.\n\n"
            "The preview reweighs one set of samples to every alpha. Sequential Monte Carlo (`--sampler power-smc`)\n"
            f"would need a set of particles per alpha: at the same number of completions (N/{len(alphas)} particles "
            f"for each of\n{len(alphas)} alphas) its estimates are worse in {len(counts['worse'])} of the "
            f"{sum(map(len, counts.values()))} comparisons there and better in {len(counts['better'])}; the other "
            f"{len(counts['tie'])} tie\n({where}). At N = {default} with EOS and alpha {SHOWN_ALPHA:g} its error in "
            f"the modal share is {shown['smc']['modal_share']['error']:.2f}, against the\npreview's "
            f"{shown['modal_share']['error']:.2f}, so the preview keeps its own samples.\n")


# --- `--alpha auto` (examples/results/alpha_choice.json)


def minutes(seconds: list[float]) -> str:
    """A range of wall times in minutes, "2.0-2.4 minutes"."""
    low, high = min(seconds) / 60, max(seconds) / 60
    return f"{low:.1f} minutes" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f} minutes"


def alphas_text(alphas: list[float]) -> str:
    """1.5, 2, 4 and 8."""
    shown = [f"{alpha:g}" for alpha in alphas]
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def alpha_auto_rule(result: dict) -> str:
    """What --alpha auto does, its cost, and the study that checks it (settings from alpha_choice.json)."""
    tables = result["tables"].values()
    steps = RECIPES[RECIPE][2]["max_steps"]
    return ("`powerflow train --alpha auto` runs the preview on 24 of your training prompts "
            f"({minutes([tab['auto']['preview_seconds'] for tab in tables])} on 2\nCPU cores for SmolLM2) and picks "
            "the alpha after which the modal-answer share gains less than 5\npoints per doubling of alpha (among "
            "1.5, 2, 4 and 8 with an ESS of 2 or more). The table and the\nchoice are in the run header and "
            "`OUT/alpha_preview.json`; `config.yaml` holds the alpha, and\n`--resume` keeps it. It needs prompts "
            "whose answers end in a final answer; for creative writing give\n`--alpha`.\n\n"
            f"Checked on SmolLM2-135M against training at alpha {alphas_text(result['alphas'])} ({len(SEEDS)} seeds "
            f"each, {steps} steps, two\narithmetic tasks; held-out avg@{result['preview']['k']}):\n")


def ranking(rows: dict, key) -> list[str]:
    """The alphas, best first by key(row)."""
    return sorted(rows, key=lambda alpha: -key(rows[alpha]))


def alpha_auto_reading(result: dict) -> str:
    """What the auto table shows, and how the preview's predictions compare with training."""
    tables = result["tables"]
    spread, lands = auto_verdict(result)
    lands = lands.replace("On both tasks ", "On both tasks\n").replace("On some task ", "On some task\n")
    one, two = tables["single-digit"]["rows"], tables["two-digit"]["rows"]
    predicted = ranking(one, lambda row: row["predicted"]["avg_at_1"])
    same = predicted == ranking(one, lambda row: row["avg_at_k"])
    over = [100 * (row["predicted"]["avg_at_1"] - row["avg_at_k"]) for row in one.values()]
    guesses = [100 * row["predicted"]["avg_at_1"] for row in two.values()]
    reached = [100 * row["avg_at_k"] for row in two.values()]
    steps = RECIPES[RECIPE][2]["max_steps"]
    return ("Auto's figure is the sweep's runs at the alphas it chose. ± is the standard error of the paired\n"
            "per-problem difference (seeds averaged first); the seeds' own spread is "
            f"{spread} points. {lands} The preview\nranks the alphas "
            f"{'well' if same else 'otherwise than training'} on single-digit ({predicted[0]} and {predicted[1]} "
            f"ahead of {predicted[2]}, then {predicted[3]}"
            f"{', as training finds' if same else ''}) but\noverestimates what {steps} steps of training reach by "
            f"{min(over):.0f}-{max(over):.0f} points; on two-digit it predicts the alphas\nwithin "
            f"{math.ceil(max(guesses) - min(guesses))} points of each other ({min(guesses):.0f}-{max(guesses):.0f}%), "
            f"where training ranges from {min(reached):.1f}% to {max(reached):.1f}%. It estimates\np_alpha itself, not "
            "a policy trained for a few steps towards it. Details, with the preview's\npredictions beside each row: "
            "[examples/results/alpha_choice.md](../examples/results/alpha_choice.md)\n"
            "(`python examples/alpha_choice.py`), and [experiments/README.md](experiments/README.md#which-alpha).\n")


BLOCKS = {
    "preview-demo-command": Block(("preview_demo.json",), preview_command),
    "preview-demo": Block(("preview_demo.json",), preview_demo),
    "preview-accuracy": Block(("preview_exact.json",), preview_accuracy),
    "alpha-auto-rule": Block(("alpha_choice.json",), alpha_auto_rule),
    "alpha-auto-reading": Block(("alpha_choice.json",), alpha_auto_reading),
}
