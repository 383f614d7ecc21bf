"""FSDP2 (`fsdp_version: 2`): 2 CPU processes on gloo, through `axolotl train --launcher torchrun`.

Under FSDP every layer all-gathers its weights in its forward, so generation and scoring
are collectives: every rank runs the same batches (synced_gpus, lockstep padding), as with
ZeRO-3's sharded generation. θ_0 (kl_to_base, full fine-tuning) is swapped in shard by shard.
FSDP1 is rejected before the model loads. The CPU workarounds live in tests/distributed_shim.
"""

from __future__ import annotations

import os
import socket

import pytest
from conftest import REPO, assert_rank_stores_agree, axolotl_train, base_config, read_jsonl

from axolotl_selfplay.config import check_compatible

FSDP2 = {
    "fsdp_version": 2,
    "fsdp_config": {
        "offload_params": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "raw",
    [
        {"fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}},  # Axolotl's default version: 1
        {"fsdp_version": 1, "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}},
        {"fsdp": ["full_shard", "auto_wrap"]},
    ],
)
def test_fsdp1_is_rejected_with_the_fix(raw):
    with pytest.raises(ValueError, match=r"FSDP1 cannot be used with `rl: spin`.*Set `fsdp_version: 2`"):
        check_compatible("spin", raw.get)
    check_compatible("spin", {**raw, "fsdp_version": 2}.get)  # FSDP2: accepted


@pytest.mark.e2e
@pytest.mark.distributed
def test_fsdp2_two_processes_spin_chi2_with_kl_to_base(tmp_path, tiny_model_dir):
    selfplay = {"iterations": 2, "kl_to_base": 0.5, "history": 2, "opponent_mixture": "uniform",
                "generation": {"max_new_tokens": 12, "batch_size": 8}}
    cfg = base_config(tiny_model_dir, tmp_path, rl="spin_chi2", selfplay=selfplay, micro_batch_size=8, ddp_timeout=60, **FSDP2)
    dumps = tmp_path / "stores"
    dumps.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "distributed_shim"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "SELFPLAY_TEST_STORE_DUMP": str(dumps),
    }
    launcher = ["--launcher", "torchrun", "--", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    run = axolotl_train(cfg, tmp_path / "fsdp2.yml", extra_args=launcher, env=env, timeout=600)
    assert run.returncode == 0, run.output[-6000:]
    assert "generating with sharded weights" in run.output  # lockstep generation and scoring
    stores = assert_rank_stores_agree(dumps, examples=64, iteration=1)
    assert stores[0]["fsdp_sharded"] and stores[1]["fsdp_sharded"]  # the policy really was sharded
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 8 and losses[1] == pytest.approx(0.0, abs=1e-5)
    # θ_0 swapped in shard by shard scores y exactly as θ_t did at iteration 0
    first = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
    second = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")
    assert [r["base_logp_real"] for r in second] == pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)
    assert (run.output_dir / "model.safetensors").exists()
