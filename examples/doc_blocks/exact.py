"""The exact study (examples/exact_alpha.py, examples/results/exact_alpha.json): does training learn p^alpha on
problems small enough to enumerate, its lengths with EOS, and how log Z' enters the loss there. Also design.md's
reading of it, with the reasoning demo's lengths (examples/results/demo_run/) beside it, and of the preview's check
against exact p_alpha (examples/preview_exact.py)."""

from __future__ import annotations

import math
import re

from exact_alpha import cases  # the study's own list of runs, for the --quick count
from preview_exact import report as preview_report  # the study's own count of SMC against the preview

from doc_blocks import Block, lr_text, span
from doc_blocks.demos import demo_metrics


def run(study: dict, objective: str, alpha: float, regime: str = "fixed", base: str = "x4",
        variant: str = "default", prompts: str = "two") -> dict:
    """The row of exact_alpha.json of one run."""
    return next(r for r in study["rows"] if (r["objective"], r["alpha"], r["regime"], r["base"], r["variant"],
                                              r["prompts"]) == (objective, alpha, regime, base, variant, prompts))


def kl(value: float) -> str:
    """A KL as the tables show it: 3 decimals down to 0.01, 4 down to 0.001, below that one significant digit."""
    if value >= 0.01:
        return f"{value:.3f}"
    if value >= 0.001:
        return f"{value:.4f}"
    value = float(f"{value:.1g}")
    return f"{value:.{-math.floor(math.log10(value))}f}"



def pct(value: float) -> str:
    """A share as a whole percentage, without the sign."""
    return f"{100 * value:.0f}"


def two(value: float) -> str:
    """A length, KL or gap to 2 decimals."""
    return f"{value:.2f}"




def listed(alphas: list[float]) -> str:
    """`0.5, 2 and 4`."""
    names = [f"{a:g}" for a in alphas]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def floors(study: dict) -> int:
    """How many floors the study computed: one per problem (alpha, regime, base, prompts) and target."""
    return len({(r["alpha"], r["regime"], r["base"], r["prompts"], r["target"]) for r in study["rows"]})


def exact_intro(study: dict) -> str:
    """results.md's opening of "Does it learn p^alpha?": the gap at alpha 4 and how the study is built."""
    at4 = [r for r in study["rows"] if r["objective"] == "latb" and r["alpha"] == 4 and r["variant"] == "default"
           and r["prompts"] == "two"]
    peaky = run(study, "latb", 4.0, base="x8")
    training = study["settings"]["training"]
    return ("On problems where it can be checked exactly: yes, close to what the adapter can represent.\n"
            f"At alpha 4 a gap of {span([r['kl_end'] - r['kl_floor'] for r in at4], two)} nats to the floor "
            f"remains ({two(peaky['kl_end'])} against {two(peaky['kl_floor'])} on the peaky base),\n"
            "and \"attained\", being relative to the starting KL, hides that; the full table lists the floors.\n"
            "`examples/exact_alpha.py` builds a tiny random Qwen2 (hidden 32, 2 layers, an\n"
            f"8-token vocabulary) and two prompts whose completions of up to {study['settings']['max_new_tokens']} "
            "tokens can all be\n"
            "enumerated (512 per prompt at fixed length, 400 when EOS ends them). It trains LoRA "
            f"r={training['lora_r']}\n"
            f"through the same `setup` and `train` as `powerflow train` ({training['samples_per_prompt']} samples "
            f"per prompt, lr {lr_text(training['lr'])}\n"
            f"with the default cosine decay, {study['settings']['steps']} steps). `powerflow_lite.exact` gives every "
            "completion's\n"
            "exact probability under the policy, the base and the targets, so every KL below is exact,\n"
            "not estimated. The *floor* is the lowest KL the same LoRA family reaches when the exact\n"
            "KL itself is minimised by Adam. *Attained* is `(KL_start - KL_end) / (KL_start - floor)`.\n")


