"""Does training learn p_base^alpha? An exact study on problems small enough to enumerate.

A tiny random Qwen2 (hidden 32, 2 layers) with an 8-token vocabulary answers two
prompts with completions of at most 3 tokens: 512 completions per prompt at fixed
length, 400 with EOS. Every completion's probability under the policy, the base
and the targets is computed exactly (`powerflow_lite.exact`), so the KL to the
target is exact, not estimated. Each run trains through the same `setup` and
`train` the CLI uses (LoRA r=8 on the full-precision base, 16 samples per
prompt per step).

    python examples/exact_alpha.py                  # the whole study, about 20 minutes on 2 CPU cores
    python examples/exact_alpha.py --quick          # a smoke run: fewer cases and steps
    python examples/exact_alpha.py --steps 800 --out runs/exact

Printed and written to OUT (default runs/exact-alpha): a table (exact_alpha.md),
every number (exact_alpha.json) and KL against step per objective (exact_alpha.png,
when matplotlib is installed).

The floor of a problem is the smallest exact KL the same LoRA family is known
to reach: the smaller of (a) minimising the enumerated KL itself by Adam from
the same initialisation (`exact.minimize_kl`) and (b) the
lowest KL any run of the study passed through on that problem. "attained" is
(KL_start - KL_end) / (KL_start - floor).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from powerflow_lite import exact
from powerflow_lite.config import TrainConfig
from powerflow_lite.data import chat_stop_ids
from powerflow_lite.model import add_lora, load_base_model, load_tokenizer
from powerflow_lite.plot import pyplot
from powerflow_lite.samplers.rollouts import eos_token_ids
from powerflow_lite.tiny import write_tiny_model

transformers.utils.logging.disable_progress_bar()  # one progress line of our own instead of one per model load
warnings.filterwarnings("ignore", category=FutureWarning)

ALPHAS = (0.5, 2.0, 4.0)
OBJECTIVES = ("latb", "tb-traj", "tb-token", "rl-traj", "rl-token")
BASES = {"x4": 4.0, "x8": 8.0}  # multiplier of the random LM head's logits: larger is a peakier base
PROMPTS = ("abc", "edd")
# The many-prompt problem: 64 distinct three-letter prompts, 8 of them per step, so that each prompt comes back
# only every 8 steps on average and the log Z' head must generalise across prompts (it cannot memorise two).
MANY_PROMPTS = tuple(a + b + c for a in "abcde" for b in "abcde" for c in "abcde")[:64]
MANY_PER_STEP = 8
PROMPT_SETS = {"two": PROMPTS, "many": MANY_PROMPTS}
MAX_NEW_TOKENS = 3
# What the study trains with; the rest is TrainConfig's defaults. A tiny LoRA wants a larger lr than a 1.5B one.
TRAINING = dict(prompts_per_step=2, samples_per_prompt=16, max_new_tokens=MAX_NEW_TOKENS, chat_template="none",
                quant="none", device="cpu", lora_r=8, lora_alpha=16, gradient_checkpointing=False, save_every=0,
                show_every=0, micro_batch_size=32, lr=1e-3, z_lr=1e-2, warmup_steps=0)
# Before/after rows: latb on the peaky base at alpha 4 with settings changed from the default.
VARIANTS: dict[str, dict] = {
    "default": {},
    # the learned head in the loss (--log-z head), started at 0 and learning slowly; then the same slow head started
    # at the first batch's estimate
    "z-init 0, z-lr 1e-3": {"z_init": "zero", "z_lr": 1e-3, "log_z": "head"},
    "z-lr 1e-3": {"z_lr": 1e-3, "log_z": "head"},
    "log-z batch, z-init 0, z-lr 1e-3": {"log_z": "batch", "z_init": "zero", "z_lr": 1e-3},  # no head in the loss
    "constant lr": {"lr_schedule": "constant"},  # the default decays the lr along a cosine
    "log-z head": {"log_z": "head"},  # the learned head in the loss (the default until the batch estimate replaced it)
    "log-z batch": {"log_z": "batch"},  # each prompt's batch estimate in the loss; the head tracks it
    "log-z hybrid": {"log_z": "hybrid"},  # the head in the loss, re-centred on the batch estimates every step
}
LOG_Z_VARIANTS = ("log-z head", "log-z batch", "log-z hybrid")
ABLATION = ("z-init 0, z-lr 1e-3", "z-lr 1e-3", "constant lr", "log-z head", "log-z hybrid")  # two prompts


@dataclass(frozen=True)
class Case:
    objective: str
    alpha: float
    regime: str  # "fixed" (--ignore-eos, all V^L) or "eos" (stop at EOS or at L)
    base: str  # a key of BASES
    variant: str = "default"
    prompts: str = "two"  # a key of PROMPT_SETS

    @property
    def target(self) -> str:
        """The target the objective's fixed point is: the LA-TB target for latb with EOS, p_alpha otherwise."""
        return "latb" if self.objective == "latb" and self.regime == "eos" else "alpha"

    @property
    def problem_key(self) -> tuple:
        return self.alpha, self.regime, self.base, self.prompts


