"""Prompt/response split, the opponent store, and the [real; generated] join on literal tokens."""

import math

import pytest
import torch

from axolotl_selfplay.collator import INDEX_COLUMN, SelfPlayCollator, pair_batch
from axolotl_selfplay.data import (
    NoAssistantTurnError,
    build_examples,
    split_prompt_response,
)
from axolotl_selfplay.generation import cut_at_eos
from axolotl_selfplay.opponent import (
    IDENTICAL,
    USABLE,
    Opponent,
    OpponentStore,
    classify,
    is_empty,
)
from axolotl_selfplay.trainers.spin import iteration_of_epoch

M = -100  # masked label
EOS = 2


def test_split_takes_last_labelled_span_and_drops_unlabelled_tail():
    # user turn (masked), assistant turn 1 (labelled), user turn 2 (masked), assistant turn 2, "\n" tail
    input_ids = [1, 10, 11, 20, 21, EOS, 12, 13, 30, 31, EOS, 99]
    labels = [M, M, M, 20, 21, EOS, M, M, 30, 31, EOS, M]
    prompt, response = split_prompt_response(input_ids, labels)
    assert prompt == [1, 10, 11, 20, 21, EOS, 12, 13]  # earlier assistant turn stays in the prompt
    assert response == [30, 31, EOS]


def test_split_extends_the_response_to_an_unlabelled_end_of_turn():
    # Gemma without `eot_tokens`: <end_of_turn> (7) follows the labelled content unlabelled
    # (Axolotl only labels the EOS token, which the template never renders); "\n" (99) after it
    END_OF_TURN = 7
    input_ids = [1, 10, END_OF_TURN, 99, 20, 21, END_OF_TURN, 99]
    labels = [M, M, M, M, 20, 21, M, M]
    assert split_prompt_response(input_ids, labels) == ([1, 10, END_OF_TURN, 99], [20, 21])  # the old split
    prompt, response = split_prompt_response(input_ids, labels, {EOS, END_OF_TURN})
    assert (prompt, response) == ([1, 10, END_OF_TURN, 99], [20, 21, END_OF_TURN])


def test_split_joins_a_conversation_final_eos_to_its_turn():
    # Phi-3: "<|assistant|>\n{answer}<|end|>\n<|endoftext|>" with `train_on_eos: turn` labels the
    # answer and the final EOS, not <|end|> (8) nor "\n" (99); the lone EOS span must not
    # become y (the whole answer would then be part of the prompt)
    END = 8
    input_ids = [1, 10, END, 99, 20, 21, END, 99, EOS]
    labels = [M, M, M, M, 20, 21, M, M, EOS]
    assert split_prompt_response(input_ids, labels)[1] == [EOS]  # the old split
    prompt, response = split_prompt_response(input_ids, labels, {EOS, END})
    assert (prompt, response) == ([1, 10, END, 99], [20, 21, END])  # y ends where generation stops
    # with `eot_tokens: [<|end|>]` the turn's <|end|> is labelled too: same split
    labels_eot = [M, M, M, M, 20, 21, END, M, EOS]
    assert split_prompt_response(input_ids, labels_eot, {EOS, END}) == (prompt, response)
    # an earlier assistant turn far before a lone EOS is not joined
    far = [1, 20, END, 99, 11, 12, 13, 14, EOS]
    assert split_prompt_response(far, [M, 20, END, M, M, M, M, M, EOS], {EOS, END})[1] == [EOS]


def test_split_without_labels_raises():
    with pytest.raises(NoAssistantTurnError):
        split_prompt_response([1, 2, 3], [M, M, M])


def test_build_examples_names_the_row():
    from datasets import Dataset

    good = {"input_ids": [[1, 5, EOS]], "labels": [[M, 5, EOS]]}
    assert build_examples(Dataset.from_dict(good)) == ([[1]], [[5, EOS]])
    bad = {"input_ids": [[1, 5, EOS], [1, 5]], "labels": [[M, 5, EOS], [M, M]]}
    with pytest.raises(NoAssistantTurnError, match="training row 1"):
        build_examples(Dataset.from_dict(bad))
    with pytest.raises(NoAssistantTurnError, match="no prompt"):
        build_examples({"input_ids": [[5, EOS]], "labels": [[5, EOS]]})


def test_classify_edge_cases():
    assert classify([7, 8, EOS], [7, 8, EOS]) == IDENTICAL
    # a y' that only ends the turn is a genuine sample of the policy: trained on, flagged empty
    assert classify([EOS], [7, EOS]) == USABLE and is_empty([EOS], {EOS})
    assert classify([7, 9], [7, EOS]) == USABLE and not is_empty([7, 9], {EOS})


def test_cut_at_eos():
    assert cut_at_eos([5, 6, EOS, 0, 0], {EOS}) == ([5, 6, EOS], False)
    assert cut_at_eos([5, 6, 7], {EOS}) == ([5, 6, 7], True)  # truncated: kept, no EOS appended
    assert cut_at_eos([5, 0, 7], {EOS}) == ([5, 0, 7], True)  # a generated pad id is content
    assert cut_at_eos([5, 3, 7], {EOS, 3}) == ([5, 3], False)


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


def test_collator_passes_only_indices():
    batch = SelfPlayCollator(tokenizer=None, padding=True, pad_to_multiple_of=64)(
        [{"input_ids": [1, 2], "labels": [M, 2], INDEX_COLUMN: 5}, {"input_ids": [3], "labels": [3], INDEX_COLUMN: 0}]
    )
    assert set(batch) == {INDEX_COLUMN}
    assert batch[INDEX_COLUMN].tolist() == [5, 0]
    with pytest.raises(KeyError, match=INDEX_COLUMN):
        SelfPlayCollator()([{"input_ids": [1]}])


@pytest.mark.parametrize("epoch, e, expected", [(0.0, 1, 0), (1.0, 1, 1), (0.9999999, 1, 1), (1.5, 2, 0), (2.0, 2, 1), (3.5, 2, 1)])
def test_iteration_of_epoch(epoch, e, expected):
    assert iteration_of_epoch(epoch, e) == expected


def test_generation_is_batch_invariant_and_seeded(tiny_model_dir):
    """Length-sorted left-padded batches give the same greedy output as one prompt at a
    time, in the caller's order; sampling with the same seed repeats exactly and
    leaves the global RNG untouched."""
    from transformers import AutoModelForCausalLM

    from axolotl_selfplay.generation import generate_responses, score_responses
    from axolotl_selfplay.sampling import SamplingSpec

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts = [[1, 40, 41, 42, 43, 44], [1, 45], [1, 46, 47, 48]]
    kwargs = dict(pad_token_id=0, eos_token_ids={EOS}, seed=7)
    greedy, sampled = SamplingSpec.greedy(6), SamplingSpec(max_new_tokens=6)
    batched = generate_responses(model, prompts, spec=greedy, batch_size=3, **kwargs)
    single = [generate_responses(model, [p], spec=greedy, batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == single
    state = torch.random.get_rng_state()
    first = generate_responses(model, prompts, spec=sampled, batch_size=2, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate_responses(model, prompts, spec=sampled, batch_size=2, **kwargs) == first
    model.train()
    responses = [tokens for tokens, _ in batched]
    scores = score_responses(model, prompts, responses, pad_token_id=0, batch_size=2)
    assert model.training  # scoring restores train mode
    one_by_one = [score_responses(model, [p], [r], pad_token_id=0, batch_size=1)[0] for p, r in zip(prompts, responses)]
    assert scores == pytest.approx(one_by_one, abs=1e-4)


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