def exact_commands(study: dict) -> str:
    """The commands that run the study, with its size and time."""
    return ("```bash\n"
            f"python examples/exact_alpha.py          # {len(study['rows'])} runs and {floors(study)} floors into "
            f"runs/exact-alpha/: {study['seconds'] / 60:.0f} minutes on 2 CPU cores\n"
            f"python examples/exact_alpha.py --quick  # {len(cases(quick=True))} short runs\n"
            "```\n")


EXACT_TABLE = [  # (label, runs as (objective, alpha, regime, base)): a cell of several runs lists each
    ("latb", [("latb", 0.5, "fixed", "x4")]),
    ("latb", [("latb", 2.0, "fixed", "x4")]),
    ("latb", [("latb", 4.0, "fixed", "x4")]),
    ("latb", [("latb", 0.5, "fixed", "x8")]),
    ("latb", [("latb", 2.0, "fixed", "x8")]),
    ("latb", [("latb", 4.0, "fixed", "x8")]),
    ("tb-traj / rl-traj / rl-token", [(o, 4.0, "fixed", "x4") for o in ("tb-traj", "rl-traj", "rl-token")]),
    ("tb-token", [("tb-token", a, "fixed", "x4") for a in (2.0, 4.0)]),
    ("latb (vs LA-TB target)", [("latb", 2.0, "eos", "x4")]),
    ("tb-traj (vs p_alpha)", [("tb-traj", 2.0, "eos", "x4")]),
    ("latb (vs LA-TB target)", [("latb", 4.0, "eos", "x4")]),
    ("tb-traj (vs p_alpha)", [("tb-traj", 4.0, "eos", "x4")]),
    ("latb (vs LA-TB target)", [("latb", 0.5, "eos", "x4")]),
    ("tb-traj (vs p_alpha)", [("tb-traj", 0.5, "eos", "x4")]),
]


