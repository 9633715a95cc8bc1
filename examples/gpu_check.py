"""Train a few steps on a random-weight model of a real shape and print the time split and peak memory.

    PYTHONPATH=. python examples/gpu_check.py --shape qwen2.5-1.5b            # on a GPU, NF4 + LoRA
    python examples/gpu_check.py --shape tiny --device cpu --steps 1           # a smoke test anywhere

The model is built in code (no download) with the Qwen2.5 configuration of the
named size and random weights, saved once as safetensors, then trained through
the same `setup` / `train` the CLI uses: 8 prompts x 8 samples of 128-token
prompts and 256 new tokens (`--ignore-eos`, so every completion has the same
length), the setting of the reference figures in docs/design.md section 6.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from powerflow_lite.bench import SHAPES, write_letter_prompts, write_random_model
from powerflow_lite.config import TrainConfig
from powerflow_lite.setup import setup
from powerflow_lite.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--json", help="also write the per-step figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_random_model(args.shape, root / "model", args.device)
        prompts = write_letter_prompts(root / "prompts.jsonl", args.prompts_per_step, args.prompt_len)
        print(f"model {args.shape} written in {time.perf_counter() - started:.1f} s", flush=True)
        cfg = TrainConfig(model=str(root / "model"), alpha=4.0, prompts=str(prompts), output=str(root / "run"),
                          quant=args.quant, device=args.device, max_steps=args.steps, chat_template="none",
                          prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples_per_prompt,
                          max_new_tokens=args.new_tokens, ignore_eos=True, micro_batch_size=args.micro_batch_size,
                          lora_r=16, lora_alpha=32, warmup_steps=0, save_every=0, show_every=0)
        run = setup(cfg)
        print(f"{args.shape} ({args.quant}) on {run.device}: {run.info.trainable_params:,} trainable of "
              f"{run.info.total_params:,}; step = {args.prompts_per_step * args.samples_per_prompt} x "
              f"({args.prompt_len} + {args.new_tokens}) tokens", flush=True)
        rows = []
        for result in train(run):
            m = result.metrics
            rows.append(m)
            memory = f"  peak {m['peak_gpu_mem_gib']:.2f} GiB" if "peak_gpu_mem_gib" in m else ""
            print(f"step {m['step']}: sample {m['time_sample']:.2f} s ({m['sample_tokens_per_s']:.0f} tok/s)  "
                  f"score {m['time_score']:.2f} s  update {m['time_update']:.2f} s{memory}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
