"""OpponentStore: the opponent's responses y' and the reference log-probs, per example.

For each training example i the store keeps the prompt x_i, the real response y_i,
lp_θt(y_i|x_i) and a pool of the opponent responses y'_i generated in the last
`history` iterations, each with lp_θt(y'_i|x_i) under the CURRENT iterate θ_t
(the official recipe scores older iterations' y' against the newest iterate too).

Host memory, with 50k prompts × 512 tokens × history 2 in mind:
- token ids are int32 arrays (`array("i")`, 4 bytes a token), never lists of Python
  ints (36 bytes a token);
- the tokens are sharded: rank r holds the prompts, real responses and opponents of
  the examples it generates (i % world == r, the rollout's round-robin shard). Every
  rank holds the small per-example metadata of all examples (lengths, statuses,
  reference log-probs), which is all that choosing a batch's pairs needs. A training
  step fetches its batch's tokens from the ranks holding them (`fetch`: two small
  collectives per step, every rank taking part), so the ranks of a node together hold
  one copy of the tokens instead of one each.

It is saved beside every checkpoint (gathered on the main process), so a resumed run
trains against exactly the opponents it had, instead of regenerating them with a
half-trained model.
"""

from __future__ import annotations

import json
import math
import os
import random
from array import array
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

STATE_FILE = "selfplay_opponents.pt"
EVAL_STATE_FILE = "selfplay_eval_opponents.pt"  # the evaluation rows' opponents (`val_set_size` / `test_datasets`)

# USABLE: trained on. IDENTICAL: y' == y, whose SPIN margin is 0 for every θ (the
# pair is skipped at its constant loss; the χ² loss keeps its real-side term).
USABLE, IDENTICAL = "ok", "identical"

assert array("i").itemsize == 4, "array('i') must hold int32 token ids"


def token_array(tokens) -> array:
    """Token ids as an int32 array (4 bytes a token)."""
    return tokens if isinstance(tokens, array) else array("i", tokens)


@dataclass(slots=True)
class Opponent:
    """One generated response y' for one example."""

    iteration: int  # the iterate θ_t that generated it
    tokens: array | None  # y' (int32), ending with an end-of-turn token unless truncated; None on a rank not holding it
    truncated: bool  # hit max_new_tokens without an end-of-turn token
    status: str  # USABLE or IDENTICAL
    ref_logp: float | None = None  # lp_θt(y'|x) under the current iterate; None = not scored (identical)
    base_logp: float | None = None  # lp_θ0(y'|x) under the starting model (only with kl_to_base > 0)
    empty: bool = False  # y' only ends the turn: a genuine sample ("say nothing"), trained on like any other
    length: int = -1  # len(tokens), also where the tokens are held by another rank

    def __post_init__(self):
        if self.tokens is not None:
            self.tokens = token_array(self.tokens)
            self.length = len(self.tokens)

    def without_tokens(self) -> Opponent:
        return replace(self, tokens=None)


def classify(tokens, real) -> str:
    return IDENTICAL if list(tokens) == list(real) else USABLE


def is_empty(tokens, eos_token_ids: set[int]) -> bool:
    return all(t in eos_token_ids for t in tokens)


@dataclass
class Pair:
    """One (x, y, y') training pair as the trainer consumes it."""

    example: int
    opponent: Opponent


def pairing_rng(seed: int, step: int, examples: list[int], evaluation: bool = False) -> random.Random:
    """The RNG of one batch's fictitious-play draws (`opponent_mixture: uniform`), keyed by
    (seed, optimizer step, the batch's examples, training or evaluation), so a resumed run
    draws the same opponents. The key holds ints only: `hash` of ints and tuples of ints is
    the same in every process, a str's is salted per process (PYTHONHASHSEED)."""
    key = (seed, step, tuple(examples))
    return random.Random(hash((_EVALUATION_DRAWS, *key) if evaluation else key))


_EVALUATION_DRAWS = 1  # marks the evaluation rows' keys (a 4-tuple, never a training key)


