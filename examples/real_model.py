"""Results on a real model: PowerFlow on SmolLM2-135M-Instruct, against sampling the base at another temperature.

    python examples/real_model.py            # the whole study: under an hour on 2 CPU cores
    python examples/real_model.py --quick    # one seed, alpha 4, a few steps: a few minutes
    python examples/real_model.py --model DIR --out DIR

Sharpening. For alpha 2 and 4 and three seeds, a LoRA is trained (the demo's
recipe: `powerflow_lite.demo.DEMOS["reasoning"]`) on the shipped addition and
subtraction questions, without their answers, and the 40 held-out problems
(two kinds) are graded with k samples each, before training (the base at
temperature 1) and after. Beside it the base sampled at temperature 1/2 and
1/4, token-level tempering: the cheap alternative everyone can try without
training. Every figure is averaged over the seeds; a change is the mean of
the per-problem differences (each averaged over the seeds) with its standard
error across problems, the paired comparison that cancels the problems' own
difficulty.

log Z'. The largest alpha's runs again with the learned head in the loss
(`--log-z head`, the default until the batch estimate replaced it) instead of each prompt's batch
estimate (`--log-z batch`, the default): held-out avg@k, the mean residual
(the bias a lagging log Z' puts into every completion's target), the head's
lag behind the batch estimate, and the loss.

Flattening. alpha 0.5 on the shipped creative prompts (the creative demo's
recipe), measured on 20 held-out prompts: semantic diversity of k samples
(all-MiniLM-L6-v2) and the base log-prob per token (a quality proxy: how
likely the base finds the text), against the base at temperatures 1, 1.2, 1.5
and 2. With --judge (default: the same SmolLM2 model), a judge's 1-9 rating
of each sample, reported with a check of whether it separates temperature 2
from temperature 1 at all.

Written to OUT (default examples/results): real_model.md (the tables),
real_model.json (every figure, per problem too) and real_model.png (when
matplotlib is installed). Run directories go to OUT/work (not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from powerflow_lite import demo
from powerflow_lite.config import EvalConfig, TrainConfig
from powerflow_lite.evaluate import EVALS, evaluate
from powerflow_lite.metrics import mean, stderr
from powerflow_lite.plot import pyplot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from power_exact import machine  # noqa: E402 - where it ran

transformers.utils.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

SEEDS = (0, 1, 2)
ALPHAS = (2.0, 4.0)
TEMPERATURES = (0.5, 0.25)  # 1/alpha for alpha 2 and 4
CREATIVE_TEMPERATURES = (1.0, 1.2, 1.5, 2.0)
MATH_KEYS = ("avg_at_k", "pass_at_k", "maj_at_k")


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    out: Path
    seeds: tuple[int, ...] = SEEDS
    alphas: tuple[float, ...] = ALPHAS
    temperatures: tuple[float, ...] = TEMPERATURES
    creative_temperatures: tuple[float, ...] = CREATIVE_TEMPERATURES
    creative_seeds: tuple[int, ...] = SEEDS[:2]
    k: int = 4  # samples per held-out problem (sharpening)
    creative_k: int = 8  # samples per held-out creative prompt: diversity compares them pairwise
    math_limit: int = 0  # held-out problems (0: all 40)
    creative_limit: int = 0  # held-out creative prompts (0: all 20)
    steps: int | None = None  # training steps (None: the demo's)
    creative_steps: int | None = None
    log_z_modes: tuple[str, ...] = ("head",)  # --log-z settings compared with the default at the largest alpha
    judge: str = ""  # judge model for creative samples ("" : none)
    chat_template: str = "auto"


def train_config(s: Settings, kind: str, alpha: float, seed: int, steps: int | None, log_z: str = "") -> TrainConfig:
    """The demo's recipe at this alpha and seed (and --log-z, if given), evaluated on all held-out data with k
    samples."""
    values = demo.demo_defaults(kind, need_model=False)
    if kind == "creative":  # the recipe this study measured (the creative demo has since moved to a gentler one)
        values.update(lr=1e-3, eval_tempered=False)
    name = f"{kind}-{alpha:g}-{seed}" + (f"-log-z-{log_z}" if log_z else "")
    if log_z:
        values["log_z"] = log_z
    values.update(model=s.model, alpha=alpha, seed=seed, output=str(s.out / "work" / name),
                  overwrite=True, eval_k=s.k if kind == "reasoning" else s.creative_k,
                  eval_limit=s.math_limit if kind == "reasoning" else s.creative_limit,
                  show_every=0, chat_template=s.chat_template)
    if steps:
        values.update(max_steps=steps, eval_every=steps, save_every=steps)
    return TrainConfig(**values)


def run_training(cfg: TrainConfig) -> dict:
    """Train; -> the eval summaries before (step 0: the base at temperature 1) and after, and the run's rows."""
    from powerflow_lite.metrics import read_metrics
    from powerflow_lite.setup import setup
    from powerflow_lite.train import train

    started = time.perf_counter()
    run = setup(cfg)
    for _ in train(run):
        pass
    folder = Path(cfg.output) / EVALS
    before, after = (json.loads((folder / f"step-{s}.json").read_text()) for s in (0, cfg.max_steps))
    rows = [r for r in read_metrics(Path(cfg.output) / "metrics.jsonl") if "loss" in r]
    return {"before": before, "after": after, "seconds": time.perf_counter() - started, "recipe": _recipe(run.cfg),
            "samples": str(folder / f"step-{cfg.max_steps}.samples.jsonl"),
            "base_samples": str(folder / "step-0.samples.jsonl"),
            "training": {key: [r[key] for r in rows] for key in (
                "loss", "length_mean", "truncated_frac", "policy_logp_per_token", "base_logp_per_token",
                "log_z_mean", "log_z_batch_mean", "log_z_gap", "residual_mean", "residual_std")}}


