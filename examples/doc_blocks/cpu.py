"""Speed and memory on the CPU: the four paths (examples/cpu_paths.py), where the memory goes and `powerflow bench`
(examples/cpu_memory.py)."""

from __future__ import annotations

from cpu_memory import later
from cpu_paths import REFERENCE
from cpu_paths import markdown as paths_markdown

from doc_blocks import Block, span, table, wrap

# --- the four paths (examples/results/cpu_paths.json)


def cpu_paths(report: dict) -> str:
    """The paths' table (as cpu_paths.md has it) and what it shows."""
    paths, steps = report["paths"], report["steps"]
    minutes = sum(p["wall_s"] for p in paths.values()) / 60
    text = wrap("The measurement behind that choice, each path in a process of its own, one after another "
                   f"(`python examples/cpu_paths.py`, {minutes:.0f} minutes: the demo's recipe without its "
                   f"evaluation, {steps} steps per path, medians of steps 2-{steps}, at a learning rate of 1e-12 so "
                   "that every path samples from the base model and writes completions of about the same length; "
                   "[`examples/results/cpu_paths.md`](../examples/results/cpu_paths.md)):") + "\n"
    text += paths_markdown(report).split("\n", 2)[2]  # its table, without the line above it
    nf4_hf, nf4_static, none_hf, none_static = (paths[f"{q}/{s}"] for q, s in
                                                (("nf4", "hf"), ("nf4", "static"), ("none", "hf"), ("none", "static")))
    rates = [nf4_hf["sample_tokens_per_s"] / none_hf["sample_tokens_per_s"],
             nf4_static["sample_tokens_per_s"] / none_static["sample_tokens_per_s"]]
    saved = [none_hf["peak_rss_gib"] - nf4_hf["peak_rss_gib"], none_static["peak_rss_gib"] - nf4_static["peak_rss_gib"]]
    reference = paths["/".join(REFERENCE)]
    text += "\n" + wrap("**Full precision over NF4.** bitsandbytes has no 4-bit matmul kernels for the CPU: it "
                           f"dequantizes each weight for every matmul, so NF4 samples at {100 * min(rates):.0f}-"
                           f"{100 * max(rates):.0f}% of the full-precision rate ({nf4_hf['sample_tokens_per_s']:.0f} "
                           f"against {none_hf['sample_tokens_per_s']:.0f} tokens/s with `generate`, "
                           f"{nf4_static['sample_tokens_per_s']:.0f} against {none_static['sample_tokens_per_s']:.0f} "
                           f"with the static sampler) and costs only {span(saved, '.1f')} GiB less at "
                           "its peak, since the embeddings and the activations stay in float32. A 135M-1.5B model "
                           "fits a laptop's memory in full precision anyway. The 4-bit path stays tested in CI "
                           "(`--quant nf4` trains it here: `tests/test_train.py`, `tests/test_cli.py`).", bullet=True)
    text += wrap("**The static sampler over `generate`.** It prefills each distinct prompt once for its G samples, "
                    "drops finished rows from the decode batch, draws by inverting the CDF, and returns log pi_old "
                    f"with the samples, so scoring runs one pass (the base) instead of two "
                    f"({none_static['time_score']:.1f} against {none_hf['time_score']:.1f} s a step). Together: "
                    f"{none_static['seconds_per_step']:.1f} s a step against {reference['seconds_per_step']:.1f} s "
                    "for NF4 + `generate`, the path a GPU takes "
                    f"({reference['seconds_per_step'] / none_static['seconds_per_step']:.1f}x).", bullet=True)
    return text + wrap("At the demo's learning rate the paths' policies drift apart within a few steps (their "
                          "numerics differ), and their completion lengths with them, so a timing at that rate "
                          "measures lengths, not paths. Hence the frozen policy above.", bullet=True)


# --- where the memory goes, and `powerflow bench` (examples/results/cpu_memory.json)


