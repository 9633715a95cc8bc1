"""The GPU plans and rehearsals: the recipes' planned memory (examples/recipe_memory.py), one training step of each
rehearsed on the meta device and its estimated time on four cards (examples/rehearsal.py). Nothing here ran on a GPU:
each block says its figures are plans or estimates."""

from __future__ import annotations

from rehearsal import hours, minutes  # the rounding rehearsal.md uses

from doc_blocks import Block, wrap

MEMORY_MD = "../examples/results/recipe_memory.md"  # links from docs/
REHEARSAL_MD = "../examples/results/rehearsal.md"



def short(model: str) -> str:
    """A hub id without its organisation: Qwen/Qwen2.5-Math-7B -> Qwen2.5-Math-7B."""
    return model.split("/")[-1]


def part(row: dict, name: str) -> dict:
    """A part of a recipe's plan (recipe_memory.json) by name."""
    return next(p for p in row["parts"] if p["name"] == name)


def an(name: str) -> str:
    """The article before a card's name or size, by its first sound: an 8 GiB card, a 12 GiB card, an RTX 4090."""
    return "an" if name.startswith(("8", "11", "18")) or name[0] in "AEFHILMNORSX" else "a"


# --- docs/gpu.md: the recipes' plans (recipe_memory.json)


def recipe_plans(rows: list[dict]) -> str:
    """gpu.md's bullet on the recipes' planned peaks, smallest first, with the KV cache where sampling sets it."""
    plans = []
    for row in sorted(rows, key=lambda row: row["peak_gib"]):
        plan = f"{row['recipe']} ({short(row['model'])}) {row['peak_gib']:.2f} GiB"
        if row["peak_phase"] == "sampling":
            plan += (f", {part(row, 'KV cache')['gib']:.2f} GiB of it the KV cache of {row['sampling_rows']} "
                     f"completions of {row['prompt_tokens'] + row['max_new_tokens']:,} tokens")
        plans.append(plan)
    prompt_tokens = sorted({row["prompt_tokens"] for row in rows})
    return wrap(f"* **The recipes' plans** (planned, not measured: [recipe_memory.md]({MEMORY_MD}), "
                   "`python examples/recipe_memory.py`, from config.json files written by hand from the model "
                   f"cards): {', '.join(plans[:-1])}, and {plans[-1]}. Prompts of {', '.join(map(str, prompt_tokens))} "
                   "tokens are assumed; plan your own with `powerflow train --config examples/recipes/NAME.yaml "
                   "--dry-run --prompt-tokens N` once the model's `config.json` is in the Hugging Face cache "
                   "(`hf download MODEL config.json`).")


def fix_list(card: dict, joiner: str) -> str:
    """A card's suggested changes with the peak each plans: `--max-new-tokens 512` (9.71 GiB)."""
    return joiner.join(f"`{fix['flags']}` ({fix['peak_gib']:.2f} GiB)" for fix in card["fits_with"])


def recipe_fixes(rows: list[dict], rehearsal: dict) -> str:
    """gpu.md's bullet on what the dry run suggests for each recipe that does not fit every card, and the
    smallest card it fits as it is."""
    groups = {r["recipe"]: r["settings"]["samples_per_prompt"] for r in rehearsal["recipes"]}
    tight = [row for row in rows if not all(card["fits"] for card in row["cards"].values())]
    lines = [wrap("* **What the dry run suggests** for the recipes that do not fit every card "
                     f"([recipe_memory.md]({MEMORY_MD})):")]
    for row in tight:
        small = [(size, card) for size, card in reversed(row["cards"].items()) if not card["fits"]]
        size, card = small[0]
        text = f"* {row['recipe']} on {an(size)} {size} card: {fix_list(card, ' or ')}"
        text += "".join(f"; on {an(size)} {size} card {fix_list(card, ' or ')}" for size, card in small[1:]) + "."
        if row["peak_phase"] == "update" and row["micro_batch_rows"] == groups[row["recipe"]]:
            text += (f" Its micro-batch is one prompt's {row['micro_batch_rows']} completions already, the smallest "
                     "the batch log Z' allows.")
        size, card = next((size, card) for size, card in row["cards"].items() if card["fits"])
        text += f" {an(size).capitalize()} {size} card fits it with {card['spare_gib']:.2f} GiB to spare"
        below = small[0][1]["fits_with"][0]["flags"]
        if card["spare_gib"] < 0.5:  # a display's framebuffer alone takes more than this
            text += (f", if all {size} are free; on a card that also drives a display, pass `{below}` there too"
                     + (" (the same completions, in two calls)" if below.startswith("--sample-batch-size") else ""))
        lines.append(wrap("  " + text + "."))
    return "".join(lines)