def joined(values: list[str]) -> str:
    """Cells of several runs: the value once when all agree, else each in turn."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def exact_table(study: dict) -> str:
    """results.md's selection of the exact study's runs, with how it was run."""
    bases = study["settings"]["bases"]
    lines = [f"Seed {study['settings']['seed']}, on a 2-core CPU. Full table:",
             "[`examples/results/exact_alpha.md`](../examples/results/exact_alpha.md); every number:",
             f"`exact_alpha.json`. \"x4\" and \"x8\" are the random LM head's logits multiplied by "
             f"{bases['x4']:g} or by {bases['x8']:g};", "x8 is the peaky base.", "",
             "| objective | alpha | completions | base | KL(pi ‖ target) start -> end | floor | attained "
             "| mean length: base / p_alpha / LA-TB target / trained |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, keys in EXACT_TABLE:
        rows = [run(study, *key) for key in keys]
        starts = [kl(r["kl_start"]) for r in rows]
        ends = [kl(r["kl_end"]) for r in rows]
        change = (f"{starts[0]} -> {' / '.join(ends)}" if len(set(starts)) == 1
                  else " / ".join(f"{s} -> {e}" for s, e in zip(starts, ends)))
        first = rows[0]
        lengths = (f"{first['length_base']:.2f} / {first['length_alpha']:.2f} / {first['length_latb']:.2f} / "
                   f"**{first['length_trained']:.2f}**" if first["regime"] == "eos" else "")
        alphas = joined([f"{r['alpha']:g}" for r in rows])
        attained = " / ".join(f"{pct(r['attained'])}%" for r in rows)
        lines.append(f"| {label} | {alphas} | {'with EOS' if first['regime'] == 'eos' else 'fixed length'} | "
                     f"{first['base']} | {change} | {joined([kl(r['kl_floor']) for r in rows])} | {attained} | "
                     f"{lengths} |")
    return "\n".join(lines) + "\n"


def exact_findings(study: dict) -> str:
    """results.md's reading of the exact study: what it says, in four bullets."""
    rows = [r for r in study["rows"] if r["variant"] == "default" and r["prompts"] == "two"]
    latb_fixed = [r for r in rows if r["objective"] == "latb" and r["regime"] == "fixed"]
    alphas = sorted({r["alpha"] for r in latb_fixed})
    peaky = run(study, "latb", 4.0, base="x8")
    tb_token = [r for r in rows if r["objective"] == "tb-token" and r["alpha"] > 1]
    traj2, traj4 = run(study, "tb-traj", 2.0, "eos"), run(study, "tb-traj", 4.0, "eos")
    latb2, latb4 = run(study, "latb", 2.0, "eos"), run(study, "latb", 4.0, "eos")
    traj_half = run(study, "tb-traj", 0.5, "eos")
    latb_at4 = [r for r in rows if r["objective"] == "latb" and r["alpha"] == 4]
    below4 = [r for r in rows if r["alpha"] < 4]
    inversions = {
        "latb": [r["inversion_end"] for r in below4 if r["objective"] == "latb" and r["regime"] == "fixed"],
        "tb-token": [r["inversion_end"] for r in below4 if r["objective"] == "tb-token"],
        "eos": [r["inversion_end"] for r in below4 if r["objective"] == "latb" and r["regime"] == "eos"],
        "4": [r["inversion_end"] for r in latb_at4]}
    no_stall = [r["attained"] for r in rows if r["objective"] == "latb" and r["alpha"] == 2] + [peaky["attained"]]
    return (
        "* **At fixed length every sequence-level objective learns p_alpha.** `latb` attains "
        f"{span([r['attained'] for r in latb_fixed], pct)}%\n"
        f"  of the achievable KL reduction for alpha {listed(alphas)}, including the peaky base at alpha 4\n"
        f"  ({two(peaky['kl_start'])} -> {two(peaky['kl_end'])}, floor {two(peaky['kl_floor'])}). Where lengths "
        "cannot differ, `tb-traj`, `rl-traj` and\n"
        "  `rl-token` share that fixed point and do as well. `tb-token`'s fixed point is a per-token\n"
        "  tempering, not p_alpha, and it ends measurably further away "
        f"({span([r['attained'] for r in tb_token], pct)}%). Completions of\n"
        f"  {study['settings']['max_new_tokens']} tokens are too short to show the repetition hack the paper "
        "attributes to it.\n"
        "* **The length ablation agrees with the paper, and the exact numbers say why.** With EOS,\n"
        f"  `tb-traj` shortens completions: {two(traj2['length_trained'])} tokens at alpha 2 and "
        f"{two(traj4['length_trained'])} at alpha 4, against {two(traj2['length_base'])}\n"
        "  for the base. `latb` keeps them where the base had them: "
        f"{two(latb2['length_trained'])} and {two(latb4['length_trained'])}. The shortening is\n"
        "  not a training failure of `tb-traj`: it moves towards p_alpha "
        f"({pct(traj2['attained'])}% and {pct(traj4['attained'])}% of its achievable\n"
        f"  reduction, though at alpha 4 the adapter stays {traj4['kl_floor']:.1f}-{traj4['kl_end']:.1f} nats "
        f"away and at {two(traj4['length_trained'])} tokens, not\n"
        f"  p_alpha's {two(traj4['length_alpha'])}), and p_alpha itself is short: raising a\n"
        "  distribution to the power alpha > 1 favours short completions, whose probabilities are\n"
        f"  products of fewer factors below 1 (mean length {two(traj2['length_alpha'])} at alpha 2, "
        f"{two(traj4['length_alpha'])} at alpha 4). The\n"
        "  length-normalised `latb` learns a different target, `p_base^alpha exp(-lambda |y|)`, the\n"
        "  alpha-power distribution at each length, with the length distribution tilted back\n"
        f"  ({two(latb2['length_latb'])} and {two(latb4['length_latb'])}). For alpha < 1 the effect reverses: "
        f"p_alpha is longer ({two(traj_half['length_alpha'])}), and `tb-traj`\n"
        "  lengthens completions to match.\n"
        "* **Inversion rate.** Among the 32 completions most likely under p_alpha, the trained `latb`\n"
        f"  policy orders {span(inversions['latb'], pct)}% of pairs the other way at fixed length for alpha "
        f"{listed(alphas[:-1])} (`tb-token`: "
        f"{span(inversions['tb-token'], pct)}%;\n"
        f"  with EOS {span(inversions['eos'], pct)}%), and {span(inversions['4'], pct)}% at alpha 4, where the\n"
        "  LoRA cannot represent p_alpha (floor "
        f"{span([r['kl_floor'] for r in latb_at4], two)}) and many top completions are near-ties.\n"
        "  (The paper reports 0.09 on its real models. The base itself has none, since p_alpha is a\n"
        "  monotone function of p_base.)\n"
        f"* **No stall.** Training reaches {span(no_stall, pct)}% of the achievable reduction at alpha 2 and on "
        "the peaky base at\n"
        f"  alpha 4 with on-policy samples, groups of {study['settings']['training']['samples_per_prompt']} and no "
        "replay buffer; it does not stall at this scale.\n"
        "  (Per-layer head learning rates, `log_z.py` and gradient clipping are not ablated.)\n")


