"""`powerflow env`: what this machine can run (versions, device, GPU memory, 4-bit support).

Paste its output into bug reports.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from .model import nf4_support, resolve_quant
from .samplers import resolve_sampler

PACKAGES = ("powerflow-lite", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
            "safetensors", "typer", "rich")


def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "gpus": [],
        "nf4": {},
        "default_device": "cuda" if torch.cuda.is_available() else "cpu",
        "trust_remote_code": "off unless --trust-remote-code is given",
    }
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        info["gpus"].append({"index": index, "name": torch.cuda.get_device_name(index),
                             "memory_gib": round(total / 2**30, 2), "free_gib": round(free / 2**30, 2),
                             "bf16": torch.cuda.is_bf16_supported()})
    for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        ok, reason = nf4_support(device_type)
        info["nf4"][device_type] = {"works": ok, "detail": reason}
    device = torch.device(info["default_device"])
    (quant, quant_why), (sampler, sampler_why) = resolve_quant("auto", device), resolve_sampler("auto", device)
    info["defaults"] = {"quant": {"value": quant, "why": quant_why}, "sampler": {"value": sampler, "why": sampler_why}}
    return info


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
