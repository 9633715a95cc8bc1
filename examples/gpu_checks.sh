#!/usr/bin/env bash
# The GPU checks in one run (bitsandbytes travels as a wheel, see docs/gpu.md):
#   the gpu-marked tests, then `powerflow bench` at the 1.5B and 7B shapes, then a training step split.
# Run from the repository root with PYTHONPATH=. ; results go to $OUT (or ./gpu-out).
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, transformers, peft, bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, b.__version__)" | tee "$out/versions.txt"
python -m pytest -q -m gpu tests/test_sampler_static_gpu.py 2>&1 | tee "$out/pytest-gpu.txt"
python -m powerflow_lite bench --shape qwen2.5-1.5b --batch 64 --prompt-len 128 --new-tokens 256 --json 2>&1 | tee "$out/bench-1.5b.json"
python -m powerflow_lite bench --shape qwen2.5-7b --batch 32 --prompt-len 128 --new-tokens 256 --json 2>&1 | tee "$out/bench-7b.json"
python examples/gpu_check.py --shape qwen2.5-1.5b --steps 2 --json "$out/step-1.5b.json" 2>&1 | tee "$out/step-1.5b.txt"
