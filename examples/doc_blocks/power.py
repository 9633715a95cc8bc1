"""The study of whether training is worth it (examples/power_real.py)."""

from __future__ import annotations

from power_real import DISTILLED, RECIPES, best_sampler, paired, repaid_after  # the study's own reading

from doc_blocks import Block, points
from doc_blocks.flatten import glance as flatten_glance

TASKS = ("single-digit", "two-digit", "word problems")
COLUMNS = ("| policy | single-digit (40) | two-digit (24) | word problems (20) | tokens per answer | s per answer | "
           "training |")
GLANCE = [  # (label, row of power_real.json), in the README's shorter table
    ("base, temperature 1", "base, temperature 1"),
    ("base, temperature 1/4", "base, temperature 0.25"),
    ("base, best temperature of 0.7, 0.5, 0.25, 0.1", "best temperature"),
    ("Metropolis-Hastings (Karan & Du's defaults)", "Metropolis-Hastings, defaults"),
    ("sequential Monte Carlo, N = 4", "sequential Monte Carlo, N = 4"),
    ("sequential Monte Carlo, N = 16", "sequential Monte Carlo, N = 16"),
    ("PowerFlow, demo recipe, the three tasks' prompts", "PowerFlow alpha 4, demo recipe, three tasks' prompts"),
    ("PowerFlow, 12 steps of 4 x 8 at lr 5e-4, this task's prompts",
     "PowerFlow alpha 4, 12 steps of 4 x 8, this task's prompts"),
    ("sequential Monte Carlo's answers distilled (maximum likelihood, the demo's sampled tokens)",
     "power-smc (N = 4) distilled by maximum likelihood, demo recipe's budget"),
]
FULL = GLANCE[:3] + [
    ("importance resampling, N = 4", "importance resampling, N = 4"),
    ("importance resampling, N = 16", "importance resampling, N = 16"),
    GLANCE[3], GLANCE[4],
    ("sequential Monte Carlo, N = 8", "sequential Monte Carlo, N = 8"),
    GLANCE[5],
    ("sequential Monte Carlo, N = 8, exponent ramped over 16 tokens",
     "sequential Monte Carlo, N = 8, exponent ramped over 16 tokens"),
    GLANCE[6],
    ("PowerFlow, 4 x the demo's steps, the three tasks' prompts",
     "PowerFlow alpha 4, demo recipe x 4 (32 steps), three tasks' prompts"),
    GLANCE[7],
    ("sequential Monte Carlo (N = 4) distilled by maximum likelihood, the demo's sampled tokens", GLANCE[8][1]),
]


def power_table(study: dict, rows: list[tuple[str, str]]) -> str:
    """avg@4 per task (bold: the best of its column), then the single-digit task's tokens and seconds per
    answer, and the training minutes (the range over the tasks it was trained for)."""
    tables, k = study["tables"], study["settings"]["k"]

    def row_of(task: str, name: str) -> dict | None:
        table = tables[task]
        return table["rows"].get(table["best_temperature"] if name == "best temperature" else name)

    best = {task: max(row_of(task, name)["avg_at_k"] for _, name in rows if row_of(task, name)) for task in TASKS}
    lines = [COLUMNS, "|---|---|---|---|---|---|---|"]
    for label, name in rows:
        cells = []
        for task in TASKS:
            row = row_of(task, name)
            figure = "" if row is None else f"{100 * row['avg_at_k']:.1f}%"
            cells.append(f"**{figure}**" if row is not None and row["avg_at_k"] == best[task] else figure)
        first = row_of(TASKS[0], name)
        answers = study["settings"]["tasks"][TASKS[0]][1] * k
        seconds = [tables[t]["rows"][name]["training_seconds"] for t in TASKS
                   if name in tables[t]["rows"] and "training_seconds" in tables[t]["rows"][name]]
        training = "" if not seconds else (f"{min(seconds) / 60:.1f} min" if max(seconds) - min(seconds) < 30 else
                                           f"{min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min")
        lines.append(f"| {label} | {' | '.join(cells)} | {first['tokens_per_answer']:.0f} | "
                     f"{first['eval_seconds'] / answers:.2f} | {training} |")
    return "\n".join(lines) + "\n"