def run_base(s: Settings, cfg: TrainConfig, temperature: float, seed: int, name: str) -> dict:
    """The base model sampled at `temperature` on the same held-out data, prompts built as in training."""
    out = s.out / "work" / name
    eval_cfg = EvalConfig(model=s.model, data=cfg.eval_data, k=cfg.eval_k, limit=cfg.eval_limit,
                          temperature=temperature,
                          max_new_tokens=cfg.max_new_tokens, chat_template=cfg.chat_template,
                          system_prompt=cfg.system_prompt, quant=cfg.quant, seed=seed, output=str(out),
                          overwrite=out.is_dir(), batch_size=cfg.prompts_per_step * cfg.samples_per_prompt)
    summary = evaluate(eval_cfg)
    return {**summary["results"]["base"], "samples": str(out / "samples.jsonl"), "seconds": summary["seconds"]}


def averaged(summaries: list[dict], key: str) -> list[float]:
    """Per-prompt values of `key`, averaged over the seeds' summaries."""
    columns = [s[f"{key}_per_prompt"] for s in summaries]
    return [mean(list(values)) for values in zip(*columns)]


def paired(after: list[float], before: list[float]) -> dict:
    differences = [a - b for a, b in zip(after, before)]
    return {"mean": mean(differences), "stderr": stderr(differences)}


def policy_row(summaries: list[dict], keys: tuple[str, ...]) -> dict:
    """Seed-averaged figures of one policy: per prompt, overall, and the spread of the overall across seeds."""
    row = {"seeds": len(summaries)}
    for key in keys:
        per_prompt = averaged(summaries, key)
        row[key] = mean(per_prompt)
        row[f"{key}_per_prompt"] = per_prompt
        row[f"{key}_per_seed"] = [s[key] for s in summaries]
        row[f"{key}_seed_std"] = _std(row[f"{key}_per_seed"])
    for key in ("length_mean", "truncated_frac", "base_logp_per_token"):
        if key not in row:  # the per-prompt mean where the key was averaged per prompt above
            row[key] = mean([s[key] for s in summaries])
    return row


def _std(values: list[float]) -> float:
    from powerflow_lite.metrics import std

    return std(values)


