"""Write the arithmetic prompts and problems shipped in powerflow_lite/data/ (written for this project).

    python examples/make_arithmetic_data.py      # rewrites the six files; the same files on every run

Questions a small instruct model half knows, in three sets:

* `arithmetic_*`: single-digit addition ("What is 3 + 5?") and subtraction with
  a one-digit result ("What is 12 - 7?"); the `powerflow train --demo` task;
* `word_*`: short word problems that add or take away ("Mia had 9 pencils and
  gave 3 of them to a friend. ..."), a harder kind for the results script;
* `two_digit_*`: two-digit addition asking for the number alone ("What is 23 + 45?
  Answer with the number only."), 24 held out (drawn with a generator of its own,
  so the other sets are the same as before it existed).

Each kind's questions are shuffled with a fixed seed and split: the first 20 of
each are held out as problems with answers (`*_eval.jsonl`, interleaved by kind
so that any prefix mixes the kinds), the rest are training prompts without
answers (`*_train.jsonl`): training never sees a label, and no held-out
question is a training prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HELD_OUT = 20  # per kind
DATA = Path(__file__).resolve().parent.parent / "powerflow_lite" / "data"

WORD_ADD = [("Sam has {a} apples and buys {b} more. How many apples does Sam have now?"),
            ("There are {a} birds on a fence and {b} more land beside them. How many birds are on the fence?")]
WORD_SUB = [("Mia had {a} pencils and gave {b} of them to a friend. How many pencils does Mia have left?"),
            ("A bowl holds {a} plums. Tom eats {b} of them. How many plums are left in the bowl?")]


def questions() -> dict[str, list[tuple[str, int]]]:
    add = [(f"What is {a} + {b}?", a + b) for a in range(1, 10) for b in range(1, 10)]
    sub = [(f"What is {a} - {b}?", a - b) for a in range(2, 19) for b in range(1, 10) if 0 < a - b <= 9]
    word = [(t.format(a=a, b=b), a + b) for t in WORD_ADD for a in range(2, 8) for b in range(2, 8)]
    word += [(t.format(a=a, b=b), a - b) for t in WORD_SUB for a in range(5, 12) for b in range(2, 5)]
    return {"addition": add, "subtraction": sub, "word problem": word}


SETS = {"arithmetic": ("addition", "subtraction"), "word": ("word problem",)}


def split(seed: int = 13) -> dict[str, tuple[list[dict], list[dict]]]:
    """{set name: (training prompts, held-out problems)}"""
    rng = random.Random(seed)
    train, held_out = {}, {}
    for kind, items in questions().items():
        rng.shuffle(items)
        held_out[kind] = [{"problem": q, "answer": str(a), "kind": kind} for q, a in items[:HELD_OUT]]
        train[kind] = [{"prompt": q, "kind": kind} for q, _ in items[HELD_OUT:]]
    sets = {}
    for name, kinds in SETS.items():
        prompts = [row for kind in kinds for row in train[kind]]
        rng.shuffle(prompts)
        sets[name] = prompts, [row for rows in zip(*(held_out[kind] for kind in kinds)) for row in rows]
    return sets


def two_digit(seed: int = 17, held_out: int = 24) -> tuple[list[dict], list[dict]]:
    """Two-digit additions with a two-digit sum: (training prompts, held-out problems)."""
    items = [(f"What is {a} + {b}? Answer with the number only.", a + b) for a in range(10, 90) for b in range(10, 90)
             if a + b < 100]
    rng = random.Random(seed)
    rng.shuffle(items)
    problems = [{"problem": q, "answer": str(a), "kind": "two-digit addition"} for q, a in items[:held_out]]
    prompts = [{"prompt": q, "kind": "two-digit addition"} for q, _ in items[held_out:held_out + 200]]
    return prompts, problems


def main() -> None:
    for name, (train, held_out) in {**split(), "two_digit": two_digit()}.items():
        for suffix, rows in (("train", train), ("eval", held_out)):
            path = DATA / f"{name}_{suffix}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
            print(f"wrote {path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
