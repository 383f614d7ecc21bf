"""SPIN pieces without a model: the opponent store (spin/store.py), the [real; generated]
rows of a step on literal tokens (spin/batch.py), and the iteration of an epoch (spin/trainer.py)."""

import math
import os
import subprocess
import sys

import pytest

from axolotl_selfplay.spin.batch import pair_batch
from axolotl_selfplay.spin.store import (
    IDENTICAL,
    USABLE,
    Opponent,
    OpponentStore,
    classify,
    is_empty,
    pairing_rng,
)
from axolotl_selfplay.spin.trainer import iteration_of_epoch

M = -100  # masked label
EOS = 2


def test_classify_edge_cases():
    assert classify([7, 8, EOS], [7, 8, EOS]) == IDENTICAL
    # a y' that only ends the turn is a genuine sample of the policy: trained on, flagged empty
    assert classify([EOS], [7, EOS]) == USABLE and is_empty([EOS], {EOS})
    assert classify([7, 9], [7, EOS]) == USABLE and not is_empty([7, 9], {EOS})


def _store(history=1):
    return OpponentStore(prompts=[[1, 10], [1, 11, 12], [1, 13]], reals=[[20, EOS], [21, 22, EOS], [23, EOS]], history=history)


def test_pairs_skip_and_count_identical_opponents():
    store = _store()
    store.set_iteration(
        0,
        [-1.0, -2.0, -3.0],
        [
            [Opponent(0, [30, EOS], False, USABLE, -4.0)],
            [Opponent(0, [21, 22, EOS], False, IDENTICAL)],
            [Opponent(0, [31, 32], True, USABLE, -5.0)],
        ],
    )
    selection = store.pairs([0, 1, 2])
    assert [p.example for p in selection.pairs] == [0, 2]
    assert selection.identical == [0, 1, 0] and selection.slots == 3
    assert selection.counts == {
        "candidates": 3,
        "identical": 1,
        "empty": 0,
        "pairs": 2,
        "truncated": 1,
        "generated_tokens": 4,
        "age": 0,
    }