@dataclass
class PairSelection:
    """The training pairs of a batch of examples.

    `slots` counts the pairs the objective averages over (every pooled opponent with
    `latest`, one per example with `uniform`); `identical[b]` is how many of example
    b's slots hold a y' identical to y (not in `pairs`). `rows[k]` is the batch row of
    pair k's example, `candidates[b]` row b's slots; `counts` are the metrics' counts
    over the whole batch, `counts_over` over some of its rows.
    """

    pairs: list[Pair]
    identical: list[int]
    slots: int
    counts: dict[str, float]
    rows: list[int]
    candidates: list[int]
    iteration: int

    def counts_over(self, counted: list[bool]) -> dict[str, float]:
        """`counts` over the batch rows b with `counted[b]`."""
        pairs = [p for p, row in zip(self.pairs, self.rows) if counted[row]]
        return _pair_counts(
            pairs,
            [n for n, c in zip(self.identical, counted) if c],
            sum(n for n, c in zip(self.candidates, counted) if c),
            self.iteration,
        )


def _pair_counts(pairs: list[Pair], identical: list[int], slots: int, iteration: int) -> dict[str, float]:
    return {
        "candidates": slots,
        "identical": sum(identical),
        "empty": sum(p.opponent.empty for p in pairs),
        "pairs": len(pairs),
        "truncated": sum(p.opponent.truncated for p in pairs),
        "generated_tokens": sum(p.opponent.length for p in pairs),
        "age": sum(iteration - p.opponent.iteration for p in pairs),
    }