DEMO_RECIPE, TASK_RECIPE = list(RECIPES)[:2]  # the demo's recipe, the one-task recipe (12 steps of 4 x 8)


def cell(study: dict, task: str, name: str, key: str = "avg_at_k") -> float:
    """One row's figure on one task."""
    return study["tables"][task]["rows"][name][key]


def answers(study: dict, task: str) -> int:
    """How many answers an evaluation on `task` drew: its problems x k."""
    return study["settings"]["tasks"][task][1] * study["settings"]["k"]


def per_answer(study: dict, task: str, name: str) -> float:
    """Wall seconds per answer of one row on one task."""
    return cell(study, task, name, "eval_seconds") / answers(study, task)


def versus(study: dict, task: str, name: str, other: str) -> dict:
    """avg@k of `name` minus `other`'s: mean and standard error of the paired per-problem differences."""
    return paired(cell(study, task, name, "avg_at_k_per_problem"), cell(study, task, other, "avg_at_k_per_problem"))




def spoken(name: str) -> str:
    """A sampler's row name in a sentence: 'sequential Monte Carlo at N = 16'."""
    return name.replace(", N = ", " at N = ")


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def trained(study: dict, task: str) -> list[str]:
    """The trained rows of a task's table."""
    return [name for name, row in study["tables"][task]["rows"].items() if "training_seconds" in row]


def best_trained(study: dict, task: str) -> str:
    return max(trained(study, task), key=lambda name: cell(study, task, name))


def glance_reading(study: dict) -> str:
    """The README's reading of its table: on single-digit, what training saves per answer against the best power
    sampler and after how many answers it is repaid."""
    task = TASKS[0]
    sampler, policy = best_sampler(study["tables"][task]), best_trained(study, task)
    cheaper = per_answer(study, task, sampler) / per_answer(study, task, policy)
    repaid = repaid_after(study["tables"][task], policy, answers(study, task))
    return (f"Costs on {task}, 2 CPU cores (`python examples/power_real.py`; ± standard errors over problems).\n"
            "**Sample at inference** for the best accuracy on few prompts; **train** to answer many "
            f"({cheaper:.0f} times cheaper\nper answer, repaid after {repaid:.0f} answers). Nothing helps on word "
            "problems. The full study and when to\nchoose which: "
            "[docs/evaluation.md](docs/evaluation.md#sampling-p_basealpha-at-inference-or-training).\n")


def table_page(study: dict) -> str:
    """results.md's study: what it measures, the full table, and where its costs come from."""
    settings = study["settings"]
    k, alpha, seeds = settings["k"], f"{settings['power_alpha']:g}", len(settings["seeds"])
    return ("SmolLM2-135M-Instruct, the demo's model, on three held-out tasks, each\n"
            f"policy answering every problem {k} times (avg@{k}: the share of correct answers). The free alternatives\n"
            f"are the base at a lower temperature and sampling p_base^{alpha} at inference time with the three power\n"
            f"samplers, which pay for it in sampled tokens and seconds per answer. PowerFlow trains alpha {alpha} "
            f"without\nlabels; each trained row is the mean of {seeds} seeds.\n\n" + power_table(study, FULL)
            + f"\nTokens and seconds per answer are on {TASKS[0]} problems; seconds are an evaluation's wall time\n"
            "over its answers on a 2-core CPU, model load included; training time is on the same CPU.\n")