# --- docs/gpu.md: the rehearsal and its time estimates (rehearsal.json)


def rehearsal_run(result: dict) -> str:
    """gpu.md's paragraph on what --dry-run --rehearse runs, and how long the recipes' rehearsal took."""
    m, rows = result["machine"], result["recipes"]
    return wrap("`--dry-run --rehearse` runs one training step's own code at the model's real shape on torch's "
                   "meta device: tensors with shapes and dtypes but no memory and no arithmetic, so it takes seconds "
                   f"on a CPU (the recipes took {sum(r['rehearsal_s'] for r in rows):.0f} s on {m['cores']} cores, "
                   f"[rehearsal.md]({REHEARSAL_MD})). The model is built from its `config.json` as on a GPU: bf16, "
                   "bitsandbytes' NF4 layers under `--quant nf4`, LoRA with gradient checkpointing. Then the step "
                   "runs through the same functions training calls: sampling (the prefill, and the last decode step "
                   "with the cache at its full length), scoring with the adapter off, the update's forward and "
                   "backward on one micro-batch, the evaluation (with `--eval-data`) and the preview of "
                   "`--alpha auto`.")


def worst_difference(rows: list[dict]) -> float:
    """The largest |planned - rehearsed| / rehearsed over the rows' phases."""
    return max(abs(p["difference"]) for row in rows for p in row["phases"].values() if p["difference"] is not None)


def plan_vs_rehearsal(result: dict) -> str:
    """gpu.md's bullet on the per-phase table, with how close plan and rehearsal came for the recipes."""
    return wrap("* A table per phase: the planned bytes, the rehearsed bytes, \"plan vs rehearsal\" ((planned - "
                   "rehearsed) / rehearsed: positive where the plan is the larger) and TFLOP per step; then the "
                   "weights and gradients, planned and built. Scoring shows \"below the update\": it keeps no "
                   "activations, and the plan takes it to need less than the update. For the recipes the plan is "
                   f"within {worst_difference(result['recipes']):.1%} of the rehearsal in every phase "
                   f"([rehearsal.md]({REHEARSAL_MD}), `python examples/rehearsal.py`).")


def time_estimate(result: dict) -> str:
    """gpu.md's bullet on the estimated time per step: the cards, the assumed efficiencies and the recipes' run
    hours (fitting cards only) from the shortest to the longest, and the largest recipe on the smallest card it
    fits."""
    cards, eff = result["cards"], result["efficiencies"]
    runs = [(card["run_hours"], r["recipe"], card["name"]) for r in result["recipes"] for card in r["cards"].values()
            if card["fits"]]
    low, high = min(runs), max(runs)
    largest = max(result["recipes"], key=lambda r: r["plan_peak_bytes"])
    card = next(card for card in largest["cards"].values() if card["fits"])
    return wrap("* \"Estimated time per step, not measured\": a row per card "
                   f"({', '.join(card['name'] for card in cards)}), the seconds of each phase (c: compute-bound, m: "
                   "memory-bound), seconds per step, hours for `--max-steps` and the floor at 100% of the card's "
                   "peaks. The peaks are NVIDIA's data sheets (`powerflow_lite/cards.py`); "
                   f"{eff['matmul']:.0%} of bf16 FLOP/s and {eff['bandwidth']:.0%} of bandwidth are assumptions, not "
                   "measurements. Its evaluation columns spread one whole evaluation (every sampling call and its "
                   f"scoring) over `--eval-every` steps; [rehearsal.md]({REHEARSAL_MD}) counts each evaluation apart "
                   f"for the recipes' runs: from {hours(low[0])} hours ({low[1]} on {an(low[2])} {low[2]}) to "
                   f"{hours(high[0])} hours ({high[1]} on {an(high[2])} {high[2]}), {hours(card['run_hours'])} hours "
                   f"for {largest['recipe']} on {an(card['name'])} {card['name']}.")


