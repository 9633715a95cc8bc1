"""Flattening at matched diversity (examples/flatten_real.py)."""

from __future__ import annotations

from flatten_real import RECIPE  # the study's recipe: its JSON names it, without its figures

from doc_blocks import Block, lr_text, points, within, wrap

FLATTEN_GLANCE = [  # (label, policy of flatten_real.json)
    ("base, temperature 1", "base, temperature 1"),
    ("base, temperature 1.1", "base, temperature 1.1"),
    ("PowerFlow alpha 0.85, lr 2.5e-4 (the creative demo)", "PowerFlow alpha 0.85, lr 2.5e-4"),
    ("PowerFlow alpha 0.5, lr 1e-3", "PowerFlow alpha 0.5"),
]


def flatten_table(study: dict, rows: list[tuple[str, str]] | None = None) -> str:
    """Diversity, English words and base log-prob per token, means over seeds; every policy when `rows` is None
    (a PowerFlow row without an lr in its name trained at 1e-3)."""
    policies = study["policies"]
    if rows is None:
        rows = [(name if not name.startswith("PowerFlow") or "lr" in name else f"{name}, lr 1e-3", name)
                for name in policies]
    lines = ["| policy | semantic diversity | English words | base log-prob / token |", "|---|---|---|---|"]
    for label, name in rows:
        row = policies[name]
        lines.append(f"| {label} | {row['diversity']:.1f} | {100 * row['english_words']:.1f}% | "
                     f"{row['base_logp_per_token']:.2f} |")
    return "\n".join(lines) + "\n"


CREATIVE_DEMO = "PowerFlow alpha 0.85, lr 2.5e-4"  # the policy the README reads: the creative demo's recipe
QUOTES = {  # samples quoted in results.md: policy -> which of its two kept samples (seed 0, the first prompt)
    "salad": ("PowerFlow alpha 0.7", 0),
    "gentle": ("PowerFlow alpha 0.85, lr 2.5e-4", 1),
}
QUOTED_WORDS = 13  # the salad sample's opening words




def spoken(name: str) -> str:
    """A trained policy in a sentence: 'alpha 0.85 at lr 2.5e-4' (no lr in the name: the recipe's)."""
    name = name.removeprefix("PowerFlow ")
    return name.replace(", lr", " at lr") if ", lr" in name else f"{name} at lr {lr_text(RECIPE['lr'])}"






def glance(study: dict) -> str:
    """The README's flattening: the study's size, its short table and the creative demo's matched reading."""
    s = study["settings"]
    m = study["matched"][CREATIVE_DEMO]
    logp, words = m["base_logp_per_token"], m["english_words"]
    return (f"**Flattening**, on the creative demo's {s['prompts']} held-out prompts ({s['k']} samples each, "
            f"{len(s['seeds'])} seeds;\n`python examples/flatten_real.py`, `examples/results/flatten_real.md`):\n\n"
            + flatten_table(study, FLATTEN_GLANCE)
            + "\nAt equal diversity the trained model is "
            + ("as likely" if within(logp) else "likelier" if logp["mean"] > 0 else "less likely")
            + " to the base than the base at a higher temperature\n"
            f"({points(logp, 1, 2)} nats per token, standard error over seeds) and "
            + ("as fluent" if within(words) else "more fluent" if words["mean"] > 0 else "less fluent")
            + f" ({points(words)} points of English\nwords). The paper's alpha 0.5, trained fast, goes "
            "past any temperature's diversity into word salad.\nAll results, with the exact checks, CPU speed and "
            "replay: [docs/results.md](docs/results.md).\n")


def table_page(study: dict) -> str:
    """results.md's study: what it measures (from its settings), then every policy's row."""
    s = study["settings"]
    temperatures, alphas, gentle = s["temperatures"], s["alphas"], s["gentle_alphas"]

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:g}" for v in values[:-1]) + f" and {values[-1]:g}"

    return ("A higher temperature is the free way to make a model more diverse, so flattening is worth training\n"
            "only if, **at the same diversity**, the trained model's text is more fluent or likelier to the base.\n"
            "`python examples/flatten_real.py` (`examples/results/flatten_real.{md,json,png}`) measures\n"
            f"SmolLM2-135M-Instruct on the creative demo's {s['prompts']} held-out prompts, {s['k']} samples each, "
            f"{len(s['seeds'])} seeds:\nthe base at temperatures {min(temperatures):g} to {max(temperatures):g}, and "
            f"PowerFlow at alpha {listed(alphas)} trained {RECIPE['max_steps']} steps of "
            f"{RECIPE['prompts_per_step']} x {RECIPE['samples_per_prompt']}\ncompletions at lr "
            f"{lr_text(RECIPE['lr'])}, and at alpha {listed(gentle)} at lr {lr_text(s['gentle_lr'])}. Semantic "
            "diversity is 100 x (1 -\nmean pairwise cosine) of all-MiniLM-L6-v2 embeddings; English words is the "
            "share of a sample's words\nin pyspellchecker's list; the base log-prob per token is how likely the base "
            "finds the text.\n\n" + flatten_table(study))



def quote(study: dict, which: str, words: int | None = None) -> str:
    """A kept sample, whole or its opening words, on one line."""
    name, index = QUOTES[which]
    text = " ".join(study["policies"][name]["samples"][index]["completion"].split())
    return text if words is None else " ".join(text.split()[:words])