def sharpening(s: Settings, log) -> dict:
    policies, runs = {}, {}
    base_t1 = []
    for alpha in s.alphas:
        trained = []
        for seed in s.seeds:
            cfg = train_config(s, "reasoning", alpha, seed, s.steps)
            log(f"sharpening: alpha {alpha:g}, seed {seed}: training {cfg.max_steps} steps")
            result = run_training(cfg)
            runs[f"alpha {alpha:g}, seed {seed}"] = {k: v for k, v in result.items() if k not in ("before", "after")}
            trained.append(result["after"])
            if alpha == s.alphas[0]:
                base_t1.append(result["before"])  # the base at T=1 with each seed's eval noise
        policies[f"PowerFlow alpha {alpha:g}"] = policy_row(trained, MATH_KEYS)
    cfg = train_config(s, "reasoning", s.alphas[0], s.seeds[0], s.steps)
    tempered = {}
    for temperature in s.temperatures:
        summaries = []
        for seed in s.seeds:
            log(f"sharpening: the base at temperature {temperature:g}, seed {seed}")
            summaries.append(run_base(s, cfg, temperature, 2**32 + seed, f"base-T{temperature:g}-{seed}"))
        tempered[f"base, temperature {temperature:g}"] = policy_row(summaries, MATH_KEYS)
    table = {"base, temperature 1": policy_row(base_t1, MATH_KEYS), **tempered, **policies}
    reference = table["base, temperature 1"]
    for name, row in table.items():
        row["vs base T=1"] = {key: paired(row[f"{key}_per_prompt"], reference[f"{key}_per_prompt"])
                              for key in MATH_KEYS}
        if name.startswith("PowerFlow"):
            alpha = float(name.rsplit(" ", 1)[1])
            match = f"base, temperature {1 / alpha:g}"
            if match in table:
                row["vs base T=1/alpha"] = {key: paired(row[f"{key}_per_prompt"], table[match][f"{key}_per_prompt"])
                                            for key in MATH_KEYS}
    return {"policies": table, "runs": runs, "problems": len(reference["avg_at_k_per_prompt"]),
            "kinds": _kinds(cfg), "steps": cfg.max_steps, "recipe": next(iter(runs.values()))["recipe"]}


def log_z_comparison(s: Settings, sharp: dict, log) -> dict:
    """The largest alpha's runs again with log Z' from the learned head in the loss (`--log-z head`, the default
    before 0.2), against the default (`batch`: each prompt's estimate from its G samples), the same seeds."""
    alpha = max(s.alphas)
    default = sharp["policies"][f"PowerFlow alpha {alpha:g}"]
    runs = {"batch": [sharp["runs"][f"alpha {alpha:g}, seed {seed}"] for seed in s.seeds]}
    rows = {"batch": dict(default)}
    for mode in s.log_z_modes:
        trained, runs[mode] = [], []
        for seed in s.seeds:
            cfg = train_config(s, "reasoning", alpha, seed, s.steps, log_z=mode)
            log(f"log Z': alpha {alpha:g}, --log-z {mode}, seed {seed}: training {cfg.max_steps} steps")
            result = run_training(cfg)
            runs[mode].append({k: v for k, v in result.items() if k not in ("before", "after")})
            trained.append(result["after"])
        rows[mode] = policy_row(trained, MATH_KEYS)
        rows[mode]["vs batch"] = {key: paired(rows[mode][f"{key}_per_prompt"], default[f"{key}_per_prompt"])
                                  for key in MATH_KEYS}
    for mode, row in rows.items():
        curves = [run["training"] for run in runs[mode]]
        row["training"] = {  # over every step of every seed
            "residual_mean_abs": mean([abs(v) for c in curves for v in c["residual_mean"]]),
            "log_z_gap_abs": mean([abs(v) for c in curves for v in c["log_z_gap"]]),
            "loss_first": mean([c["loss"][0] for c in curves]),
            "loss_max": mean([max(c["loss"]) for c in curves]),
            "loss_last": mean([c["loss"][-1] for c in curves]),
            "log_z_mean_last": mean([c["log_z_mean"][-1] for c in curves]),
            "log_z_batch_mean_last": mean([c["log_z_batch_mean"][-1] for c in curves]),
        }
    return {"alpha": alpha, "policies": rows, "seeds": len(s.seeds)}


