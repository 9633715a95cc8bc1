"""powerflow-lite: train a LoRA adapter so a causal LM samples from p_base(y|q)^alpha.

    powerflow train --model Qwen/Qwen2.5-Math-1.5B --alpha 4 --prompts prompts.jsonl

See README.md to start, docs/cli.md for the commands and docs/design.md for the maths.
"""

__version__ = "0.1.0"