def findings(study: dict) -> str:
    """results.md's bullets: the best sampler, what training costs and repays, the two-digit tie, word problems,
    distillation."""
    first, second, words = TASKS
    tables, n = study["tables"], {task: answers(study, task) for task in TASKS}
    sampler = best_sampler(tables[first])
    smc4, ir4, ir16 = ("sequential Monte Carlo, N = 4", "importance resampling, N = 4",
                       "importance resampling, N = 16")
    top = versus(study, first, sampler, best_trained(study, first))
    tokens = {name: cell(study, first, name, "tokens_per_answer") for name in (sampler, smc4, ir4, ir16)}
    minutes = {name: cell(study, first, name, "training_seconds") / 60 for name in (TASK_RECIPE, DEMO_RECIPE)}
    repaid = {name: repaid_after(tables[first], name, n[first]) for name in (TASK_RECIPE, DEMO_RECIPE)}
    samplers = [name for name in tables[second]["rows"] if name.startswith(("importance", "Metropolis", "sequential"))]
    tied = [cell(study, second, name) for name in (*samplers, TASK_RECIPE)]
    sampled = [cell(study, second, name, "tokens_per_answer") for name in samplers]
    temperature = tables[words]["best_temperature"]
    return (f"* **The best accuracy is bought at inference.** On {first} arithmetic\n"
            f"  {spoken(sampler)} particles reaches {pct(cell(study, first, sampler))}, {points(top)} points over "
            f"the best trained policy,\n  against {pct(cell(study, first, ir16))} for {spoken(ir16)}, with "
            f"{tokens[sampler]:.0f} tokens per answer against {tokens[ir16]:.0f}. It is the\n"
            f"  cheapest power sampler for its accuracy: N = 4 ({tokens[smc4]:.0f} tokens) "
            + ("beats" if cell(study, first, smc4) > cell(study, first, ir4) else "does not beat")
            + f" importance resampling at N = 4 ({tokens[ir4]:.0f}).\n"
            "* **Training buys cheap answers.** A trained adapter answers at the base's cost: "
            f"{per_answer(study, first, TASK_RECIPE):.2f} s against\n"
            f"  {per_answer(study, first, sampler):.2f} s for {spoken(sampler)}, so the one-task recipe's "
            f"{minutes[TASK_RECIPE]:.0f} minutes of training are\n"
            f"  repaid after {repaid[TASK_RECIPE]:.0f} answers on {first}, the demo recipe's "
            f"{minutes[DEMO_RECIPE]:.0f} minutes after {repaid[DEMO_RECIPE]:.0f}.\n"
            "* **Two-digit addition: a tie.** The power samplers and the one-task recipe land at "
            f"{100 * min(tied):.0f}-{100 * max(tied):.0f}%; training\n"
            f"  gets there with {cell(study, second, TASK_RECIPE, 'tokens_per_answer'):.1f} tokens per answer, the "
            f"samplers with {min(sampled):.0f}-{max(sampled):.0f}.\n"
            "* **Word problems: nothing that sharpens helps** this 135M model; only temperature "
            f"{temperature.split()[-1]} moves the\n  number ({pct(cell(study, words, temperature))}).\n"
            "* **Distilling the sampler** (the adapter fine-tuned by maximum likelihood on sequential Monte\n"
            "  Carlo's answers to the training prompts, as many sampled tokens as the demo recipe's PowerFlow\n"
            f"  run) {distilled(study, first)} points to PowerFlow on {first} and "
            f"{distilled(study, second)} on {second}.\n")


def distilled(study: dict, task: str) -> str:
    """The distilled sampler against PowerFlow's demo recipe at the same sampled tokens: 'loses 11.0 ± 3.3'."""
    change = versus(study, task, DISTILLED, DEMO_RECIPE)
    return f"{'loses' if change['mean'] < 0 else 'gains'} {points(change, sign=False)}"


def within_noise(change: dict) -> bool:
    """A paired change within two standard errors of 0."""
    return abs(change["mean"]) < 2 * change["stderr"]