def flattening(s: Settings, log) -> dict:
    trained, base_t1, runs = [], [], {}
    for seed in s.creative_seeds:
        cfg = train_config(s, "creative", 0.5, seed, s.creative_steps)
        log(f"flattening: alpha 0.5, seed {seed}: training {cfg.max_steps} steps")
        result = run_training(cfg)
        runs[f"alpha 0.5, seed {seed}"] = {k: v for k, v in result.items() if k not in ("before", "after")}
        trained.append({**result["after"], "samples": result["samples"]})
        base_t1.append({**result["before"], "samples": result["base_samples"]})
    keys = ("diversity", "base_logp_per_token")
    table = {"base, temperature 1": base_t1}
    cfg = train_config(s, "creative", 0.5, s.creative_seeds[0], s.creative_steps)
    for temperature in s.creative_temperatures:
        if temperature == 1.0:
            continue
        table[f"base, temperature {temperature:g}"] = []
        for seed in s.creative_seeds:
            log(f"flattening: the base at temperature {temperature:g}, seed {seed}")
            table[f"base, temperature {temperature:g}"].append(
                run_base(s, cfg, temperature, 2**32 + seed, f"creative-T{temperature:g}-{seed}"))
    table["PowerFlow alpha 0.5"] = trained
    judge = _judge_scores(s, table, log) if s.judge else {}
    rows = {}
    for name, summaries in table.items():
        row = policy_row(summaries, keys)
        row["distinct_2"] = mean([x["distinct_2"] for x in summaries])
        if name in judge:
            row["judge_score"], row["judge_score_stderr"] = judge[name]
        rows[name] = row
    reference = rows["base, temperature 1"]
    for row in rows.values():
        row["vs base T=1"] = {key: paired(row[f"{key}_per_prompt"], reference[f"{key}_per_prompt"]) for key in keys}
    return {"policies": rows, "runs": runs, "prompts": len(reference["diversity_per_prompt"]),
            "steps": cfg.max_steps, "recipe": next(iter(runs.values()))["recipe"], "judge": s.judge,
            "judge_separates": _judge_check(rows) if judge else None}


def _judge_scores(s: Settings, table: dict, log) -> dict:
    """The judge's mean rating of each policy's samples (the first seed's: rating is slow on a CPU) and its standard
    error across samples."""
    from powerflow_lite.model import load_base_model, load_tokenizer, resolve_device
    from powerflow_lite.tasks.models import judge_scores

    log(f"flattening: rating every sample with the judge {s.judge}")
    device = resolve_device("auto")
    judge = load_base_model(s.judge, "auto", device), load_tokenizer(s.judge)
    scores = {}
    for name, summaries in table.items():
        records = [json.loads(line) for line in Path(summaries[0]["samples"]).read_text().splitlines()]
        values = judge_scores(*judge, [r["prompt"] for r in records], [r["completion"] for r in records])
        scores[name] = (mean(values), stderr(values))
    return scores


def _judge_check(rows: dict) -> dict:
    """Does the judge rate temperature-2 samples (often incoherent) below temperature-1 ones by more than 2 SE?"""
    t1, t2 = rows["base, temperature 1"], rows.get("base, temperature 2")
    if t2 is None or "judge_score" not in t1:
        return {}
    gap = t1["judge_score"] - t2["judge_score"]
    error = (t1["judge_score_stderr"] ** 2 + t2["judge_score_stderr"] ** 2) ** 0.5
    return {"t1_minus_t2": gap, "stderr": error, "usable": gap > 2 * error}


def _kinds(cfg: TrainConfig) -> list[str]:
    rows = [json.loads(line) for line in Path(cfg.eval_data).read_text().splitlines()]
    return sorted({row.get("kind", "") for row in rows[:cfg.eval_limit or None]})


def _recipe(cfg: TrainConfig) -> dict:
    keys = ("alpha", "max_steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "lr", "lora_r",
            "warmup_steps", "log_z", "quant", "sampler", "eval_k")
    return {key: getattr(cfg, key) for key in keys}


