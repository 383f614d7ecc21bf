"""OpponentStore: the opponent's responses y' and the reference log-probs, per example.

One store lives in the trainer (main process) and is identical on every rank.
For each training example i it keeps the prompt x_i, the real response y_i,
lp_θt(y_i|x_i) and a pool of the opponent responses y'_i generated in the last
`history` iterations, each with lp_θt(y'_i|x_i) under the CURRENT iterate θ_t
(the official recipe scores older iterations' y' against the newest iterate too).

It is saved beside every checkpoint, so a resumed run trains against exactly the
opponents it had, instead of regenerating them with a half-trained model.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass

import torch

STATE_FILE = "selfplay_opponents.pt"
EVAL_STATE_FILE = "selfplay_eval_opponents.pt"  # the evaluation rows' opponents (`val_set_size` / `test_datasets`)

# USABLE: trained on. IDENTICAL: y' == y, whose SPIN margin is 0 for every θ (the
# pair is skipped at its constant loss; the χ² loss keeps its real-side term).
USABLE, IDENTICAL = "ok", "identical"


@dataclass
class Opponent:
    """One generated response y' for one example."""

    iteration: int  # the iterate θ_t that generated it
    tokens: list[int]  # y', ending with an end-of-turn token unless truncated
    truncated: bool  # hit max_new_tokens without an end-of-turn token
    status: str  # USABLE or IDENTICAL
    ref_logp: float | None = None  # lp_θt(y'|x) under the current iterate; None = not scored (identical)
    base_logp: float | None = None  # lp_θ0(y'|x) under the starting model (only with kl_to_base > 0)
    empty: bool = False  # y' only ends the turn: a genuine sample ("say nothing"), trained on like any other


def classify(tokens: list[int], real: list[int]) -> str:
    return IDENTICAL if tokens == real else USABLE


def is_empty(tokens: list[int], eos_token_ids: set[int]) -> bool:
    return all(t in eos_token_ids for t in tokens)


@dataclass
class Pair:
    """One (x, y, y') training pair as the trainer consumes it."""

    example: int
    opponent: Opponent


@dataclass
class PairSelection:
    """The training pairs of a batch of examples.

    `slots` counts the pairs the objective averages over (every pooled opponent with
    `latest`, one per example with `uniform`); `identical[b]` is how many of example
    b's slots hold a y' identical to y (not in `pairs`).
    """

    pairs: list[Pair]
    identical: list[int]
    slots: int
    counts: dict[str, float]