def evaluation_choice(study: dict) -> str:
    """evaluation.md's case for power-smc on SmolLM2, and which to choose: sample at inference or train."""
    first, second = TASKS[:2]
    sampler = best_sampler(study["tables"][first])
    ir16, smc8 = "importance resampling, N = 16", "sequential Monte Carlo, N = 8"
    ramp = next(name for name in study["tables"][first]["rows"] if name.startswith(f"{smc8}, exponent ramped"))
    ramped = {task: versus(study, task, ramp, smc8) for task in TASKS}
    others = "stayed within" if all(within_noise(ramped[task]) for task in TASKS[1:]) else "moved beyond"
    setting = sampler.split(", ")[-1]
    policy = best_trained(study, first)
    faster = per_answer(study, first, sampler) / per_answer(study, first, policy)
    repaid = [repaid_after(study["tables"][first], name, answers(study, first)) for name in (DEMO_RECIPE, TASK_RECIPE)]
    k = study["settings"]["k"]
    return (f"On SmolLM2 it is the most accurate way to sample p_base^{study['settings']['power_alpha']:g} for its "
            f"tokens: {pct(cell(study, first, sampler))} avg@{k} on {first}\narithmetic at {setting}, "
            f"{cell(study, first, sampler, 'tokens_per_answer'):.0f} tokens per answer, against "
            f"{pct(cell(study, first, ir16))} and {cell(study, first, ir16, 'tokens_per_answer'):.0f} tokens for "
            "importance resampling\n([results.md](results.md#is-training-worth-it)). Its options: `--particles` "
            "(the cost: about that many\nanswers' worth of tokens, in one batched decode), `--ess-threshold` (0.5; "
            "0.25 or 1 changed nothing\nbeyond noise in the exact study) and `--alpha-ramp-tokens` (off; a ramp "
            "helped with EOS in the exact\nstudy, and at N = 8 gave "
            f"{pct(cell(study, first, ramp))} against {pct(cell(study, first, smc8))} on {first}, "
            f"{points(ramped[first])} points, and {others} noise on\nthe other tasks). It samples the base "
            "itself, so it takes no adapter.\n\n"
            f"Which to choose, from what was measured on SmolLM2-135M:\n\n"
            "* **Few prompts, or the best accuracy at any cost per answer: sample at inference.**\n"
            f"  {spoken(sampler)[0].upper() + spoken(sampler)[1:]} beat the best trained policy by "
            f"{points(versus(study, first, sampler, policy), sign=False)} points on {first}\n"
            "  arithmetic, with no training and no risk of a bad run.\n"
            "* **Many prompts, or answers served to users: train.** A trained adapter answers at the base's cost\n"
            f"  ({faster:.0f} times faster than {setting} here, "
            f"{cell(study, first, policy, 'tokens_per_answer'):.0f} tokens per answer against "
            f"{cell(study, first, sampler, 'tokens_per_answer'):.0f}), and its minutes of\n  training were "
            f"repaid after {min(repaid):.0f}-{max(repaid):.0f} answers. Training also gives a model you can merge, "
            "ship and serve\n  with vLLM.\n"
            "* **Check first that sharpening helps at all.** On word problems no sampler of "
            f"p_base^{study['settings']['power_alpha']:g} and no\n  training helped this 135M model; "
            "`powerflow preview` estimates p_alpha's accuracy before either.\n"
            "* **Distilling the sampler** (supervised fine-tuning on its answers, at PowerFlow's sampled tokens) "
            f"was\n  mixed: {below_above(study, first)} PowerFlow on {first}, "
            f"{below_above(study, second, again=True)} on {second}.\n")


def below_above(study: dict, task: str, again: bool = False) -> str:
    """The distilled sampler against PowerFlow's demo recipe: '11.0 ± 3.3 points below'; `again`: 'above' alone."""
    change = versus(study, task, DISTILLED, DEMO_RECIPE)
    side = "below" if change["mean"] < 0 else "above"
    return f"{points(change, sign=False)} {side}" if again else f"{points(change, sign=False)} points {side}"


BLOCKS = {
    "power-choose": Block(("power_real.json",), evaluation_choice),
    "results-glance": Block(("power_real.json", "flatten_real.json"), lambda study, flattening: "\n".join(
        (power_table(study, GLANCE), glance_reading(study), flatten_glance(flattening)))),
    "power-real-table": Block(("power_real.json",), table_page),
    "power-real-findings": Block(("power_real.json",), findings),
}