# --- the report


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _change(change: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not change:
        return ""
    return f"{scale * change['mean']:+.{digits}f} ± {scale * change['stderr']:.{digits}f}"


def markdown(study: dict) -> str:
    lines = []
    sharp = study.get("sharpening")
    if sharp:
        k = study["settings"]["k"]
        lines += [f"### Sharpening: {sharp['problems']} held-out problems ({', '.join(sharp['kinds'])}), k = {k}, "
                  f"{len(study['settings']['seeds'])} seeds", "",
                  f"| policy | avg@{k} | pass@{k} | maj@{k} | avg@{k} vs base T=1 | maj@{k} vs base T=1 "
                  f"| avg@{k} vs base T=1/alpha | mean length | truncated | base log-prob / token "
                  f"| sd of avg@{k} over seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in sharp["policies"].items():
            reference = name == "base, temperature 1"
            vs, against = row["vs base T=1"], row.get("vs base T=1/alpha", {}).get("avg_at_k")
            lines.append(f"| {name} | {_pct(row['avg_at_k'])} | {_pct(row['pass_at_k'])} | {_pct(row['maj_at_k'])} "
                         f"| {'' if reference else _change(vs['avg_at_k'])} "
                         f"| {'' if reference else _change(vs['maj_at_k'])} "
                         f"| {_change(against)} | {row['length_mean']:.1f} | {_pct(row['truncated_frac'])}% "
                         f"| {row['base_logp_per_token']:.3f} | {_pct(row['avg_at_k_seed_std'])} |")
        lines.append("")
    log_z = study.get("log_z")
    if log_z:
        k = study["settings"]["k"]
        lines += [f"### How log Z' enters the loss: alpha {log_z['alpha']:g}, {log_z['seeds']} seeds", "",
                  f"| --log-z | avg@{k} after | sd over seeds | avg@{k} vs batch | mean residual (mean of abs, per "
                  "step) | head lag: head - batch estimate (mean of abs) | loss: step 1 / highest / last |",
                  "|---|---|---|---|---|---|---|"]
        for mode, row in log_z["policies"].items():
            t = row["training"]
            lines.append(f"| {mode}{' (default)' if mode == 'batch' else ''} | {_pct(row['avg_at_k'])} "
                         f"| {_pct(row['avg_at_k_seed_std'])} "
                         f"| {_change(row.get('vs batch', {}).get('avg_at_k'))} | {t['residual_mean_abs']:.3f} "
                         f"| {t['log_z_gap_abs']:.3f} | {t['loss_first']:.2f} / {t['loss_max']:.2f} / "
                         f"{t['loss_last']:.2f} |")
        lines.append("")
    flat = study.get("flattening")
    if flat:
        k = study["settings"]["creative_k"]
        judge = any("judge_score" in row for row in flat["policies"].values())
        lines += [f"### Flattening: {flat['prompts']} held-out creative prompts, k = {k}, "
                  f"{len(study['settings']['creative_seeds'])} seeds", "",
                  "| policy | semantic diversity | vs base T=1 | base log-prob / token | vs base T=1 | distinct-2 "
                  "| mean length | truncated |" + (" judge (1-9) |" if judge else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if judge else "")]
        for name, row in flat["policies"].items():
            vs, reference = row["vs base T=1"], name == "base, temperature 1"
            cells = (f"| {name} | {row['diversity']:.2f} | {'' if reference else _change(vs['diversity'], 1, 2)}"
                     f" | {row['base_logp_per_token']:.3f} "
                     f"| {'' if reference else _change(vs['base_logp_per_token'], 1, 3)} "
                     f"| {row['distinct_2']:.3f} | {row['length_mean']:.1f} | {_pct(row['truncated_frac'])}% |")
            if judge:
                cells += f" {row['judge_score']:.2f} ± {row['judge_score_stderr']:.2f} |"
            lines.append(cells)
        if flat.get("judge_separates"):
            check = flat["judge_separates"]
            lines += ["", f"Judge check: temperature 1 minus temperature 2 = {check['t1_minus_t2']:+.2f} ± "
                          f"{check['stderr']:.2f}: {'usable' if check['usable'] else 'not a usable signal'}."]
        lines.append("")
    return "\n".join(lines)


def plot(study: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    sharp, flat = study.get("sharpening"), study.get("flattening")
    if sharp:
        names = list(sharp["policies"])
        k = study["settings"]["k"]
        for offset, key in enumerate(MATH_KEYS):
            values = [100 * sharp["policies"][n][key] for n in names]
            axes[0].bar([i + 0.27 * (offset - 1) for i in range(len(names))], values, width=0.27,
                        label=key.replace("_at_k", f"@{k}"))
        axes[0].set_xticks(range(len(names)), [n.replace("base, temperature", "base T").replace("PowerFlow ", "")
                                               for n in names], fontsize=7, rotation=20)
        axes[0].set_ylabel("% of held-out problems")
        axes[0].set_title("sharpening: held-out arithmetic", fontsize=9)
        axes[0].legend(fontsize=7)
    if flat:
        for name, row in flat["policies"].items():
            marker = "*" if "PowerFlow" in name else "o"
            axes[1].errorbar(row["base_logp_per_token"], row["diversity"],
                             yerr=row["vs base T=1"]["diversity"]["stderr"], fmt=marker, markersize=9, capsize=3)
            axes[1].annotate(name.replace("base, temperature", "T").replace("PowerFlow ", ""),
                             (row["base_logp_per_token"], row["diversity"]), fontsize=7, xytext=(4, 4),
                             textcoords="offset points")
        axes[1].set_xlabel("base log-prob per token (higher: the base finds it likelier)")
        axes[1].set_ylabel("semantic diversity (0-100)")
        axes[1].set_title("flattening: quality proxy against diversity", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def report(out: Path) -> int:
    """real_model.md and .png again from real_model.json: the tables of a finished study, re-rendered."""
    study = json.loads((out / "real_model.json").read_text())
    table = markdown(study)
    (out / "real_model.md").write_text(table)
    drew = plot(study, out / "real_model.png")
    print(table)
    print(f"wrote {out / 'real_model.md'}" + (f" and {out / 'real_model.png'}" if drew else ""))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the demo's SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default="examples/results", help="where real_model.md/.json/.png go")
    parser.add_argument("--quick", action="store_true", help="one seed, alpha 4 only, 3 steps, k 4, few problems")
    parser.add_argument("--no-judge", action="store_true", help="skip rating creative samples with a judge")
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work (run directories, samples)")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite real_model.md and .png from OUT/real_model.json (no training)")
    args = parser.parse_args(argv)
    if args.report:
        return report(Path(args.out))
    model = args.model or str(demo.demo_model_dir())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(model=model, out=out, judge="" if args.no_judge else model)
    if args.quick:
        settings = dataclasses.replace(settings, seeds=(0,), alphas=(4.0,), temperatures=(0.25,), creative_seeds=(0,),
                                       creative_temperatures=(1.0, 2.0), k=4, creative_k=4, math_limit=8,
                                       creative_limit=4,
                                       steps=3, creative_steps=2)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    study = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in
                             dataclasses.asdict(settings).items()}, "quick": args.quick},
             "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
             "machine": machine()}  # another CPU gives other figures for the same seed
    study["sharpening"] = sharpening(settings, log)
    study["log_z"] = log_z_comparison(settings, study["sharpening"], log)
    study["flattening"] = flattening(settings, log)
    study["seconds"] = time.perf_counter() - started
    (out / "real_model.json").write_text(json.dumps(study, indent=1) + "\n")
    table = markdown(study)
    (out / "real_model.md").write_text(table)
    drew = plot(study, out / "real_model.png")
    if not args.keep_work:
        shutil.rmtree(out / "work", ignore_errors=True)
    print(table)
    print(f"done in {study['seconds'] / 60:.1f} min; wrote {out / 'real_model.md'}, {out / 'real_model.json'}"
          + (f", {out / 'real_model.png'}" if drew else " (no plot: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