@dataclass
class Result:
    case: Case
    curve: list = field(default_factory=list)  # (step, kl_alpha, kl_latb)
    tokens: list = field(default_factory=list)  # completion tokens sampled by each point of the curve
    start: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)
    seconds: float = 0.0


def cases(quick: bool) -> list[Case]:
    """Every objective at fixed length; the sequence-level ones on the peaky base and with EOS; the variants."""
    if quick:
        return [Case(o, 2.0, regime, "x4") for regime in ("fixed", "eos") for o in ("latb", "tb-traj")]
    sequence_level = ("latb", "tb-traj", "rl-traj")
    out = [Case(o, a, "fixed", "x4") for o in OBJECTIVES for a in ALPHAS]
    out += [Case(o, a, "fixed", "x8") for o in sequence_level for a in ALPHAS]
    out += [Case(o, a, "eos", "x4") for o in sequence_level for a in ALPHAS]
    out += [Case("latb", 4.0, "fixed", "x8", v) for v in ABLATION]
    return out + many_prompt_cases()


def many_prompt_cases() -> list[Case]:
    """latb on 64 prompts with each way of putting log Z' in the loss: at fixed length on the peaky base, and with
    EOS, where a log Z' that lags behind biases the length-normalised target (at fixed length the lag only adds
    zero-mean noise to the gradient)."""
    out = [Case("latb", a, "fixed", "x8", v, "many") for a in (2.0, 4.0) for v in LOG_Z_VARIANTS]
    return out + [Case("latb", a, "eos", "x4", v, "many") for a in ALPHAS for v in LOG_Z_VARIANTS]


def model_dirs(root: Path) -> dict[str, Path]:
    return {name: write_tiny_model(root / f"model-{name}", hidden_size=32, num_layers=2, chat_template=False,
                                   alphabet="abcde", logit_scale=scale) for name, scale in BASES.items()}


def problem_for(model, tokenizer, prompt_ids, case: Case) -> exact.Problem:
    """Enumerate what the trainer's sampler can draw: its vocabulary, and its stop ids unless --ignore-eos."""
    stop_ids = () if case.regime == "fixed" else tuple(eos_token_ids(model, tokenizer)) + tuple(
        chat_stop_ids(tokenizer, TRAINING["chat_template"]))
    return exact.build_problem(model, prompt_ids, MAX_NEW_TOKENS, len(tokenizer), case.alpha, stop_ids,
                               tokenizer.pad_token_id)


def train_case(case: Case, root: str, steps: int, eval_every: int, seed: int, overrides: dict | None = None) -> Result:
    """One training run through powerflow's own setup/train, with the exact KL every `eval_every` steps;
    `overrides` change the config beyond the case's variant (examples/replay_exact.py)."""
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    torch.set_num_threads(1)
    root = Path(root)
    with tempfile.TemporaryDirectory(dir=root) as out:
        per_step = {"prompts_per_step": MANY_PER_STEP} if case.prompts == "many" else {}
        cfg = TrainConfig(model=str(root / f"model-{case.base}"), prompts=str(root / f"prompts-{case.prompts}.jsonl"),
                          output=str(Path(out) / "run"), alpha=case.alpha, objective=case.objective, max_steps=steps,
                          ignore_eos=case.regime == "fixed", seed=seed,
                          **{**TRAINING, **per_step, **VARIANTS[case.variant], **(overrides or {})})
        started = time.perf_counter()
        run = setup(cfg)
        problem = problem_for(run.model, run.tokenizer, run.prompt_ids, case)
        result = Result(case, start=exact.evaluate(run.model, problem))
        result.curve.append((0, result.start["kl_alpha"], result.start["kl_latb"]))
        result.tokens.append(0)
        sampled = 0
        for step in train(run):
            sampled += step.metrics["sampled_tokens"]
            if step.step % eval_every == 0 or step.step == steps:
                report = exact.evaluate(run.model, problem)
                result.curve.append((step.step, report["kl_alpha"], report["kl_latb"]))
                result.tokens.append(sampled)
        result.end, result.seconds = report, time.perf_counter() - started
    return result


