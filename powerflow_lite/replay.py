"""A replay buffer of scored completions: trajectory balance trained on what was sampled before.

    buffer = ReplayBuffer(capacity=16, best_fraction=0.0, window=0, order="newest")
    buffer.add(batch, prompts, step, alpha)       # after a fresh step is scored
    chosen_prompts = buffer.ready(2, done_steps)  # rollout.py picks B of them at random
    entries = [e for p in chosen_prompts for e in buffer.draw(p, G, generator)]
    rollouts, stored = replay_batch(entries, prompt_ids, G, pad_id, device)  # stored: log p_base, features, ...

Why it is allowed: a trajectory-balance objective is a regression whose fixed
point does not depend on which completions it is shown, so a replayed
completion takes importance weight 1; the on-policy `rl-*` objectives refuse
replay (Objective.check). A stored completion keeps what does not change as the
adapter trains (its tokens, log p_base, psi, the prompt's features, the
log-probs of the distribution that drew it), so replaying it costs one policy
pass and the update: no sampling, no base pass. What is kept and drawn per
prompt, and the measurements behind the defaults: docs/design.md section 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import ScoredBatch
from .samplers.rollouts import Rollouts, group_ids_of, left_pad

FILENAME = "replay.safetensors"
FORMAT = "2"  # completions concatenated (int32 ids) with offsets, features once per prompt


@dataclass(frozen=True)
class Entry:
    prompt: int  # index of the prompt in the run's prompt list
    completion: Tensor  # [l] token ids, EOS included when it was emitted
    base_logps: Tensor  # [l] log p_base of each token
    behaviour_logps: Tensor  # [l] log-prob of each token under the distribution that drew it (its temperature)
    psi: float
    features: Tensor  # [H] the prompt's features (adapter off)
    truncated: bool  # cut at --max-new-tokens
    target: float  # alpha (S_base/|y| + psi): what `best` ranks by
    step: int  # the step that sampled it (1-based): what `recent` ranks by
    temperature: float = 1.0  # the temperature it was sampled at (--explore-temperature for explored rows)


class ReplayBuffer:
    def __init__(self, capacity: int, best_fraction: float = 0.0, window: int = 0, order: str = "newest"):
        self.capacity, self.best_fraction, self.window, self.order = capacity, best_fraction, window, order
        self.entries: dict[int, list[Entry]] = {}  # prompt index -> its completions, oldest first

    def __len__(self) -> int:
        return sum(len(kept) for kept in self.entries.values())

    def add(self, batch: ScoredBatch, prompts: list[int], step: int, alpha: float) -> None:
        """Store a fresh step's completions; `prompts[g]` is the prompt index of group g; `step` is 1-based."""
        lengths = batch.mask.sum(-1).tolist()
        per_token_base = (batch.base_logps * batch.mask).sum(-1) / batch.mask.sum(-1).clamp(min=1)  # [N]
        targets = (alpha * (per_token_base + batch.psi)).tolist()
        # one copy to the CPU for the whole batch; each entry then owns its rows (a view would keep the batch alive)
        ids, base, behaviour = (t.detach().cpu() for t in (batch.rollouts.completion_ids, batch.base_logps,
                                                           batch.behaviour_logps))
        features, psi, truncated = batch.features.detach().float().cpu(), batch.psi.tolist(), batch.rollouts.truncated
        temperatures = batch.rollouts.temperatures().tolist()
        mask = batch.mask.cpu()
        finite = (torch.isfinite(base * mask).all(-1) & torch.isfinite(behaviour * mask).all(-1)
                  & torch.isfinite(torch.tensor(targets))).tolist()
        for row, (group, length) in enumerate(zip(batch.group_ids.tolist(), lengths)):
            if not finite[row]:  # a row the step could not train on is not worth keeping
                continue
            prompt = prompts[group]
            entry = Entry(prompt, ids[row, :length].clone(), base[row, :length].float().clone(),
                          behaviour[row, :length].float().clone(), psi[row], features[row].clone(),
                          bool(truncated[row]), targets[row], step, temperatures[row])
            kept = self.entries.setdefault(prompt, [])
            same = [i for i, other in enumerate(kept) if torch.equal(other.completion, entry.completion)]
            if same:  # sampled again: one copy, now as recent as this step
                del kept[same[0]]
            kept.append(entry)
            self._evict(kept)

    def _evict(self, kept: list[Entry]) -> None:
        """Over capacity: drop the oldest completion that is not among the best `best_fraction` of the capacity
        (with the default 0, simply the oldest)."""
        while len(kept) > self.capacity:
            best = set(_best(kept, round(self.capacity * self.best_fraction)))
            oldest = next(i for i in range(len(kept)) if i not in best)
            del kept[oldest]

    def ready(self, count: int, done: int) -> list[int]:
        """Prompts with at least `count` completions stored and, with a `window`, some sampled in the last `window`
        of the `done` steps completed so far, in increasing order."""
        oldest = done - self.window if self.window else -1  # entries record their 1-based step
        return sorted(prompt for prompt, kept in self.entries.items()
                      if len(kept) >= count and max(e.step for e in kept) > oldest)

    def draw(self, prompt: int, count: int, generator: torch.Generator | None = None) -> list[Entry]:
        """`count` of a prompt's completions: the best `best_fraction` by target, then of the rest the most recent
        (`order` "newest") or a random choice (`order` "random", drawn with `generator`); a prompt with fewer
        stored repeats them in that order."""
        kept = self.entries[prompt]
        chosen = _best(kept, min(len(kept), round(count * self.best_fraction)))
        rest = [i for i in range(len(kept) - 1, -1, -1) if i not in chosen]  # newest first
        if self.order == "random":
            rest = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
        picked = [kept[i] for i in chosen + rest][:count]
        return [picked[i % len(picked)] for i in range(count)]

    # --- checkpoints: one safetensors file, the completions concatenated, plus the buffer's settings

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        entries = [entry for prompt in sorted(self.entries) for entry in self.entries[prompt]]
        meta = {"format": FORMAT, "capacity": str(self.capacity), "best_fraction": repr(self.best_fraction),
                "window": str(self.window), "order": self.order, "count": str(len(entries))}
        if not entries:
            return {"empty": torch.zeros(1)}, meta
        lengths = torch.tensor([len(e.completion) for e in entries])
        prompts = sorted(self.entries)
        tensors = {
            "completion": torch.cat([e.completion for e in entries]).to(torch.int32),  # [T]
            "base_logps": torch.cat([e.base_logps for e in entries]),  # [T]
            "behaviour_logps": torch.cat([e.behaviour_logps for e in entries]),  # [T]
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),  # [n + 1]
            "prompt": torch.tensor([e.prompt for e in entries]),
            "psi": torch.tensor([e.psi for e in entries], dtype=torch.float64),
            "truncated": torch.tensor([e.truncated for e in entries]),
            "target": torch.tensor([e.target for e in entries], dtype=torch.float64),
            "step": torch.tensor([e.step for e in entries]),
            "temperature": torch.tensor([e.temperature for e in entries], dtype=torch.float64),
            "feature_prompts": torch.tensor(prompts),  # [P]
            "features": torch.stack([self.entries[p][0].features for p in prompts]),  # [P, H]: fixed per prompt
        }
        return tensors, meta

    @staticmethod
    def from_state(tensors: dict[str, Tensor], meta: dict[str, str]) -> "ReplayBuffer":
        if meta.get("format") != FORMAT:
            raise ValueError(f"replay buffer format {meta.get('format', '1')!r}, this version reads {FORMAT!r}")
        buffer = ReplayBuffer(int(meta["capacity"]), float(meta["best_fraction"]), int(meta["window"]), meta["order"])
        offsets = tensors["offsets"].tolist() if int(meta["count"]) else []
        features = dict(zip(tensors["feature_prompts"].tolist(), tensors["features"])) if offsets else {}
        for i in range(int(meta["count"])):
            span = slice(offsets[i], offsets[i + 1])
            prompt = int(tensors["prompt"][i])
            entry = Entry(prompt, tensors["completion"][span].long(), tensors["base_logps"][span].clone(),
                          tensors["behaviour_logps"][span].clone(), float(tensors["psi"][i]), features[prompt],
                          bool(tensors["truncated"][i]), float(tensors["target"][i]), int(tensors["step"][i]),
                          float(tensors["temperature"][i]))
            buffer.entries.setdefault(prompt, []).append(entry)
        return buffer


