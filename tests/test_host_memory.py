"""Host memory: the opponent store keeps int32 tokens, sharded across ranks, and θ_0 is
split across ranks — checked in 2 forked CPU processes (gloo), without Axolotl."""

from __future__ import annotations

import json
import math
import os
from array import array

import pytest
import torch
from conftest import free_port

from axolotl_selfplay.spin.store import IDENTICAL, USABLE, Opponent, OpponentStore

EOS = 2
PROMPTS = [[1, 10 + i, 11 + i] for i in range(7)]
REALS = [[20 + i, 21, EOS] for i in range(7)]


def _pools(iteration: int):
    """One new y' per example, plus an older one for example 3; example 4's y' is identical to y."""
    pools = []
    for i in range(7):
        pool = [Opponent(iteration, [30 + i] * (1 + i % 3) + [EOS], False, USABLE, -1.0 - i, -2.0 - i)]
        if i == 3:
            pool.insert(0, Opponent(iteration - 1, [40, 41], True, USABLE, -7.5, -8.5))
        if i == 4:
            pool = [Opponent(iteration, REALS[4], False, IDENTICAL)]
        pools.append(pool)
    return pools


def _single_store():
    store = OpponentStore(PROMPTS, REALS, history=2)
    store.set_iteration(1, [-0.5 * i for i in range(7)], _pools(1), [-0.25 * i for i in range(7)])
    return store


def _in_processes(target, tmp_path, world: int = 2):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.multiprocessing.start_processes(_worker, args=(world, target, str(tmp_path)), nprocs=world, start_method="fork")


def _worker(rank, world, target, tmp):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        target(rank, world, tmp)
    finally:
        dist.destroy_process_group()


def _store_on_rank(rank, world, tmp):
    store = OpponentStore(PROMPTS, REALS, history=2, rank=rank, world=world)
    # only this rank's tokens: examples rank, rank + world, ...
    assert [i for i in range(7) if store.prompts[i] is not None] == list(range(rank, 7, world))
    assert store.prompt_lengths.tolist() == [3] * 7  # lengths of every example everywhere
    # the rollout's result: metadata of every example, tokens of this rank's shard only
    pools = [[o if i % world == rank else o.without_tokens() for o in pool] for i, pool in enumerate(_pools(1))]
    store.set_iteration(1, [-0.5 * i for i in range(7)], pools, [-0.25 * i for i in range(7)])

    # a batch mixing both ranks' examples: tokens come from their holders
    examples = [6, 1, 3] if rank == 0 else [0, 5]
    selection = store.pairs(examples)
    prompts, reals, generated = store.fetch(examples, selection.pairs)
    single = _single_store()
    assert [list(p) for p in prompts] == [PROMPTS[i] for i in examples]
    assert [list(r) for r in reals] == [REALS[i] for i in examples]
    expected = {(p.example, p.opponent.iteration): list(p.opponent.tokens) for p in single.pairs(examples).pairs}
    assert [list(g) for g in generated] == [expected[p.example, p.opponent.iteration] for p in selection.pairs]

    # the checkpoint: gathered on rank 0, equal to the one-process store's
    state = store.state_dict()
    if rank == 0:
        reference = single.state_dict()
        assert json.dumps(_plain(state)) == json.dumps(_plain(reference))
    else:
        assert state is None
    store.save(os.path.join(tmp, "ckpt"))
    store.export_jsonl(os.path.join(tmp, "iter_1.jsonl"), lambda ids: " ".join(map(str, ids)))
    loaded = OpponentStore(PROMPTS, REALS, history=2, rank=rank, world=world)
    import torch.distributed as dist

    dist.barrier()
    assert loaded.load(os.path.join(tmp, "ckpt"))
    assert loaded.pool == store.pool  # tokens only where held, metadata everywhere
    assert all((o.tokens is None) != loaded.holds(i) for i, pool in enumerate(loaded.pool) for o in pool)


def _plain(state):
    return {k: _plain(v) if isinstance(v, dict) else v.tolist() if torch.is_tensor(v) else
            [None if x is None or (isinstance(x, float) and math.isnan(x)) else x for x in v] if isinstance(v, list) else v
            for k, v in state.items()}


def test_store_shards_tokens_and_fetches_each_batch_from_the_holders(tmp_path):
    _in_processes(_store_on_rank, tmp_path)
    single = _single_store()
    single.export_jsonl(str(tmp_path / "single.jsonl"), lambda ids: " ".join(map(str, ids)))
    assert (tmp_path / "iter_1.jsonl").read_text() == (tmp_path / "single.jsonl").read_text()


def test_store_keeps_int32_tokens():
    store = _single_store()
    assert isinstance(store.prompts[0], array) and store.prompts[0].itemsize == 4
    assert all(isinstance(o.tokens, array) for pool in store.pool for o in pool)
    tokens = sum(map(len, PROMPTS + REALS)) + sum(o.length for pool in store.pool for o in pool)
    assert store.nbytes() == 4 * tokens


def _theta0_on_rank(rank, world, tmp):
    from transformers import LlamaConfig, LlamaForCausalLM

    from axolotl_selfplay.scoring.starting_model import StartingModel

    torch.manual_seed(0)  # the same model on both ranks, as DDP / DeepSpeed replicate it
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    starting = StartingModel({})
    starting.snapshot(model)
    held = sum(t.numel() for t in starting._weights.values())
    total = sum(p.numel() for p in model.parameters())
    assert held <= total // world + len(theta0)  # this rank's part of every tensor
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training moved the policy: θ_t
    theta_t = {n: p.detach().clone() for n, p in model.named_parameters()}
    with starting.active(model):
        assert all(torch.equal(p, theta0[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, theta_t[n]) for n, p in model.named_parameters())
    with starting.active(model):  # and again: the parts swapped back are θ_0's
        assert all(torch.equal(p, theta0[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("world", [2, 3])
def test_theta0_is_split_across_ranks_and_swaps_exactly(tmp_path, world):
    _in_processes(_theta0_on_rank, tmp_path, world)
