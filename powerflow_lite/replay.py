"""A replay buffer of scored completions: trajectory balance trained on what was sampled before.

    buffer = ReplayBuffer(capacity=16, best_fraction=0.0)
    buffer.add(batch, prompts, step, alpha)       # after a fresh step is scored
    entries = [e for p in chosen_prompts for e in buffer.draw(p, G)]   # on a replay step (train.py chooses)
    rollouts, base_logps, features = replay_batch(entries, prompt_ids, G, pad_id, device)

Why this is allowed. Every trajectory-balance objective here (latb, tb-traj,
tb-token) is a regression: it drives the residual
r(y) = log Z'(q) + S_pi(y)/|y| - alpha (S_base(y)/|y| + psi(y)) to zero on the
completions it is shown. Its minimiser, pi = the target, does not depend on the
distribution those completions come from, only that together they cover the
target's support, which the fresh on-policy steps keep doing. So a replayed
completion takes importance weight 1: weighting it by pi(y)/b(y) would turn the
regression back into an on-policy estimator, with the variance of a
sequence-level ratio. Under `--log-z batch` each prompt's estimate of log Z' is
the mean over the completions it is shown, replayed or not, and the loss is their
variance: zero exactly when the residual is the same for all of them, again
whatever produced them.

The `rl-*` objectives are REINFORCE estimators of the reverse-KL gradient: their
gradient is right only for y ~ pi. A replayed y would need the weight
pi(y)/b(y) over the whole sequence, whose variance grows with its length, so
replay refuses them (config.py).

What a stored completion keeps: its tokens, log p_base of each token, psi and
the prompt's features, none of which change as the adapter trains; so replaying
it costs one policy forward without grad (the reference the importance ratio of
--inner-epochs and the batch estimate of log Z' use) and the update's forward
and backward: no sampling and no base pass. The log-probs of the policy that
sampled it are kept too (`behaviour_logps`), for diagnostics.

What is kept per prompt (`capacity` completions at most, duplicates merged):
the best half by target log-prob per token, alpha (S_base/|y| + psi), the
quantity LA-TB matches, and otherwise the most recent (so with a capacity below
2 G, a prompt's G newest may include older best ones). A replay step draws, for each
prompt, the `best_fraction` best and the most recent of the rest. The default
draws the most recent only: on the exact problems (examples/replay_exact.py)
half from the best ended further from the target at alpha 4 (KL 0.40 against
0.31 on the peaky base) and no closer elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import ScoredBatch
from .sampling import Rollouts, group_ids_of, left_pad

FILENAME = "replay.safetensors"


@dataclass(frozen=True)
class Entry:
    prompt: int  # index of the prompt in the run's prompt list
    completion: Tensor  # [l] token ids, EOS included when it was emitted
    base_logps: Tensor  # [l] log p_base of each token
    behaviour_logps: Tensor  # [l] log-prob under the policy that sampled it, when it was sampled
    psi: float
    features: Tensor  # [H] the prompt's features (adapter off)
    truncated: bool  # cut at --max-new-tokens
    target: float  # alpha (S_base/|y| + psi): what `best` ranks by
    step: int  # the step that sampled it (1-based): what `recent` ranks by


class ReplayBuffer:
    def __init__(self, capacity: int, best_fraction: float = 0.0):
        self.capacity, self.best_fraction = capacity, best_fraction
        self.entries: dict[int, list[Entry]] = {}  # prompt index -> its completions, oldest first

    def __len__(self) -> int:
        return sum(len(kept) for kept in self.entries.values())

    def add(self, batch: ScoredBatch, prompts: list[int], step: int, alpha: float) -> None:
        """Store a fresh step's completions; `prompts[g]` is the prompt index of group g; `step` is 1-based."""
        lengths = batch.mask.sum(-1).tolist()
        per_token_base = (batch.base_logps * batch.mask).sum(-1) / batch.mask.sum(-1).clamp(min=1)  # [N]
        targets = (alpha * (per_token_base + batch.psi)).tolist()
        # one copy to the CPU for the whole batch; each entry then owns its rows (a view would keep the batch alive)
        ids, base, old = (t.detach().cpu() for t in (batch.rollouts.completion_ids, batch.base_logps, batch.old_logps))
        features, psi, truncated = batch.features.detach().float().cpu(), batch.psi.tolist(), batch.rollouts.truncated
        finite = (torch.isfinite(base * batch.mask.cpu()).all(-1) & torch.isfinite(old * batch.mask.cpu()).all(-1)
                  & torch.isfinite(torch.tensor(targets))).tolist()
        for row, (group, length) in enumerate(zip(batch.group_ids.tolist(), lengths)):
            if not finite[row]:  # a row the step could not train on is not worth keeping
                continue
            prompt = prompts[group]
            entry = Entry(prompt, ids[row, :length].clone(), base[row, :length].float().clone(),
                          old[row, :length].float().clone(), psi[row], features[row].clone(),
                          bool(truncated[row]), targets[row], step)
            kept = self.entries.setdefault(prompt, [])
            same = [i for i, other in enumerate(kept) if torch.equal(other.completion, entry.completion)]
            if same:  # sampled again: one copy, now as recent as this step
                del kept[same[0]]
            kept.append(entry)
            self._evict(kept)

    def _evict(self, kept: list[Entry]) -> None:
        """Over capacity: drop the oldest completion that is not among the best half."""
        while len(kept) > self.capacity:
            best = set(_best(kept, self.capacity // 2))
            oldest = next(i for i in range(len(kept)) if i not in best)
            del kept[oldest]

    def ready(self, count: int) -> list[int]:
        """Prompts with at least `count` completions stored, in increasing order."""
        return sorted(prompt for prompt, kept in self.entries.items() if len(kept) >= count)

    def draw(self, prompt: int, count: int) -> list[Entry]:
        """`count` of a prompt's completions: the best `best_fraction` by target, then the most recent of the rest;
        a prompt with fewer stored repeats them in that order."""
        kept = self.entries[prompt]
        chosen = _best(kept, min(len(kept), round(count * self.best_fraction)))
        rest = [i for i in range(len(kept) - 1, -1, -1) if i not in chosen]  # newest first
        picked = [kept[i] for i in chosen + rest][:count]
        return [picked[i % len(picked)] for i in range(count)]

    # --- checkpoints: every entry in one safetensors file, padded, plus its settings

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        entries = [entry for prompt in sorted(self.entries) for entry in self.entries[prompt]]
        meta = {"capacity": str(self.capacity), "best_fraction": repr(self.best_fraction), "count": str(len(entries))}
        if not entries:
            return {"empty": torch.zeros(1)}, meta
        width = max(len(e.completion) for e in entries)

        def padded(name: str, dtype) -> Tensor:
            out = torch.zeros(len(entries), width, dtype=dtype)
            for i, e in enumerate(entries):
                value = getattr(e, name)
                out[i, :len(value)] = value
            return out

        tensors = {
            "completion": padded("completion", torch.long),
            "base_logps": padded("base_logps", torch.float32),
            "behaviour_logps": padded("behaviour_logps", torch.float32),
            "length": torch.tensor([len(e.completion) for e in entries]),
            "prompt": torch.tensor([e.prompt for e in entries]),
            "psi": torch.tensor([e.psi for e in entries], dtype=torch.float64),
            "features": torch.stack([e.features for e in entries]),
            "truncated": torch.tensor([e.truncated for e in entries]),
            "target": torch.tensor([e.target for e in entries], dtype=torch.float64),
            "step": torch.tensor([e.step for e in entries]),
        }
        return tensors, meta

    @staticmethod
    def from_state(tensors: dict[str, Tensor], meta: dict[str, str]) -> "ReplayBuffer":
        buffer = ReplayBuffer(int(meta["capacity"]), float(meta["best_fraction"]))
        for i in range(int(meta["count"])):
            length = int(tensors["length"][i])
            entry = Entry(int(tensors["prompt"][i]), tensors["completion"][i, :length].clone(),
                          tensors["base_logps"][i, :length].clone(), tensors["behaviour_logps"][i, :length].clone(),
                          float(tensors["psi"][i]), tensors["features"][i].clone(), bool(tensors["truncated"][i]),
                          float(tensors["target"][i]), int(tensors["step"][i]))
            buffer.entries.setdefault(entry.prompt, []).append(entry)
        return buffer


def _best(kept: list[Entry], count: int) -> list[int]:
    """Indices of the `count` highest targets (the newer first among equals)."""
    order = sorted(range(len(kept)), key=lambda i: (-kept[i].target, -i))
    return order[:count]


def replay_batch(entries: list[Entry], prompt_ids: list[list[int]], group_size: int, pad_id: int,
                 device: torch.device) -> tuple[Rollouts, Tensor, Tensor]:
    """Stored completions as a step's rows (consecutive groups of `group_size`, one per prompt):
    -> rollouts, base log-probs [N, L], features [N, H]. (psi is recomputed under the run's current penalties.)"""
    prompt_rows, prompt_mask = left_pad([prompt_ids[e.prompt] for e in entries], pad_id, device)
    width = max(len(e.completion) for e in entries)
    completion = torch.full((len(entries), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(entries), width), dtype=torch.long)
    base = torch.zeros((len(entries), width), dtype=torch.float32)
    for i, e in enumerate(entries):
        completion[i, :len(e.completion)], mask[i, :len(e.completion)] = e.completion, 1
        base[i, :len(e.completion)] = e.base_logps
    rollouts = Rollouts(prompt_rows, prompt_mask, completion.to(device), mask.to(device),
                        group_ids_of(len(entries) // group_size, group_size, device),
                        torch.tensor([e.truncated for e in entries], device=device))
    features = torch.stack([e.features for e in entries]).to(device)
    return rollouts, base.to(device), features