class OpponentStore:
    def __init__(self, prompts: list[list[int]], reals: list[list[int]], history: int = 1):
        if len(prompts) != len(reals):
            raise ValueError("prompts and reals must have the same length")
        self.prompts = prompts
        self.reals = reals
        self.history = history
        self.iteration = -1  # the iteration whose opponents are loaded; -1 = none yet
        self.ref_logp_real: list[float | None] = [None] * len(prompts)
        self.base_logp_real: list[float | None] = [None] * len(prompts)  # lp_θ0(y|x), kl_to_base only
        self.pool: list[list[Opponent]] = [[] for _ in prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    # -- refresh ---------------------------------------------------------------

    def retained(self, example: int, new_iteration: int) -> list[Opponent]:
        """Older opponents that stay in the pool once `new_iteration`'s are added."""
        keep = [o for o in self.pool[example] if o.iteration > new_iteration - self.history]
        return [o for o in keep if o.iteration != new_iteration]

    def set_iteration(
        self,
        iteration: int,
        ref_logp_real: list[float],
        pools: list[list[Opponent]],
        base_logp_real: list[float] | None = None,
    ) -> None:
        """Install a fully scored iteration (every rank calls it with the same data)."""
        if len(ref_logp_real) != len(self) or len(pools) != len(self):
            raise ValueError("a refresh must cover every example")
        self.iteration = iteration
        self.ref_logp_real = list(ref_logp_real)
        self.base_logp_real = list(base_logp_real) if base_logp_real is not None else [None] * len(self)
        self.pool = [sorted(p, key=lambda o: o.iteration) for p in pools]

    # -- training --------------------------------------------------------------

    @property
    def has_base(self) -> bool:
        """Whether starting-model log-probs were stored (kl_to_base > 0)."""
        return any(lp is not None for lp in self.base_logp_real)

    def pairs(self, examples: list[int], mixture: str = "latest", rng: random.Random | None = None) -> PairSelection:
        """Training pairs for a batch of example indices, and counts for metrics.

        mixture "latest": each example is paired with every opponent in its pool
        (history h: up to h pairs sharing one forward of the real response).
        mixture "uniform" (fictitious play): one opponent per example, drawn
        uniformly from its whole pool with `rng`. Opponents identical to y are not
        paired but counted per example (`PairSelection.identical`).
        """
        pairs, identical, slots = [], [], 0
        for i in examples:
            pool = self.pool[i]
            if mixture == "uniform" and pool:
                pool = [(rng or random).choice(pool)]
            slots += len(pool)
            identical.append(sum(o.status == IDENTICAL for o in pool))
            pairs.extend(Pair(i, o) for o in pool if o.status == USABLE)
        counts = {
            "candidates": slots,
            "identical": sum(identical),
            "empty": sum(p.opponent.empty for p in pairs),
            "pairs": len(pairs),
            "truncated": sum(p.opponent.truncated for p in pairs),
            "generated_tokens": sum(len(p.opponent.tokens) for p in pairs),
            "age": sum(self.iteration - p.opponent.iteration for p in pairs),
        }
        return PairSelection(pairs, identical, slots, counts)

    # -- persistence -----------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "history": self.history,
            "num_examples": len(self),
            "ref_logp_real": self.ref_logp_real,
            "base_logp_real": self.base_logp_real,
            "pool": [[asdict(o) for o in p] for p in self.pool],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != len(self):
            raise ValueError(
                f"the checkpoint's opponent store has {state['num_examples']} examples but "
                f"the training dataset has {len(self)}: resume with the same datasets and "
                "`dataset_prepared_path` as the interrupted run."
            )
        self.iteration = state["iteration"]
        self.ref_logp_real = list(state["ref_logp_real"])
        self.base_logp_real = list(state.get("base_logp_real") or [None] * len(self))
        self.pool = [[Opponent(**o) for o in p] for p in state["pool"]]

    def save(self, directory: str, filename: str = STATE_FILE) -> str:
        """Write the store into `directory` atomically; returns the file path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, filename)
        torch.save(self.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def load(self, directory: str, filename: str = STATE_FILE) -> bool:
        """Load the store saved in `directory`; False when there is none."""
        path = os.path.join(directory, filename)
        if not os.path.exists(path):
            return False
        self.load_state_dict(torch.load(path, weights_only=True))
        return True

    def export_jsonl(self, path: str, decode) -> None:
        """Write this iteration's pairs as jsonl (atomically), one line per example.

        Keys: prompt, real, generated (and its token ids, generated_ids), ref_logp_real,
        ref_logp_generated (under θ_t),
        truncated, status (ok / identical) and empty (y' only ends the turn) of the
        newest opponent, and
        with kl_to_base > 0 base_logp_real / base_logp_generated (under θ_0).
        """
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for i in range(len(self)):
                newest = [o for o in self.pool[i] if o.iteration == self.iteration]
                if not newest:
                    continue
                opponent = newest[-1]
                row = {
                    "prompt": decode(self.prompts[i]),
                    "real": decode(self.reals[i]),
                    "generated": decode(opponent.tokens),
                    # the exact tokens: decoding is lossy for samples that end mid-character
                    "generated_ids": list(opponent.tokens),
                    "ref_logp_real": self.ref_logp_real[i],
                    "ref_logp_generated": opponent.ref_logp,
                    "truncated": opponent.truncated,
                    "status": opponent.status,
                    "empty": opponent.empty,
                }
                if self.has_base:
                    row["base_logp_real"] = self.base_logp_real[i]
                    row["base_logp_generated"] = opponent.base_logp
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