LOG_Z_ABLATION = [  # (label, variant of exact_alpha.json): latb, alpha 4, peaky base, fixed length, two prompts
    ("default: `--log-z auto` (batch), z-lr 1e-2, cosine lr", "default"),
    ("`--log-z hybrid`", "log-z hybrid"),
    ("`--log-z head`, head started at the first batch's estimate, z-lr 1e-2", "log-z head"),
    ("`--log-z head`, z-lr 1e-3", "z-lr 1e-3"),
    ("`--log-z head`, head started at 0, z-lr 1e-3", "z-init 0, z-lr 1e-3"),
    ("default with a constant lr", "constant lr"),
]
LOG_Z_MANY = [(2.0, "fixed", "x8"), (4.0, "fixed", "x8"), (0.5, "eos", "x4"), (2.0, "eos", "x4"), (4.0, "eos", "x4")]


def exact_log_z(study: dict) -> str:
    """results.md's exact-study half of "How log Z' enters the loss": the ablation on two prompts, then 64."""
    settings = study["settings"]
    ablation = [(label, run(study, "latb", 4.0, base="x8", variant=variant)) for label, variant in LOG_Z_ABLATION]
    lines = ["**On the exact problems** the choice hardly matters, even where the head must generalise; only",
             "a head that starts far from its value (at 0) and learns slowly (z-lr 1e-3) holds training back.",
             f"Two prompts, latb, alpha 4, peaky base, fixed length, {settings['steps']} steps, one seed:", "",
             f"| setting | KL start -> end (floor {kl(ablation[0][1]['kl_floor'])}) | attained | inversion rate |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {kl(r['kl_start'])} -> {kl(r['kl_end'])} | {pct(r['attained'])}% | "
              f"{r['inversion_end']:.2f} |" for label, r in ablation]
    many, per_step = len(settings["many_prompts"]), settings["many_per_step"]
    lines += ["", f"and {many} prompts, {per_step} of them a step, so that each prompt comes back every "
              f"{many // per_step} steps on average and",
              "the head cannot memorise them (rows of [`exact_alpha.md`](../examples/results/exact_alpha.md);",
              "`python examples/exact_alpha.py --only-many` runs just these, into `exact_alpha_many.*`):", "",
              "| alpha | completions | base | KL start | end: `batch` / `head` / `hybrid` | floor | attained |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for alpha, regime, base in LOG_Z_MANY:
        rows = [run(study, "latb", alpha, regime, base, f"log-z {mode}", "many")
                for mode in ("batch", "head", "hybrid")]
        attained = " / ".join(f"{100 * r['attained']:.1f}%" for r in rows)
        lines.append(f"| {alpha:g} | {'with EOS' if regime == 'eos' else 'fixed length'} | {base} | "
                     f"{kl(rows[0]['kl_start'])} | {' / '.join(kl(r['kl_end']) for r in rows)} | "
                     f"{kl(rows[0]['kl_floor'])} | {attained} |")
    return "\n".join(lines) + "\n"


def design_exact_setup(study: dict) -> str:
    """design.md's section 6.2: the exact problems and how they are trained."""
    settings, training = study["settings"], study["settings"]["training"]
    return ("**6.2 Exact enumerable problems** (`exact.py`, `examples/exact_alpha.py`). The model is a tiny random\n"
            "Qwen2: hidden size 32, 2 layers, an 8-token vocabulary, with its LM-head logits multiplied by "
            f"{settings['bases']['x4']:g} (or by {settings['bases']['x8']:g}\n"
            f"for a \"peaky\" base). Completions have at most {settings['max_new_tokens']} tokens, so every one can "
            "be listed: all V^L = 512 per\n"
            "prompt at fixed length (`--ignore-eos`), or with EOS the 400 that end at their first stop token or\n"
            "reach L without one. Their probabilities under any model sum to one (`mass_check`). Training goes\n"
            f"through the CLI's own `setup`/`train`, with LoRA r = {training['lora_r']}, "
            f"{training['samples_per_prompt']} samples per prompt, lr {lr_text(training['lr'])} with cosine\n"
            f"decay, and {settings['steps']} steps. A {len(settings['many_prompts'])}-prompt variant "
            f"({settings['many_per_step']} prompts per step) forces the head to generalise rather\n"
            "than memorise. Because every probability is exact, the study reports:\n")


def design_lengths(study: dict, metrics: list[dict]) -> str:
    """design.md's section 3 on the length tilt: the exact study's lengths at alpha 2 and the reasoning demo's."""
    latb, traj = run(study, "latb", 2.0, "eos"), run(study, "tb-traj", 2.0, "eos")
    demo = demo_metrics(metrics)
    return ("The cost is the exp(-lambda_q |y|) tilt: where lengths can differ, `latb` learns the alpha-power within\n"
            "each length, with a length distribution of its own. In the exact study at alpha 2 (section 6), mean\n"
            f"lengths are {two(latb['length_base'])} tokens (base), {two(latb['length_alpha'])} (p_alpha), "
            f"{two(latb['length_latb'])} (LA-TB target); `tb-traj` trains to {two(traj['length_trained'])} and\n"
            f"`latb` to {two(latb['length_trained'])}. On a real model the target can still move lengths: the "
            f"reasoning demo's completions go\nfrom {demo['first']['length_mean']:.0f} tokens to "
            f"{demo['last']['length_mean']:.0f} (docs/results.md).\n")


def design_preview_smc(result: dict) -> str:
    """design.md's section 7 on why the preview keeps its own samples: SMC's errors against the preview's."""
    counts = re.search(r"over the (\d+) comparisons .*?worse in (\d+), tied in (\d+), better in (\d+)",
                       preview_report(result), re.S)
    total, worse, tied, better = counts.groups()
    alphas = len(next(iter(result["regimes"].values()))["exact"])
    return ("A particle set serves one alpha: after resampling a particle has no density to reweigh it to\n"
            "another, so `powerflow preview`, which reweighs one set of the base's samples to every alpha, keeps\n"
            f"its own samples. `examples/preview_exact.py` measured the alternative, N/{alphas} particles for each of "
            f"its {alphas}\n"
            f"alphas with their final weights: worse in {worse} of {total} comparisons of the error against exact "
            f"values,\nbetter in {better} ({tied} tie).\n")


BLOCKS = {
    "exact-intro": Block(("exact_alpha.json",), exact_intro),
    "exact-commands": Block(("exact_alpha.json",), exact_commands),
    "exact-table": Block(("exact_alpha.json",), exact_table),
    "exact-findings": Block(("exact_alpha.json",), exact_findings),
    "exact-log-z": Block(("exact_alpha.json",), exact_log_z),
    "design-exact-setup": Block(("exact_alpha.json",), design_exact_setup),
    "design-lengths": Block(("exact_alpha.json", "demo_run/metrics.jsonl"), design_lengths),
    "design-preview-smc": Block(("preview_exact.json",), design_preview_smc),
}
