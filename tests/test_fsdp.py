"""FSDP2 (`fsdp_version: 2`): 2 CPU processes on gloo, through `axolotl train --launcher torchrun`.

Under FSDP every layer all-gathers its weights in its forward, so generation and scoring
are collectives: every rank runs the same batches (synced_gpus, lockstep padding), as with
ZeRO-3's sharded generation. θ_0 (kl_to_base: full fine-tuning, or a LoRA from `lora_model_dir`;
LSP's reference) is swapped in shard by shard, and the policy's forward takes the chunked lm_head
route. FSDP1 is rejected before the model loads. The CPU workarounds live in tests/distributed_shim.
"""

from __future__ import annotations

import math
import os

import pytest
from conftest import (
    DEMO_DATA,
    LORA,
    REPO,
    assert_rank_stores_agree,
    axolotl_train,
    base_config,
    chat_entry,
    free_port,
    read_jsonl,
)

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


def _saved_adapter(model_dir, path):
    """A LoRA adapter on every linear layer (as `lora_target_linear`), far from zero, saved
    where `lora_model_dir` reads it: θ_0 is then base + this adapter, not the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)), lora).save_pretrained(str(path))
    return path


def _launch_two_ranks(cfg, path, dumps=None):
    """`axolotl train --launcher torchrun` on 2 CPU ranks (tests/distributed_shim); with `dumps`,
    each rank writes its store digest there."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "distributed_shim"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    if dumps is not None:
        env["SELFPLAY_TEST_STORE_DUMP"] = str(dumps)
    launcher = ["--launcher", "torchrun", "--", "--nproc_per_node", "2", "--master_port", str(free_port())]
    return axolotl_train(cfg, path, extra_args=launcher, env=env, timeout=600)


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
@pytest.mark.one_version("0.21", why="2 ranks exercise our trainer on FSDP2, not Axolotl; DDP and DeepSpeed run on 0.19")
def test_fsdp2_two_processes_spin_chi2_with_kl_to_base(tmp_path, tiny_model_dir):
    selfplay = {"iterations": 2, "kl_to_base": 0.5, "history": 2, "opponent_mixture": "uniform",
                "generation": {"max_new_tokens": 12, "batch_size": 8}}
    cfg = base_config(tiny_model_dir, tmp_path, rl="spin_chi2", selfplay=selfplay, micro_batch_size=8, ddp_timeout=60, **FSDP2)
    dumps = tmp_path / "stores"
    dumps.mkdir()
    run = _launch_two_ranks(cfg, tmp_path / "fsdp2.yml", dumps)
    assert run.returncode == 0, run.output[-6000:]
    assert "generating with sharded weights" in run.output  # lockstep generation and scoring
    # full fine-tuning under FSDP2 takes the chunked lm_head route (FSDPLlamaForCausalLM is a Llama)
    assert "log-probs from the last hidden states at labelled positions" in run.output
    stores = assert_rank_stores_agree(dumps, examples=64, iteration=1)
    assert stores[0]["fsdp_sharded"] and stores[1]["fsdp_sharded"]  # the policy really was sharded
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 8 and losses[1] == pytest.approx(0.0, abs=1e-5)
    # θ_0 swapped in shard by shard scores y exactly as θ_t did at iteration 0
    first = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
    second = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")
    assert [r["base_logp_real"] for r in second] == pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)
    assert (run.output_dir / "model.safetensors").exists()