class OpponentStore:
    def __init__(self, prompts, reals, history: int = 1, *, rank: int = 0, world: int = 1):
        """`prompts`, `reals`: token ids of every example, or None for the examples another
        rank holds (rank r holds i % world == r); `world` > 1 needs torch.distributed."""
        if len(prompts) != len(reals):
            raise ValueError("prompts and reals must have the same length")
        self.rank, self.world = rank, world
        self.history = history
        self.iteration = -1  # the iteration whose opponents are loaded; -1 = none yet
        n = len(prompts)
        # Token ids of the examples this rank holds (None elsewhere), and everyone's lengths.
        self.prompts: list[array | None] = [None] * n
        self.reals: list[array | None] = [None] * n
        self.prompt_lengths = array("i", [0] * n)
        self.real_lengths = array("i", [0] * n)
        self.real_last_tokens = array("i", [0] * n)  # for the missing end-of-turn warning
        for i, (prompt, real) in enumerate(zip(prompts, reals)):
            self.add_example(i, prompt, real)
        self.ref_logp_real: list[float | None] = [None] * n
        self.base_logp_real: list[float | None] = [None] * n  # lp_θ0(y|x), kl_to_base only
        self.pool: list[list[Opponent]] = [[] for _ in range(n)]

    @classmethod
    def from_examples(cls, examples, num_examples: int, history: int = 1, *, rank: int = 0, world: int = 1):
        """A store from (index, prompt, real) rows streamed in order, keeping this rank's tokens only."""
        store = cls([None] * num_examples, [None] * num_examples, history, rank=rank, world=world)
        for i, prompt, real in examples:
            store.add_example(i, prompt, real)
        return store

    def add_example(self, i: int, prompt, real) -> None:
        if prompt is None:
            return
        self.prompt_lengths[i], self.real_lengths[i] = len(prompt), len(real)
        self.real_last_tokens[i] = real[-1] if len(real) else -1
        if self.holds(i):
            self.prompts[i], self.reals[i] = token_array(prompt), token_array(real)

    def __len__(self) -> int:
        return len(self.prompts)

    def holds(self, example: int) -> bool:
        """Whether this rank holds the tokens of `example`."""
        return example % self.world == self.rank

    def shard(self) -> list[int]:
        """The examples this rank holds (and generates)."""
        return list(range(self.rank, len(self), self.world))

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
        """Install a fully scored iteration (every rank calls it with the same metadata;
        the tokens of the examples it holds are in `pools`, the others' may be None)."""
        if len(ref_logp_real) != len(self) or len(pools) != len(self):
            raise ValueError("a refresh must cover every example")
        self.iteration = iteration
        self.ref_logp_real = list(ref_logp_real)
        self.base_logp_real = list(base_logp_real) if base_logp_real is not None else [None] * len(self)
        self.pool = []
        for i, pool in enumerate(pools):
            if self.holds(i) and any(o.tokens is None for o in pool):
                raise ValueError(f"the tokens of example {i}'s opponents belong on rank {self.rank}")
            kept = pool if self.holds(i) else [o if o.tokens is None else o.without_tokens() for o in pool]
            self.pool.append(sorted(kept, key=lambda o: o.iteration))

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
        paired but counted per example (`PairSelection.identical`). Metadata only:
        every rank can choose any example's pairs.
        """
        pairs, identical, candidates, rows = [], [], [], []
        for row, i in enumerate(examples):
            pool = self.pool[i]
            if mixture == "uniform" and pool:
                pool = [(rng or random).choice(pool)]
            candidates.append(len(pool))
            identical.append(sum(o.status == IDENTICAL for o in pool))
            usable = [Pair(i, o) for o in pool if o.status == USABLE]
            pairs.extend(usable)
            rows.extend([row] * len(usable))
        slots = sum(candidates)
        counts = _pair_counts(pairs, identical, slots, self.iteration)
        return PairSelection(pairs, identical, slots, counts, rows, candidates, self.iteration)

    def fetch(self, examples: list[int], pairs: list[Pair]) -> tuple[list[array], list[array], list[array]]:
        """Token ids of a batch: the examples' prompts and real responses, and each pair's y'.

        With several ranks this is a collective (every rank calls it at every training
        step): the ranks exchange which examples they need, then the holders send them."""
        wanted = (list(examples), [(p.example, p.opponent.iteration) for p in pairs])
        if self.world == 1:
            found = self._tokens_for([wanted])
        else:
            requests = _all_gather(wanted, self.world)
            found = {}
            for reply in _all_gather(self._tokens_for(requests), self.world):
                found.update(reply)
        return (
            [found["x", i] for i in examples],
            [found["y", i] for i in examples],
            [found["o", i, iteration] for i, iteration in wanted[1]],
        )

    def _tokens_for(self, requests) -> dict:
        """The requested tokens this rank holds."""
        found = {}
        for examples, opponents in requests:
            for i in examples:
                if self.holds(i):
                    found["x", i], found["y", i] = self.prompts[i], self.reals[i]
            for i, iteration in opponents:
                if self.holds(i):
                    found["o", i, iteration] = next(o.tokens for o in self.pool[i] if o.iteration == iteration)
        return found

    def summary(self, iteration: int) -> dict[str, float]:
        """Counts over the opponents generated at `iteration` (metadata only)."""
        new = [o for pool in self.pool for o in pool if o.iteration == iteration]
        n = max(len(new), 1)
        return {
            "opponents": len(new),
            "length": sum(o.length for o in new) / n,
            "truncated": sum(o.truncated for o in new) / n,
            "identical": sum(o.status == IDENTICAL for o in new) / n,
            "empty": sum(o.empty for o in new) / n,
        }

    def nbytes(self) -> int:
        """Host bytes of the token ids this rank holds (the store's bulk)."""
        arrays = [a for a in self.prompts + self.reals if a is not None]
        arrays += [o.tokens for pool in self.pool for o in pool if o.tokens is not None]
        return sum(a.itemsize * len(a) for a in arrays)

    # -- persistence -----------------------------------------------------------

    def state_dict(self) -> dict | None:
        """The whole store as tensors and lists (loadable with `weights_only=True`). With
        several ranks a collective: the main process (rank 0) gets it, the others None."""
        held = {i: [o.tokens for o in self.pool[i]] for i in self.shard()}
        if self.world > 1:
            parts = _gather_to_main(held, self.world)
            if parts is None:
                return None
            held = {i: tokens for part in parts for i, tokens in part.items()}
        tokens = _concat(t for i in range(len(self)) for t in held.get(i, []))
        all_opponents = [o for pool in self.pool for o in pool]

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype)

        return {
            "iteration": self.iteration,
            "history": self.history,
            "num_examples": len(self),
            "ref_logp_real": self.ref_logp_real,
            "base_logp_real": self.base_logp_real,
            "pool_sizes": column([len(pool) for pool in self.pool], torch.int32),
            "opponents": {
                "iteration": column([o.iteration for o in all_opponents], torch.int32),
                "length": column([o.length for o in all_opponents], torch.int64),
                "truncated": column([o.truncated for o in all_opponents], torch.bool),
                "identical": column([o.status == IDENTICAL for o in all_opponents], torch.bool),
                "empty": column([o.empty for o in all_opponents], torch.bool),
                "ref_logp": column([_nan(o.ref_logp) for o in all_opponents], torch.float64),
                "base_logp": column([_nan(o.base_logp) for o in all_opponents], torch.float64),
                "tokens": torch.frombuffer(tokens, dtype=torch.int32) if tokens else torch.zeros(0, dtype=torch.int32),
            },
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
        columns = {k: v.tolist() if k != "tokens" else v for k, v in state["opponents"].items()}
        tokens = columns["tokens"]
        self.pool = []
        k = start = 0
        for i, size in enumerate(state["pool_sizes"].tolist()):
            pool = []
            for _ in range(size):
                length = columns["length"][k]
                pool.append(
                    Opponent(
                        columns["iteration"][k],
                        array("i", tokens[start : start + length].numpy().tobytes()) if self.holds(i) else None,
                        columns["truncated"][k],
                        IDENTICAL if columns["identical"][k] else USABLE,
                        _none(columns["ref_logp"][k]),
                        _none(columns["base_logp"][k]),
                        columns["empty"][k],
                        length,
                    )
                )
                k += 1
                start += length
            self.pool.append(pool)

    def save(self, directory: str, filename: str = STATE_FILE) -> str | None:
        """Write the store into `directory` atomically (on the main process; with several
        ranks every rank must call it); returns the file path there."""
        state = self.state_dict()
        if state is None:
            return None
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, filename)
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def load(self, directory: str, filename: str = STATE_FILE) -> bool:
        """Load the store saved in `directory`; False when there is none. The file is
        memory-mapped: each rank copies only the tokens it holds."""
        path = os.path.join(directory, filename)
        if not os.path.exists(path):
            return False
        self.load_state_dict(torch.load(path, weights_only=True, mmap=True))
        return True

    def export_jsonl(self, path: str, decode, block: int = 4096) -> None:
        """Write this iteration's pairs as jsonl (atomically, on the main process; with
        several ranks every rank must call it: the tokens are gathered block by block).
        One line per example.

        Keys: prompt, real, generated (and its token ids, generated_ids), ref_logp_real,
        ref_logp_generated (under θ_t),
        truncated, status (ok / identical) and empty (y' only ends the turn) of the
        newest opponent, and
        with kl_to_base > 0 base_logp_real / base_logp_generated (under θ_0).
        """
        main = self.rank == 0
        if main:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") if main else nullcontext() as handle:
            for start in range(0, len(self), block):
                rows = {}
                for i in range(start, min(start + block, len(self))):
                    newest = [o for o in self.pool[i] if o.iteration == self.iteration]
                    if newest and self.holds(i):
                        rows[i] = (self.prompts[i], self.reals[i], newest[-1].tokens)
                if self.world > 1:
                    parts = _gather_to_main(rows, self.world)
                    rows = {i: row for part in parts or [] for i, row in part.items()}
                for i in sorted(rows) if main else ():
                    handle.write(json.dumps(self._export_row(i, *rows[i], decode), ensure_ascii=False) + "\n")
        if main:
            os.replace(path + ".tmp", path)

    def _export_row(self, i: int, prompt, real, generated, decode) -> dict:
        opponent = [o for o in self.pool[i] if o.iteration == self.iteration][-1]
        row = {
            "prompt": decode(list(prompt)),
            "real": decode(list(real)),
            "generated": decode(list(generated)),
            # the exact tokens: decoding is lossy for samples that end mid-character
            "generated_ids": list(generated),
            "ref_logp_real": self.ref_logp_real[i],
            "ref_logp_generated": opponent.ref_logp,
            "truncated": opponent.truncated,
            "status": opponent.status,
            "empty": opponent.empty,
        }
        if self.has_base:
            row["base_logp_real"] = self.base_logp_real[i]
            row["base_logp_generated"] = opponent.base_logp
        return row


def _concat(arrays) -> array:
    out = array("i")
    for a in arrays:
        out.extend(a)
    return out


def _nan(value):
    return math.nan if value is None else value


def _none(value):
    return None if math.isnan(value) else value


def _all_gather(obj, world: int) -> list:
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _gather_to_main(obj, world: int) -> list | None:
    """Every rank's `obj` on rank 0 (a list), None on the others."""
    out = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
