"""Named datasets (the PowerFlow paper's, and GSM8K): where each lives on the hub and which fields hold what.

    powerflow train --prompts numina-cot --split "train[:18000]" ...   # the paper's training prompts
    powerflow eval --data math500 -k 16 ...                            # MATH500, AIME25, AMC23 for evaluation
    powerflow eval --data gsm8k -k 4 ...                               # GSM8K: answers read off "#### N"

A preset only names a hub dataset (and its configuration where it has several),
its split and its fields; it loads through the same code as a local file, so
`examples/data/*-sample.jsonl` (files with the same fields) exercise every
preset's field mapping offline. The hub needs a network connection; where there
is none, download the data elsewhere and pass the file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    hub_id: str
    split: str  # used unless --split names another
    prompt_field: str
    answer_field: str  # "solution" means a worked solution: the answer is its last \boxed{...}
    about: str
    config: str = ""  # the hub dataset's configuration, where it has several


PRESETS: dict[str, Preset] = {
    "numina-cot": Preset("AI-MO/NuminaMath-CoT", "train", "problem", "solution",
                         "860k competition-style problems with worked solutions; the paper trains on 18k"),
    "math500": Preset("HuggingFaceH4/MATH-500", "test", "problem", "answer",
                      "500 problems from the MATH test set (the PRM800K subset)"),
    "aime25": Preset("math-ai/aime25", "test", "problem", "answer",
                     "the 30 problems of AIME 2025 (I and II); integer answers"),
    "amc23": Preset("math-ai/amc23", "test", "question", "answer",
                    "40 problems of AMC 2023; numeric answers"),
    "gsm8k": Preset("openai/gsm8k", "test", "question", "answer",
                    "grade-school word problems (1319 test, 7473 train); the answer is a worked solution "
                    "ending in \"#### N\"", config="main"),
}

# Fields tried, in order, when the prompt or answer field is not named (local files and hub datasets alike): the
# first of them in the first row holds every row's prompt. The names of prompt sets (a text, or TRL's conversational
# "prompt", a list of {role, content}), math sets (problem, question), instruction sets (Alpaca's instruction before
# its optional input), plain text dumps (text) and last conversations ("messages": a set such as NuminaMath-CoT
# that has both reads its problem, not the worked answer in its messages).
PROMPT_FIELDS = ("prompt", "problem", "question", "instruction", "input", "text", "messages")
ANSWER_FIELDS = ("answer", "solution")  # a "solution" is a worked solution: its last \boxed{...} is the answer
# In either field, a text whose last line is "#### N" (GSM8K's worked solutions) has the answer N.