def floor_of(key: tuple, target: str, root: str, steps: int, seed: int) -> float:
    """Minimise the exact KL over a fresh LoRA (same rank, targets and seed as training) with Adam."""
    alpha, regime, base, prompt_set = key
    torch.set_num_threads(1)
    directory = str(Path(root) / f"model-{base}")
    tokenizer = load_tokenizer(directory)
    best = math.inf
    for lr in (3e-3,):  # 1e-2 is faster on easy problems but diverges for a while on the peaky base
        torch.manual_seed(seed)  # as setup() seeds LoRA initialisation
        model = add_lora(load_base_model(directory, "none", torch.device("cpu"), False), TRAINING["lora_r"],
                         TRAINING["lora_alpha"], 0.0, "all-linear", False)
        problem = problem_for(model, tokenizer, [tokenizer(p).input_ids for p in PROMPT_SETS[prompt_set]],
                              Case("latb", alpha, regime, base, prompts=prompt_set))
        # many prompts: each Adam step on the exact KL of MANY_PER_STEP of them (the full mean every 20 steps),
        # as training sees them; the whole 64 x 512 enumeration per step would take 3 s on 2 cores
        subset = MANY_PER_STEP if prompt_set == "many" else 0
        best = min(best, min(exact.minimize_kl(model, problem, target, steps, lr, prompts_per_step=subset, seed=seed)))
    return best


def run_study(args) -> dict:
    root = Path(args.out) / "work"
    root.mkdir(parents=True, exist_ok=True)
    model_dirs(root)
    for name, prompts in PROMPT_SETS.items():
        (root / f"prompts-{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    todo = many_prompt_cases() if args.only_many else cases(args.quick)
    floor_keys = sorted({(c.problem_key, c.target) for c in todo})
    # the floors are the longest jobs: first, so that the pool does not end on one of them
    jobs = [(floor_of, (*fk, str(root), args.floor_steps, args.seed)) for fk in floor_keys]
    jobs += [(train_case, (c, str(root), args.steps, args.eval_every, args.seed)) for c in todo]
    started = time.perf_counter()
    if args.workers == 1:  # in this process: easier to debug and to test
        outputs = [function(*job_args) for function, job_args in jobs]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(function, *job_args) for function, job_args in jobs]
            for done, _ in enumerate(as_completed(futures), 1):
                print(f"\r{done}/{len(jobs)} runs and floors done, {time.perf_counter() - started:.0f} s", end="",
                      file=sys.stderr, flush=True)
            print(file=sys.stderr)
            outputs = [f.result() for f in futures]
    floors, results = dict(zip(floor_keys, outputs)), outputs[len(floor_keys):]
    descent = dict(floors)
    # (b) of the floor: nothing the LoRA family passed through can be below what it can reach
    for r in results:
        for target, column in (("alpha", 1), ("latb", 2)):
            if (r.case.problem_key, target) in floors:
                floors[r.case.problem_key, target] = min(floors[r.case.problem_key, target],
                                                         min(point[column] for point in r.curve))
    rows = [{**table_row(r, floors[r.case.problem_key, r.case.target]),
             "kl_floor_descent": descent[r.case.problem_key, r.case.target]} for r in results]
    return {"rows": rows, "curves": [{**asdict(r.case), "curve": r.curve} for r in results],
            "settings": {"steps": args.steps, "seed": args.seed, "training": TRAINING, "variants": VARIANTS,
                         "bases": BASES, "prompts": PROMPTS, "many_prompts": MANY_PROMPTS,
                         "many_per_step": MANY_PER_STEP, "max_new_tokens": MAX_NEW_TOKENS},
            "seconds": time.perf_counter() - started}


