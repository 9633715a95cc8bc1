"""The GPUs a hobbyist trains on: memory, peak bf16 tensor-core FLOP/s and memory bandwidth, each with its source.

    card("rtx4090").bf16_flops, [c.key for c in CARDS]

estimate.py turns these peaks into a time per step. They are the vendors' peak figures, not measured rates.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PowerflowError


@dataclass(frozen=True)
class Card:
    key: str
    """Short name to look the card up by, e.g. rtx4090."""
    name: str
    """The card as its vendor names it, with its memory."""
    memory_gib: float
    """Memory on the card, GiB (GDDR and HBM come in binary sizes: a 12 GB card holds 12 GiB)."""
    bf16_flops: float
    """Peak dense bf16 tensor-core FLOP/s with FP32 accumulate (what training uses), no sparsity."""
    bandwidth: float
    """Peak memory bandwidth, bytes/s (decimal, as the vendors give it: 1 TB/s = 1e12 B/s)."""
    source: str
    """URL of the vendor's data sheet or whitepaper the figures come from."""

    def __post_init__(self):
        if min(self.memory_gib, self.bf16_flops, self.bandwidth) <= 0:
            raise ValueError(f"{self.name}: memory, FLOP/s and bandwidth must be positive")
        if not self.source.startswith("https://"):
            raise ValueError(f"{self.name}: source must be an https:// URL, got {self.source!r}")


# Peak rates from NVIDIA's own documents, dense (NVIDIA prints sparse rates with a star at twice these). GeForce
# cards run bf16 with FP32 accumulate at half their FP16-accumulate rate, so their rows take the FP32-accumulate
# line; data-centre cards run both at the same rate.
#   RTX 3060: no NVIDIA document prints its tensor rate. GA102 whitepaper, RTX 3090: 71 TFLOPS FP32-accumulate
#     / (82 SMs x 1.695 GHz) = 512 FLOP/clk/SM on GA10x; x 28 SMs x 1.777 GHz boost = 25.5 TFLOPS. 360 GB/s is
#     192 bit x 15 Gbps GDDR6 (NVIDIA's RTX 3060 product page).
#   RTX 4090: Ada whitepaper, Appendix A: Peak BF16 Tensor TFLOPS with FP32 Accumulate 165.2/330.4; 1008 GB/s.
#     (82.6 in the same table is its non-tensor FP32 rate.)
#   A100 40 GB SXM4: Ampere (GA100) whitepaper, Table 1: Peak BF16 Tensor TFLOPS 312/624; 1555 GB/s. The A100
#     40 GB PCIe prints the same peaks at a lower power limit.
#   H100 80 GB SXM5: H100 data sheet: BFLOAT16 Tensor Core 1,979 TFLOPS with sparsity, so 989.4 dense; 3.35 TB/s.
CARDS: tuple[Card, ...] = (
    Card("rtx3060", "RTX 3060 12 GB", 12, 25.5e12, 360e9,
         "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf"),
    Card("rtx4090", "RTX 4090 24 GB", 24, 165.2e12, 1008e9,
         "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"),
    Card("a100-40gb", "A100 40 GB SXM4", 40, 312e12, 1555e9,
         "https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/nvidia-ampere-architecture-whitepaper.pdf"),
    Card("h100-80gb", "H100 80 GB SXM5", 80, 989.4e12, 3.35e12,
         "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"),
)


def card(key: str) -> Card:
    """The card in CARDS with this key."""
    for c in CARDS:
        if c.key == key:
            return c
    raise PowerflowError(f"unknown card {key!r}: choose one of {', '.join(c.key for c in CARDS)}")


# How torch.cuda.get_device_name names each card, lowercase without spaces or hyphens: the name ends so ("NVIDIA
# GeForce RTX 4090", "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"); a Ti, laptop or 80 GB A100 is another card.
DEVICE_NAMES = {"rtx3060": ("rtx3060",), "rtx4090": ("rtx4090",), "a100-40gb": ("a100sxm440gb", "a100pcie40gb"),
                "h100-80gb": ("h10080gbhbm3", "h100sxm580gb")}


def find_card(device_name: str) -> Card | None:
    """The card in CARDS that torch names `device_name`, or None."""
    name = device_name.lower().replace(" ", "").replace("-", "")
    return next((card(key) for key, endings in DEVICE_NAMES.items() if name.endswith(endings)), None)
