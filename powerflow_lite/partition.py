"""The learned log-partition head log Z'(q) (DESIGN section 4).

A small MLP on the masked mean of the prompt's last hidden states. The features
come from the base pass (adapter off, no grad), so they are a fixed function of
the prompt and the head never back-propagates into the LM. It is trained by the
same loss as the adapter, with its own larger learning rate (`--z-lr`), and is
saved beside the adapter as `z_head.safetensors`.

Its output scale differs a lot between objectives (per token for `latb`, per
sequence for `tb-traj`) and models, so the output bias starts at the value that
zeroes the first batch's mean residual (`init_bias_from_residuals`) instead of
at 0: otherwise the first hundreds of steps are spent moving one scalar.

Learning rates inside the head (`param_groups`): Adam moves every weight by
about the learning rate per step, so when a layer's gradient signs agree its
output moves by lr x fan-in. At one shared lr of 1e-2 a 576 -> 256 -> 1 head
jumped by 3-5 nats per step on SmolLM2. The output bias (the global log Z)
gets `z_lr`; each weight matrix gets `z_lr / sqrt(fan_in)`. (`z_lr / fan_in`
was stable too, but left log Z' the same for every prompt for hundreds of steps.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import PowerflowError

FILENAME = "z_head.safetensors"


class LogZHead(nn.Module):
    """features [B, H] -> log Z'(q) [B]."""

    def __init__(self, hidden_size: int, width: int = 256):
        super().__init__()
        self.hidden_size, self.width = hidden_size, width
        # LayerNorm without parameters: hidden-state scales differ by orders of magnitude between models,
        # and with Adam the head's per-step change in output grows with the size of its inputs.
        self.net = nn.Sequential(nn.LayerNorm(hidden_size, elementwise_affine=False), nn.Linear(hidden_size, width),
                                 nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.output.weight)  # start as a constant: the bias
        nn.init.zeros_(self.output.bias)

    @property
    def output(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.to(self.output.weight.dtype)).squeeze(-1)

    def param_groups(self, z_lr: float) -> list[dict]:
        """Optimizer groups with per-layer learning rates (see module docstring)."""
        first = self.net[1]
        return [
            {"params": [self.output.bias], "lr": z_lr, "weight_decay": 0.0},
            {"params": [first.weight, first.bias], "lr": z_lr / math.sqrt(self.hidden_size), "weight_decay": 0.0},
            {"params": [self.output.weight], "lr": z_lr / math.sqrt(self.width), "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def recenter(self, predicted: Tensor, targets: Tensor) -> None:
        """Shift the output bias so that the head's mean over these prompts, `predicted` [B], becomes the
        mean of `targets` [B] (their batch estimates): --log-z hybrid, every step."""
        self.output.bias.add_((targets.float() - predicted.float()).mean())

    @torch.no_grad()
    def init_bias_from_residuals(self, residual_without_log_z: Tensor) -> None:
        """Set the output bias so that the mean residual of this batch becomes zero."""
        self.output.bias.fill_(-residual_without_log_z.float().mean().item())


def save_head(head: LogZHead, directory: str | Path) -> None:
    metadata = {"format": "pt", "config": json.dumps({"hidden_size": head.hidden_size, "width": head.width})}
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(Path(directory) / FILENAME), metadata=metadata)


def load_head(directory: str | Path, device: torch.device | str = "cpu") -> LogZHead:
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise PowerflowError(f"{str(path)!r} not found: the checkpoint has no log Z head")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    head = LogZHead(config["hidden_size"], config["width"])
    head.load_state_dict(load_file(str(path)))
    return head.to(device)