@pytest.mark.e2e
@pytest.mark.distributed
@pytest.mark.one_version("0.21", why="2 ranks exercise our trainer on FSDP2, not Axolotl; DDP and DeepSpeed run on 0.19")
def test_fsdp2_two_processes_lora_from_lora_model_dir_with_kl_to_base(tmp_path, tiny_model_dir):
    """θ_0 of a LoRA continued from `lora_model_dir` (base + the loaded adapter) under FSDP2: its
    adapter weights, copied before accelerate shards the model, are swapped into the sharded
    (DTensor) adapter at iteration 1. The same run evaluates 15 held-out rows on 2 ranks, so
    accelerate repeats one row to even out the last batch: the `eval_*` pair metrics leave it
    out, as HF's `eval_loss` does."""
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(DEMO_DATA.read_text().splitlines(keepends=True)[:15]))
    selfplay = {"iterations": 2, "kl_to_base": 0.5, "generation": {"max_new_tokens": 12, "batch_size": 8}}
    cfg = base_config(
        tiny_model_dir, tmp_path, selfplay=selfplay, micro_batch_size=8, ddp_timeout=60,
        lora_model_dir=str(_saved_adapter(tiny_model_dir, tmp_path / "adapter")), **LORA, **FSDP2,
        test_datasets=[chat_entry(heldout, split="train")], eval_steps=4, eval_batch_size=8,
    )
    dumps = tmp_path / "stores"
    dumps.mkdir()
    run = _launch_two_ranks(cfg, tmp_path / "fsdp2-lora.yml", dumps)
    assert run.returncode == 0, run.output[-6000:]
    stores = assert_rank_stores_agree(dumps, examples=64, iteration=1)
    assert stores[0]["fsdp_sharded"] and stores[1]["fsdp_sharded"]
    # the policy's forward under FSDP2 takes the chunked lm_head route
    assert "log-probs from the last hidden states at labelled positions" in run.output
    assert "log-probs from the full logits" not in run.output
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 8 and losses[1] == pytest.approx(math.log(2), abs=1e-4)
    # θ_0 (base + the loaded adapter, swapped in shard by shard) scores y as θ_t did at iteration 0
    first = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
    second = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")
    assert [r["base_logp_real"] for r in second] == pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)

    # evaluation before the first step: θ = θ_0 = θ_t, so the pair metrics are the exported
    # reference log-probs and lengths, averaged over the 15 rows' pairs, once each
    rows = read_jsonl(run.output_dir / "selfplay" / "eval_iter_0.jsonl")
    assert len(rows) == 15
    evaluation = {tag: dict(run.scalars(f"eval/{tag}")) for tag in ("logps/real", "logps/generated", "opponent/length")}
    step = min(evaluation["logps/real"])
    assert step == 0
    ok = [r for r in rows if r["status"] == "ok"]
    expected = {
        "logps/real": [r["ref_logp_real"] for r in ok],
        "logps/generated": [r["ref_logp_generated"] for r in ok],
        "opponent/length": [len(r["generated_ids"]) for r in ok],
    }
    for tag, values in expected.items():
        assert evaluation[tag][step] == pytest.approx(sum(values) / len(values), abs=1e-3), tag
    # counting row 0 twice (rank 1's last batch is rows 8–14 and row 0 again) would differ
    if rows[0]["status"] == "ok":
        twice = expected["logps/real"] + [rows[0]["ref_logp_real"]]
        assert evaluation["logps/real"][step] != pytest.approx(sum(twice) / len(twice), abs=1e-3)


@pytest.mark.e2e
@pytest.mark.distributed
@pytest.mark.one_version("0.21", why="2 ranks exercise our trainer on FSDP2, not Axolotl; DDP and DeepSpeed run on 0.19")
def test_fsdp2_two_processes_lsp_reference_from_lora_model_dir(tmp_path, arithmetic_model_dir):
    """`rl: lsp` under FSDP2 continuing a LoRA from `lora_model_dir`: the reference (θ_0 = base +
    the loaded adapter) is swapped into the sharded adapter at every step; no KL before the
    first update, some after (a reward that spreads distinct answers: the first update moves)."""
    from conftest import lsp_config, with_reward_module

    out = with_reward_module(tmp_path)
    adapter = _saved_adapter(arithmetic_model_dir, tmp_path / "adapter")
    cfg = lsp_config(arithmetic_model_dir, out, ddp_timeout=60, micro_batch_size=1, lora_model_dir=str(adapter),
                     **LORA, **FSDP2)
    cfg["selfplay"]["lsp"]["reward_funcs"] = ["varied.by_text"]
    run = _launch_two_ranks(cfg, out / "lsp.yml")
    assert run.returncode == 0, run.output[-6000:]
    logs = run.logs()
    assert len(logs) == 3
    assert logs[0]["lsp/kl"] == pytest.approx(0.0, abs=1e-6), logs
    assert logs[0]["lsp/zero_std_frac"] < 1.0, logs  # the first update has a gradient from the Solver
    assert logs[-1]["lsp/kl"] > 0, logs
    for row in logs:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