def table_row(r: Result, floor: float) -> dict:
    key = "kl_latb" if r.case.target == "latb" else "kl_alpha"
    return {
        **asdict(r.case),
        "target": r.case.target,
        "kl_start": r.start[key],
        "kl_end": r.end[key],
        "kl_floor": floor,
        "attained": exact.fraction_attained(r.start[key], r.end[key], floor),
        "kl_alpha_end": r.end["kl_alpha"],
        "length_base": r.end["length_base"],
        "length_alpha": r.end["length_alpha"],
        "length_latb": r.end["length_latb"],
        "length_trained": r.end["length_policy"],
        "inversion_end": r.end["inversion_rate"],  # the base has none: p_alpha is a monotone function of p_base
        "seconds": r.seconds,
    }


def markdown(rows: list[dict]) -> str:
    head = ("| objective | variant | prompts | alpha | regime | base | target | KL start -> end | floor | attained "
            "| length base / p_alpha / LA-TB / trained | inversions |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lengths = " / ".join(f"{r[k]:.2f}" for k in ("length_base", "length_alpha", "length_latb", "length_trained"))
        lines.append(f"| {r['objective']} | {r['variant']} | {len(PROMPT_SETS[r['prompts']])} | {r['alpha']:g} "
                     f"| {r['regime']} | {r['base']} "
                     f"| {'LA-TB' if r['target'] == 'latb' else 'p_alpha'} | {r['kl_start']:.3f} -> {r['kl_end']:.3f} "
                     f"| {r['kl_floor']:.3f} | {100 * r['attained']:.0f}% | {lengths} "
                     f"| {r['inversion_end']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    panels = sorted({(c["regime"], c["base"], c.get("prompts", "two")) for c in study["curves"]},
                    key=lambda p: (p[2] != "two", p[0] != "fixed", p[1]))
    alphas = sorted({c["alpha"] for c in study["curves"]})
    figure, axes = plt.subplots(len(panels), len(alphas), figsize=(4.2 * len(alphas), 3.2 * len(panels)),
                                squeeze=False)
    for i, (regime, base, prompt_set) in enumerate(panels):
        for j, alpha in enumerate(alphas):
            ax = axes[i][j]
            panel = (regime, base, prompt_set, alpha)
            curves = [c for c in study["curves"]
                      if (c["regime"], c["base"], c.get("prompts", "two"), c["alpha"]) == panel]
            if not curves:  # not every problem is run at every alpha
                ax.set_visible(False)
                continue
            for c in curves:
                column = 2 if c["objective"] == "latb" and regime == "eos" else 1
                label = c["objective"] + ("" if c["variant"] == "default" else f" ({c['variant']})")
                if regime == "eos":
                    label += " vs LA-TB target" if column == 2 else " vs p_alpha"
                ax.plot([p[0] for p in c["curve"]], [max(p[column], 1e-5) for p in c["curve"]], label=label,
                        linestyle="-" if c["variant"] == "default" else "--")
            ax.set_yscale("log")
            ax.set_title(f"alpha={alpha:g}, {'fixed length' if regime == 'fixed' else 'with EOS'}, base {base}, "
                         f"{len(PROMPT_SETS[prompt_set])} prompts", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("exact KL(pi || target)", fontsize=8)
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/exact-alpha", help="where the table, JSON and plot go")
    parser.add_argument("--steps", type=int, default=400, help="training steps per run")
    parser.add_argument("--eval-every", type=int, default=20, help="exact KL every N steps (for the plot)")
    parser.add_argument("--floor-steps", type=int, default=300, help="Adam steps on the exact KL for the floor")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs in parallel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="alpha 2, latb and tb-traj only, 100 steps")
    parser.add_argument("--only-many", action="store_true",
                        help="only the 64-prompt problems (how log Z' enters the loss), into exact_alpha_many.*")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.floor_steps, args.eval_every = min(args.steps, 100), min(args.floor_steps, 100), 10
    out = Path(args.out)
    study = run_study(args)
    name = "exact_alpha_many" if args.only_many else "exact_alpha"
    (out / f"{name}.json").write_text(json.dumps(study, indent=1))
    table = markdown(study["rows"])
    (out / f"{name}.md").write_text(table)
    print(table)
    drew = plot(study, out / f"{name}.png")
    written = [out / f"{name}.json", out / f"{name}.md"] + ([out / f"{name}.png"] if drew else [])
    print(f"{len(study['rows'])} runs in {study['seconds']:.0f} s; wrote " + ", ".join(map(str, written))
          + ("" if drew else " (no plot: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