def first_run(result: dict, rows: list[dict]) -> str:
    """gpu.md's first run: the commands, and a table of their estimated minutes per recipe and card; where the
    plan does not fit a card, the change the dry run suggests (recipe_memory.json)."""
    plans = {row["recipe"]: row for row in rows}
    cards, steps = result["cards"], result["first_run_flags"]["max_steps"]
    lines = [wrap(f"A first run of {steps} steps and a small evaluation before a long run: it checks the model "
                     "loads, the step fits and the figures move.") + "\n```bash"]
    lines += [r["first_run"]["command"] for r in result["recipes"]]
    lines += ["```\n", wrap(f"Estimated minutes, not measured, from the rehearsal "
                               f"([rehearsal.md]({REHEARSAL_MD}#a-first-run); the data-sheet peaks at the assumed "
                               f"efficiencies above): the {steps} steps, the worst-case probe before step 1 and the "
                               "evaluations (before training, the base at temperature 1/alpha where the recipe sets "
                               f"`eval_tempered`, after step {steps}), not counting loading the model, nor "
                               "downloading it and the prompts the first time:")]
    lines += ["| recipe | evaluations | " + " | ".join(card["name"] for card in cards) + " |",
              "|---|---|" + "---|" * len(cards)]
    for r in result["recipes"]:
        cells = []
        for card in cards:
            if r["cards"][card["key"]]["fits"]:
                cells.append(minutes(r["first_run"]["cards"][card["key"]]))
            else:
                fixes = plans[r["recipe"]]["cards"][f"{card['memory_gib']} GiB"]["fits_with"]
                cells.append("does not fit" + (": " + " or ".join(f"`{fix['flags']}`" for fix in fixes)
                                               if fixes else ""))
        lines.append(f"| {r['recipe']} | {r['first_run']['evaluations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- docs/design.md section 16 and docs/multi-gpu.md


def design_estimate(result: dict) -> str:
    """design.md's paragraph on the time estimate, with the assumed efficiencies rehearsal.json records."""
    eff = result["efficiencies"]
    return wrap("The time estimate (`estimate.py`) takes each phase's FLOPs and the bytes it reads (a decode step "
                   "reads every weight and the cache; the other phases the weights once per forward) and bounds its "
                   "time on a card (`cards.py`: peak bf16 FLOP/s and bandwidth from the vendors' data sheets) by "
                   f"both, at assumed efficiencies ({eff['matmul']:.0%} of peak FLOP/s, {eff['bandwidth']:.0%} of "
                   "bandwidth). It is an estimate, labelled so. On a card of the table, a training run records it in "
                   "`metrics.jsonl` (`estimate_time_*`) beside the measured `time_*`.")


def replicated(rows: list[dict]) -> str:
    """multi-gpu.md's bullet on what each process holds, with the 7B recipe's planned NF4 weights."""
    big = max(rows, key=lambda row: part(row, "base weights (nf4)")["bytes"])
    return wrap("* **What is replicated**: every process loads the whole 4-bit base (the NF4 weights of "
                   f"{short(big['model'])} are {part(big, 'base weights (nf4)')['gib']:.2f} GiB, planned: "
                   f"[recipe_memory.md]({MEMORY_MD})), the LoRA and the log Z' head from the same seed, and applies "
                   "the same optimizer step, so the weights stay equal.")


BLOCKS = {
    "gpu-recipe-plans": Block(("recipe_memory.json",), recipe_plans),
    "gpu-recipe-fixes": Block(("recipe_memory.json", "rehearsal.json"), recipe_fixes),
    "gpu-rehearsal-run": Block(("rehearsal.json",), rehearsal_run),
    "gpu-plan-vs-rehearsal": Block(("rehearsal.json",), plan_vs_rehearsal),
    "gpu-time-estimate": Block(("rehearsal.json",), time_estimate),
    "gpu-first-run": Block(("rehearsal.json", "recipe_memory.json"), first_run),
    "design-time-estimate": Block(("rehearsal.json",), design_estimate),
    "multi-gpu-replicated": Block(("recipe_memory.json",), replicated),
}
