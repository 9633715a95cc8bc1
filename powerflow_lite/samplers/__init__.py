"""The samplers of `--sampler`, as a registry with capability flags (as objectives.OBJECTIVES).

    name, why = resolve_sampler("auto", torch.device("cpu"))   # "static", and why, in words
    rollouts = SAMPLERS[name].sample(model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None)

Every sampler has the signature above and returns `Rollouts` (rollouts.py: rows
grouped by prompt). The flags say what the rest of the package may rely on; the
CLI choices, the help line, `auto`, the checks of config.py and the memory plan
all come from here. An entry names its function, which is imported at its first
call: choosing a sampler (the CLI's flags and checks) loads no model code. A new
sampler is one module in this folder and one entry below.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from .rollouts import Rollouts


def _lazy(where: str) -> Callable[..., Rollouts]:
    """The function `module.function` of this folder, imported at its first call."""
    module, function = where.rsplit(".", 1)

    def call(*args, **kwargs) -> Rollouts:
        return getattr(import_module(f"{__name__}.{module}"), function)(*args, **kwargs)

    call.__qualname__ = where
    return call


@dataclass(frozen=True)
class Sampler:
    sample: Callable[..., Rollouts]  # (model, tokenizer, prompts, samples_per_prompt, settings, uniforms=None)
    title: str  # what it is, in a few words (help text and the `auto` note)
    help: str  # its part of the --sampler help line
    top_p: bool  # implements nucleus sampling (top-p < 1)
    returns_logps: bool  # returns log pi_old and the behaviour log-probs with the samples: no scoring pass for them
    seeded_rows: bool  # draws row i from the `uniforms` it is given: the same draws in any batch or on any rank
    auto_on: tuple[str, ...]  # device types where --sampler auto picks it
    auto_why: str  # why, shown at the start of a run
    prefills_once: bool  # a prompt answered G times is prefilled once, its cache copied to its rows (memory plan)
    static_cache: bool  # allocates its KV cache whole, at full length, before the first token (the plan's is exact)
    next_token_bytes: int  # bytes per row and vocabulary entry it holds at a decode step beside the logits and
    # their float32 copy (memory plan)
    trains: bool = True  # draws from the policy itself: training may use it
    power: bool = False  # aims at p_base^alpha at inference time (reads SamplingSettings.power)
    base_only: bool = False  # the loaded model must be the base itself (no adapter): its proposal is p_base


SAMPLERS: dict[str, Sampler] = {
    "hf": Sampler(_lazy("hf.sample"), "Hugging Face generate", "Hugging Face generate", top_p=True,
                  returns_logps=False, seeded_rows=False, auto_on=("cuda",),
                  auto_why="Hugging Face generate on the GPU",
                  prefills_once=False, static_cache=False, next_token_bytes=4),  # the softmax
    "static": Sampler(_lazy("static.sample_static"), "the static-cache sampler",
                      "our static-cache decode loop, which returns log pi_old with the samples (no scoring pass for "
                      "it)", top_p=False, returns_logps=True, seeded_rows=True, auto_on=("cpu",),
                      auto_why="the static-cache sampler on the CPU (prompts prefilled once, stopped rows dropped, "
                               "log pi_old returned with the samples)",
                      prefills_once=True, static_cache=True,
                      next_token_bytes=24),  # log-softmax, softmax and two float64 cumulative sums
    "power-resample": Sampler(_lazy("resample.sample_resampled"), "importance resampling towards p_base^alpha",
                              "p_base^alpha at inference time: --candidates proposals per answer, one kept by weight "
                              "p_base^alpha / q", top_p=False, returns_logps=True, seeded_rows=False, auto_on=(),
                              auto_why="", prefills_once=True, static_cache=True, next_token_bytes=24, trains=False,
                              power=True),  # both draw their proposals with the static sampler
    "power-mcmc": Sampler(_lazy("mcmc.sample_mcmc"), "block-wise Metropolis-Hastings towards p_base^alpha",
                          "p_base^alpha at inference time by block-wise Metropolis-Hastings (--mcmc-steps per block)",
                          top_p=False, returns_logps=True, seeded_rows=False, auto_on=(), auto_why="",
                          prefills_once=True, static_cache=True, next_token_bytes=24, trains=False, power=True),
    "power-smc": Sampler(_lazy("smc.sample_smc"), "sequential Monte Carlo towards p_base^alpha",
                         "p_base^alpha at inference time by sequential Monte Carlo: --particles per answer advanced "
                         "together from the base at temperature 1/alpha, resampled when their effective sample size "
                         "falls below --ess-threshold", top_p=False, returns_logps=True, seeded_rows=False, auto_on=(),
                         auto_why="", prefills_once=True, static_cache=True,
                         next_token_bytes=32,  # the static sampler's, and the proposal's log-softmax
                         trains=False, power=True, base_only=True),
}

SAMPLER_HELP = ("; ".join(f"{name}: {sampler.help}" for name, sampler in SAMPLERS.items())
                + "; auto: " + ", ".join(f"{name} on the {'CPU' if device == 'cpu' else 'GPU'}"
                                         for name, sampler in SAMPLERS.items() for device in sampler.auto_on) + ".")


def resolve_sampler(name: str, device: torch.device, top_p: float = 1.0) -> tuple[str, str]:
    """`auto` -> the sampler registered for this device type (one with nucleus sampling when top-p < 1), and why."""
    if name != "auto":
        return name, "as asked"
    if top_p != 1.0:
        without = " and ".join(other for other, sampler in SAMPLERS.items() if not sampler.top_p)
        name = next(other for other, sampler in SAMPLERS.items() if sampler.top_p)
        return name, f"auto: {SAMPLERS[name].title}, since --top-p < 1 (the {without} sampler has no nucleus sampling)"
    name = next((other for other, sampler in SAMPLERS.items() if device.type in sampler.auto_on), next(iter(SAMPLERS)))
    return name, f"auto: {SAMPLERS[name].auto_why}"


def unsupported(name: str, top_p: float, min_new_tokens: int = 0) -> str | None:
    """Why sampler `name` cannot sample with these settings, or None (`auto` resolves to one that can)."""
    if name != "auto" and top_p != 1.0 and not SAMPLERS[name].top_p:
        other = next(other for other, sampler in SAMPLERS.items() if sampler.top_p)
        return f"--sampler {name} does not implement --top-p < 1: use --sampler {other}"
    if name != "auto" and min_new_tokens and SAMPLERS[name].power:
        return (f"--sampler {name} weighs its proposals by their exact log-probs, which --min-new-tokens would change: "
                "drop --min-new-tokens")
    return None