def _best(kept: list[Entry], count: int) -> list[int]:
    """Indices of the `count` highest targets (the newer first among equals)."""
    order = sorted(range(len(kept)), key=lambda i: (-kept[i].target, -i))
    return order[:count]


@dataclass(frozen=True)
class Stored:
    """What a replay step takes from the buffer besides the tokens: what does not change as the adapter trains."""

    base_logps: Tensor  # [N, L] log p_base of each token
    behaviour_logps: Tensor  # [N, L] log-prob of each token under the distribution that drew it
    features: Tensor  # [N, H] the prompt's features (adapter off)


def replay_batch(entries: list[Entry], prompt_ids: list[list[int]], group_size: int, pad_id: int,
                 device: torch.device) -> tuple[Rollouts, Stored]:
    """Stored completions as a step's rows (consecutive groups of `group_size`, one per prompt) and what the
    buffer kept of them. (psi is recomputed under the run's current penalties.)"""
    prompt_rows, prompt_mask = left_pad([prompt_ids[e.prompt] for e in entries], pad_id, device)
    width = max(len(e.completion) for e in entries)
    completion = torch.full((len(entries), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(entries), width), dtype=torch.long)
    base = torch.zeros((len(entries), width), dtype=torch.float32)
    behaviour = torch.zeros((len(entries), width), dtype=torch.float32)
    for i, e in enumerate(entries):
        completion[i, :len(e.completion)], mask[i, :len(e.completion)] = e.completion, 1
        base[i, :len(e.completion)], behaviour[i, :len(e.completion)] = e.base_logps, e.behaviour_logps
    rollouts = Rollouts(prompt_rows, prompt_mask, completion.to(device), mask.to(device),
                        group_ids_of(len(entries) // group_size, group_size, device),
                        torch.tensor([e.truncated for e in entries], device=device),
                        temperature=torch.tensor([e.temperature for e in entries], device=device))
    features = torch.stack([e.features for e in entries]).to(device)
    return rollouts, Stored(base.to(device), behaviour.to(device), features)