def reading(study: dict, preview: dict) -> str:
    """results.md's matched reading (flatten_real.json) and which alpha suits this model (the creative preview)."""
    policies, matched, s = study["policies"], study["matched"], study["settings"]
    seeds = len(s["seeds"])
    full = [name for name, m in matched.items() if m["english_words"] and m["english_words"]["seeds"] == seeds]
    full.sort(key=lambda name: ("lr" not in name, -float(name.split()[2].rstrip(","))))  # gentle first, 0.85 first
    beyond = [name for name in matched if name not in full]
    logps = [matched[name]["base_logp_per_token"] for name in full]
    words = [matched[name]["english_words"] for name in full]
    above = all(matched[name]["base_logp_per_token"]["mean"] > 0 for name in matched)
    curve = {name: row for name, row in policies.items() if name.startswith("base")}
    widest = max(curve, key=lambda name: curve[name]["diversity"])
    reached = matched[beyond[0]]["english_words"]["seeds"] if beyond else seeds
    first = policies[beyond[0]] if beyond else None
    gentle = [name for name in policies if name.startswith("PowerFlow") and "lr" in name]
    base = policies["base, temperature 1"]
    gains = [policies[name]["diversity"] - base["diversity"] for name in gentle]
    kept = max(abs(policies[name]["english_words"] - base["english_words"]) for name in gentle)
    lines = [f"Read at equal diversity (each seed's temperature curve interpolated at the trained policy's "
             f"diversity; ± is the standard error over the {seeds} seeds):  ",
             "* **Likelier to the base, yes.** " + ("Every" if above else "Not every") + " trained point lies above "
             "the temperature curve on base log-prob per token: "
             + ", ".join(f"{points(c, 1, 2)}{' nats' if i == 0 else ''} for {spoken(name)}"
                         for i, (c, name) in enumerate(zip(logps, full)))
             + ". On this proxy the paper's claim holds. ",
             "* **More fluent, no: level.** On the English-word share the trained points "
             + ("sit on the curve" if all(within(c) for c in words) else "leave the curve")
             + " (" + ", ".join(points(c) for c in words[:-1]) + f" and {points(words[-1])} "
             "points). Training buys diversity at the fluency cost temperature would charge, not less. "]
    if beyond:
        lines.append(
            "* **Strong flattening goes past every temperature, and into word salad.** At lr "
            f"{lr_text(RECIPE['lr'])}, alpha {' and '.join(name.split()[2] for name in beyond)} are more diverse "
            f"on {seeds - reached} of {seeds} seeds than the base at any temperature ("
            + " and ".join(f"{policies[name]['diversity']:.1f}" for name in beyond)
            + f" against {curve[widest]['diversity']:.1f} at best). Against {widest.removeprefix('base, ')} "
            f"alpha {beyond[0].split()[2]} has more English words ({100 * first['english_words']:.1f}% against "
            f"  {100 * curve[widest]['english_words']:.1f}%) and a far higher base log-prob "
            f"({first['base_logp_per_token']:.2f} against {curve[widest]['base_logp_per_token']:.2f}), but a reader "
            f"sees salad in both ({spoken(QUOTES['salad'][0]).split(' at ')[0]}, seed 0: "
            f"\"{quote(study, 'salad', QUOTED_WORDS)} ...\"). ")
    lines.append(
        "* **The learning rate matters as much as alpha.** At lr "
        f"{lr_text(s['gentle_lr'])} alpha {' and '.join(name.split()[2].rstrip(',') for name in gentle)} gain "
        f"{min(gains):.0f}-{max(gains):.0f} points of diversity over the base at temperature 1 and keep its "
        f"English-word share within {100 * kept:.1f} points ("
        + " and ".join(f"{100 * policies[name]['english_words']:.1f}%" for name in gentle)
        + f" against {100 * base['english_words']:.1f}%): \"{quote(study, 'gentle')}\" ")
    rows = preview["alphas"]
    flat = [alpha for alpha in rows if float(alpha) < 1]
    lines.append(
        " **Which alpha on which model.** The paper's 0.5 is for 7B aligned models. On this 135M model, "
        f"`powerflow preview --task creative` on the same {preview['prompts']} prompts "
        "(`examples/results/preview_creative.json`) puts p_alpha's mass for alpha "
        + ", ".join(flat[:-1]) + f" and even {flat[-1]} on {preview['max_new_tokens']}-token completions cut at the "
        "limit, at "
        + ", ".join(f"{rows[a]['base_logp_per_token']:.1f}" for a in flat[:-1])
        + f" and {rows[flat[-1]]['base_logp_per_token']:.1f} nats per token of base log-prob: the tail of long, "
        f"noisy texts outweighs the base's own answers ({rows['1']['base_logp_per_token']:.1f}). Those rows rest on "
        + ("fewer than 2" if all(rows[a]["ess"] < 2 for a in flat) else "few")
        + f" of {preview['candidates']} samples per prompt, so they are a rough reading, "
        "but the trained runs agree: the faster training moves towards p_alpha, the more its text turns to "
        f"salad. At lr {lr_text(s['gentle_lr'])}, {RECIPE['max_steps']} steps go a short way towards the target, "
        "and that short way gains diversity without losing fluency. The smaller and less aligned the model, the "
        "closer to 1 flattening has to stay and the gentler its training; preview your own prompts "
        "(`--task creative --alphas 0.5,0.7,0.85,1`) and watch the base log-prob per token and the English-word "
        "share during training. ")
    intro, *bullets, which = lines
    return wrap(intro) + "\n" + "".join(wrap(bullet) for bullet in bullets) + "\n" + wrap(which)


BLOCKS = {
    "flatten-table": Block(("flatten_real.json",), table_page),
    "flatten-reading": Block(("flatten_real.json", "preview_creative.json"), reading),
}