def cpu_memory(report: dict, paths: dict) -> str:
    """The table of resident memory after each stage of the demo's step, and what it shows."""
    run, checkpointed = report["stages"], report["checkpointing"]
    setup, first, rest = run["setup"], run["steps"][0], later(run)
    rows = [["Python with torch, transformers and peft imported", f"{run['imports']['rss_gib']:.2f} GiB", ""],
            [f"the model in float32 ({setup['base_parameters'] / 1e6:.0f}M parameters, {setup['base_gib']:.1f} GiB), "
             "LoRA, optimizer", f"{setup['rss_gib']:.2f} GiB", f"{setup['peak_gib']:.2f} GiB (loading)"],
            [f"sampling {setup['completions']} completions (static KV cache) and scoring them",
             f"{first['score_rss_gib']:.2f} GiB", f"{first['score_peak_gib']:.2f} GiB"],
            [f"the update: a micro-batch's activations kept for backward ({setup['micro_batch_rows']} completions x "
             f"{setup['max_new_tokens']} positions x {setup['layers']} layers)", f"{first['update_rss_gib']:.2f} GiB",
             f"{first['update_peak_gib']:.2f} GiB"],
            [f"later steps (2-{len(run['steps'])})", f"{span(rest['update_rss_gib'], '.2f')} GiB",
             f"{span(rest['peak_gib'], '.2f')} GiB"]]
    text = wrap("**Where the memory goes** (full precision, static sampler, the demo's step at the base's "
                   "lengths; RSS read from `/proc/self/status` after each stage, `peak_rss_gib` in every CPU step's "
                   "metrics row; `python examples/cpu_memory.py`, "
                   "[`cpu_memory.md`](../examples/results/cpu_memory.md)):") + "\n"
    text += table(["stage", "resident after", "peak during"], rows) + "\n"
    kept = first["update_rss_gib"] - first["score_rss_gib"]
    step_peak = max(rest["peak_gib"])
    nf4 = max(paths["paths"]["nf4/hf"]["peak_rss_gib"], paths["paths"]["nf4/static"]["peak_rss_gib"])
    full = max(paths["paths"]["none/hf"]["peak_rss_gib"], paths["paths"]["none/static"]["peak_rss_gib"])
    demos = report["demo"]
    demo_peaks = " and ".join(f"{d['peak_rss_gib']:.2f} GiB on seed {d['seed']}" for d in demos)
    below = all(d["peak_rss_gib"] < step_peak for d in demos)
    gc_rest = later(checkpointed)
    cut = step_peak - max(gc_rest["peak_gib"])
    slower = gc_rest["time_update"] / rest["time_update"] - 1
    text += wrap(f"About {kept:.1f} GiB of the update's memory stays mapped after it (freed by torch, kept by the "
                    "C allocator for the next step), so the resident figure between steps sits well above the model's "
                    f"size. Peaks in [the paths' table](#speed-on-the-cpu): {full:.1f} GiB in full precision, "
                    f"{nf4:.1f} GiB in NF4 (whose base weights are smaller, but the embeddings and the activations are "
                    f"not); the whole demo, evaluations included, peaks at {demo_peaks} (`os.wait4`'s `ru_maxrss`"
                    + ("; its completions shorten within a few steps, so its steps stay below the "
                       f"{step_peak:.1f} GiB of a step at the base's lengths)" if below else ")")
                    + f". Gradient checkpointing {'cuts' if cut > 0 else 'changes'} the peak by only {abs(cut):.1f} "
                    f"GiB and makes the update {100 * slower:.0f}% {'slower' if slower > 0 else 'faster'} (the demo "
                    "turns it off). With `--log-z batch` a micro-batch holds at least one prompt's G completions, "
                    "which sets the update's floor.")
    return text


def rate(tokens_per_s: float) -> str:
    """Tokens per second: whole above 100, one decimal below."""
    return f"{tokens_per_s:.0f} tok/s" if tokens_per_s >= 100 else f"{tokens_per_s:.1f} tok/s"


def step_seconds(step: dict) -> str:
    """A training step's seconds and its split, all at the total's precision: '8.4 s (4.6 + 0.8 + 3.0)'."""
    spec = ".2f" if step["seconds"] < 1 else ".1f"
    parts = " + ".join(format(step[key], spec) for key in ("time_sample", "time_score", "time_update"))
    return f"{step['seconds']:{spec}} s ({parts})"


def bench_command(args: list[str]) -> str:
    """A bench command as the table shows it, the demo's model directory named."""
    return "`" + " ".join("<demo SmolLM2-135M>" if a == "MODEL" else a for a in args) + "`"


def cpu_bench(report: dict) -> str:
    """The table of `powerflow bench` on the CPU, and why it differs from the training step's."""
    rows, ratios = [], []
    for run in report["bench"]:
        result = run["result"]
        hf, ours = result["results"]["hf generate"], result["results"]["powerflow static"]
        step = result.get("train_step")
        ratios.append(result["speedup"])
        rows.append([bench_command(run["args"]), rate(hf["tokens_per_s"]), rate(ours["tokens_per_s"]),
                     f"{result['speedup']:.2f}x", step_seconds(step) if step else ""])
    text = wrap("**`powerflow bench` on the CPU**, where both samplers are bound by the same matmuls (what the "
                   "command measures: [cli.md](cli.md#powerflow-bench); the training step: seconds, sample + score + "
                   "update):") + "\n"
    text += table(["command", "hf generate", "static", "ours / HF", "training step"], rows) + "\n"
    return text + wrap("This benchmark draws every completion from its own prompt to exactly `--new-tokens` "
                          "tokens, so neither sampler can save work the other does: per token the static sampler "
                          f"runs at {span(ratios, '.2f')}x the rate of `generate` on the CPU. In training the static "
                          "sampler wins on what the benchmark leaves out: it prefills each prompt once for its G "
                          "samples, stops computing rows that have ended, and returns log pi_old with the samples (the "
                          "paths' table above measures the demo's step). On a GPU a decode step is bound by launch "
                          "overhead and can be captured in a CUDA graph; no GPU figures are published yet.")


BLOCKS = {
    "cpu-paths": Block(files=("cpu_paths.json",), render=cpu_paths),
    "cpu-memory": Block(files=("cpu_memory.json", "cpu_paths.json"), render=cpu_memory),
    "cpu-bench": Block(files=("cpu_memory.json",), render=cpu_bench),
}