def test_pair_batch_literal_tokens():
    """Rows: the 2 real examples first, then one row per usable opponent."""
    store = _store()
    store.set_iteration(
        0,
        [-1.0, -2.0, -3.0],
        [[Opponent(0, [30, EOS], False, USABLE, -4.0)], [], [Opponent(0, [31, 32, 33], True, USABLE, -5.0)]],
    )
    pairs = store.pairs([2, 0]).pairs
    batch = pair_batch(store, [2, 0], pairs, pad_token_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 13, 23, EOS, 0],
        [1, 10, 20, EOS, 0],
        [1, 13, 31, 32, 33],
        [1, 10, 30, EOS, 0],
    ]
    assert batch["labels"].tolist() == [
        [M, M, 23, EOS, M],
        [M, M, 20, EOS, M],
        [M, M, 31, 32, 33],
        [M, M, 30, EOS, M],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["real_row"].tolist() == [0, 1]  # pair for example 2 -> real row 0, example 0 -> row 1
    assert batch["ref_real_logps"].tolist() == [-3.0, -1.0]  # per real row (examples 2, 0)
    assert batch["ref_generated_logps"].tolist() == [-5.0, -4.0]  # per pair


def test_history_keeps_last_h_iterations():
    store = _store(history=2)
    o = lambda it: Opponent(it, [40 + it, EOS], False, USABLE, -1.0)
    store.set_iteration(0, [0.0] * 3, [[o(0)] for _ in range(3)])
    assert store.retained(0, 1) == [o(0)]
    store.set_iteration(1, [0.0] * 3, [store.retained(i, 1) + [o(1)] for i in range(3)])
    assert [x.iteration for x in store.retained(0, 2)] == [1]  # iteration 0 ages out with h = 2
    selection = store.pairs([0])
    assert [p.opponent.iteration for p in selection.pairs] == [0, 1] and selection.counts["age"] == 1


def test_store_save_load_roundtrip(tmp_path):
    store = _store(history=2)
    store.set_iteration(
        3,
        [-1.5, -2.5, math.inf * -1],
        [[Opponent(2, [30], True, USABLE, -4.25), Opponent(3, [31, EOS], False, USABLE, -2.0)], [Opponent(3, [EOS], False, USABLE, -0.5, empty=True)], []],
    )
    store.save(str(tmp_path))
    loaded = _store(history=2)
    assert loaded.load(str(tmp_path))
    assert loaded.iteration == 3
    assert loaded.ref_logp_real == store.ref_logp_real
    assert loaded.pool == store.pool
    assert not _store().load(str(tmp_path / "missing"))


def test_store_load_rejects_other_dataset(tmp_path):
    _store().save(str(tmp_path))
    other = OpponentStore([[1]], [[EOS]])
    with pytest.raises(ValueError, match="same datasets"):
        other.load(str(tmp_path))


def test_export_jsonl(tmp_path):
    import json

    store = _store()
    store.set_iteration(
        0,
        [-1.0, -2.0, -3.0],
        [[Opponent(0, [30, EOS], False, USABLE, -4.0)], [Opponent(0, [21, 22, EOS], False, IDENTICAL)], []],
    )
    path = tmp_path / "selfplay" / "iter_0.jsonl"
    store.export_jsonl(str(path), lambda ids: " ".join(map(str, ids)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"prompt": "1 10", "real": "20 2", "generated": "30 2", "generated_ids": [30, EOS], "ref_logp_real": -1.0,
                       "ref_logp_generated": -4.0, "truncated": False, "status": "ok", "empty": False}
    assert rows[1]["status"] == "identical" and len(rows) == 2
    assert not (tmp_path / "selfplay" / "iter_0.jsonl.tmp").exists()


@pytest.mark.parametrize("epoch, e, expected", [(0.0, 1, 0), (1.0, 1, 1), (0.9999999, 1, 1), (1.5, 2, 0), (2.0, 2, 1), (3.5, 2, 1)])
def test_iteration_of_epoch(epoch, e, expected):
    assert iteration_of_epoch(epoch, e) == expected


def test_uniform_mixture_draws_every_stored_iterate():
    """Fictitious play: one opponent per example per step, uniform over the pool of
    the last h = 3 iterations; over 3000 seeded draws each iterate is drawn ~1/3 of the time."""
    import random
    from collections import Counter

    store = _store(history=3)
    pool = [Opponent(it, [40 + it, EOS], False, USABLE, -1.0) for it in range(3)]
    store.set_iteration(2, [0.0] * 3, [list(pool) for _ in range(3)])
    rng = random.Random(0)
    drawn = Counter()
    for _ in range(1000):
        selection = store.pairs([0, 1, 2], "uniform", rng)
        assert len(selection.pairs) == 3 and selection.slots == 3  # one draw per example
        drawn.update(p.opponent.iteration for p in selection.pairs)
    assert set(drawn) == {0, 1, 2}
    assert all(900 < n < 1100 for n in drawn.values()), drawn
    again = store.pairs([0, 1, 2], "uniform", random.Random(5)).pairs
    assert again == store.pairs([0, 1, 2], "uniform", random.Random(5)).pairs  # seeded
    latest = store.pairs([0], "latest")
    assert [p.opponent.iteration for p in latest.pairs] == [0, 1, 2] and latest.slots == 3


def test_uniform_mixture_draws_from_the_whole_pool():
    """Fictitious play draws uniformly from every pooled opponent, an identical one
    included (an identical draw is a slot without a pair, not a redraw): drawing
    only among the others would over-weight them against the uniform mixture."""
    import random

    store = _store(history=2)
    store.set_iteration(
        1,
        [0.0] * 3,
        [[Opponent(0, [20, EOS], False, IDENTICAL), Opponent(1, [41, EOS], False, USABLE, -1.0)], [], []],
    )
    drawn_identical = 0
    for seed in range(200):
        selection = store.pairs([0], "uniform", random.Random(seed))
        assert selection.slots == 1 and len(selection.pairs) + selection.identical[0] == 1
        drawn_identical += selection.identical[0]
    assert 70 < drawn_identical < 130


def test_base_logps_travel_with_the_batch_and_the_checkpoint(tmp_path):
    store = _store()
    store.set_iteration(0, [-1.0, -2.0, -3.0], [[Opponent(0, [30, EOS], False, USABLE, -4.0, -4.5)], [], []], [-1.5, -2.5, -3.5])
    pairs = store.pairs([0]).pairs
    batch = pair_batch(store, [0], pairs, pad_token_id=0)
    assert batch["base_real_logps"].tolist() == [-1.5] and batch["base_generated_logps"].tolist() == [-4.5]
    store.save(str(tmp_path))
    loaded = _store()
    loaded.load(str(tmp_path))
    assert loaded.base_logp_real == [-1.5, -2.5, -3.5] and loaded.pool[0][0].base_logp == -4.5
    plain = _store()
    plain.set_iteration(0, [-1.0, -2.0, -3.0], [[Opponent(0, [30, EOS], False, USABLE, -4.0)], [], []])
    assert "base_real_logps" not in pair_batch(plain, [0], plain.pairs([0]).pairs, pad_token_id=0)


def test_counts_over_some_rows_of_the_batch():
    """Evaluation leaves accelerate's repeated rows out of the pair metrics: the counts over the
    other rows are those of a batch without them, even when an example is in the batch twice."""
    store = _store(history=2)
    store.set_iteration(
        1,
        [-1.0, -2.0, -3.0],
        [
            [Opponent(0, [30, EOS], False, USABLE, -4.0), Opponent(1, [31, 32], True, USABLE, -4.5)],
            [Opponent(1, [21, 22, EOS], False, IDENTICAL)],
            [Opponent(1, [EOS], False, USABLE, -5.0, empty=True)],
        ],
    )
    batch = store.pairs([0, 1, 2, 0])  # row 3 repeats example 0, as accelerate pads the last batch
    assert batch.rows == [0, 0, 2, 3, 3] and batch.candidates == [2, 1, 1, 2]
    assert batch.counts_over([True] * 4) == batch.counts
    assert batch.counts_over([True, True, True, False]) == store.pairs([0, 1, 2]).counts
    assert batch.counts_over([False, True, False, False]) == store.pairs([1]).counts


def test_pairing_draws_are_the_same_in_every_process():
    """Fictitious play's draws, training and evaluation, are keyed so that a resumed run (a new
    process, with its own PYTHONHASHSEED salting `hash` of strings) draws the same opponents."""
    code = (
        "from axolotl_selfplay.spin.store import pairing_rng; "
        "print([pairing_rng(42, 7, [3, 9, 4], evaluation=e).random() for e in (False, True)])"
    )
    draws = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip().splitlines()[-1]
        for seed in ("1", "2")
    }
    assert len(draws) == 1, draws
    train, evaluation = eval(draws.pop())
    assert train != evaluation  # the evaluation rows draw from a stream of their own
    assert pairing_rng(42, 7, [3, 9, 4]).random() == train
    assert pairing_rng(42, 8, [3, 9, 4]).random() != train  # a new step, new draws
