"""Two CPU processes (gloo): `rl: spin` under DDP, DeepSpeed ZeRO-2 and ZeRO-3, `rl: lsp`
under ZeRO-3, all on tied-embedding models (Qwen2.5-shaped), the case ZeRO-3 partitions
specially (one tensor, two modules) and most small chat models ship (Qwen2.5, Llama-3.2, Gemma).

The ranks run through `axolotl train --launcher torchrun` with the CPU-only test
scaffolding of tests/distributed_shim on PYTHONPATH (see its docstring: it is never
part of the plugin). A short `ddp_timeout` and an outer timeout turn a collective
mismatch into a failure instead of a hang.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
from conftest import DEMO_DATA, REPO, assert_rank_stores_agree, axolotl_train, base_config, free_port, read_jsonl

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.distributed,
    # FSDP2's 2-process runs (tests/test_fsdp.py) are 0.21's share
    pytest.mark.one_version("0.19", why="2 ranks exercise our trainer on DDP and DeepSpeed, not Axolotl"),
]
deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is installed by scripts/setup_env.sh")

ZERO = {
    "zero2": {"zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                                    "reduce_bucket_size": "auto"}},
    "zero3": {"zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                                    "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                    "stage3_param_persistence_threshold": 0,
                                    "stage3_gather_16bit_weights_on_model_save": True}},
}
FP32_AUTO = {"bf16": {"enabled": False}, "fp16": {"enabled": False}, "gradient_accumulation_steps": "auto",
             "gradient_clipping": "auto", "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}
# DeepSpeed's own optimizer (torch's AdamW on CPU): HF then hands the scheduler to DeepSpeed's
# engine, which steps it (accelerate's DummyScheduler path), instead of stepping it itself
DS_OPTIMIZER = {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                          "weight_decay": "auto", "torch_adam": True}}}


# ZeRO-3 without gathering: generate with synced_gpus; small batches make the ranks'
# scoring lists uneven, which the lockstep padding must absorb
SHARDED_GENERATION = {"iterations": 2, "generation": {"max_new_tokens": 12, "batch_size": 8, "ds3_gather_for_generation": False}}
# with per-iteration peak learning rates, and evaluation rows (`test_datasets`) that get
# opponents of their own at every iteration
CHI2 = {"iterations": 2, "kl_to_base": 0.5, "opponent_mixture": "uniform", "history": 2,
        "learning_rates": [1e-3, 5e-4], "generation": {"max_new_tokens": 12, "batch_size": 32}}
RUNS = {
    # id: (engine, rl, selfplay block or None for base_config's)
    "ddp-spin": ("ddp", "spin", None),
    "zero2-spin": ("zero2", "spin", None),
    "zero3-spin": ("zero3", "spin", None),
    "zero3-spin_chi2-kl-uniform": ("zero3", "spin_chi2", CHI2),
    "zero3-spin-sharded-generation": ("zero3", "spin", SHARDED_GENERATION),
}


def _shim_env(extra=None) -> dict:
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "distributed_shim"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return {**env, **(extra or {})}


def run_two_processes(run_id: str, model_dir, out):
    """`axolotl train --launcher torchrun` with 2 CPU ranks; returns the Run and the rank store digests."""
    mode, rl, selfplay = RUNS[run_id]
    # 64 rows / (8 x 2 ranks) = 4 steps per iteration; the linear schedule restarts with each
    overrides = {"ddp_timeout": 60, "micro_batch_size": 8, "rl": rl, "lr_scheduler": "linear"}
    if selfplay:
        overrides["selfplay"] = selfplay
    if selfplay is CHI2:
        heldout = out / "heldout.jsonl"
        heldout.write_text("".join(DEMO_DATA.read_text().splitlines(keepends=True)[:16]))
        entry = {"path": str(heldout), "split": "train", "type": "chat_template", "field_messages": "messages",
                 "roles_to_train": ["assistant"], "train_on_eos": "turn"}
        overrides.update({"test_datasets": [entry], "eval_steps": 4, "eval_batch_size": 8})
    if mode != "ddp":
        ds_config = out / f"{mode}.json"
        ds_config.write_text(json.dumps({**ZERO[mode], **FP32_AUTO, **(DS_OPTIMIZER if mode == "zero2" else {})}))
        overrides["deepspeed"] = str(ds_config)
    cfg = base_config(model_dir, out, **overrides)
    dumps = out / "stores"
    dumps.mkdir()
    launcher = ["--launcher", "torchrun", "--", "--nproc_per_node", "2", "--master_port", str(free_port())]
    run = axolotl_train(cfg, out / f"{mode}.yml", extra_args=launcher, env=_shim_env({"SELFPLAY_TEST_STORE_DUMP": str(dumps)}), timeout=600)
    assert run.returncode == 0, run.output[-6000:]
    stores = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    return run, stores


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tied_model_dir):
    """run id -> (Run, store digests), each run once per module, on the tied model."""
    done = {}

    def get(run_id):
        if run_id not in done:
            done[run_id] = run_two_processes(run_id, tied_model_dir, tmp_path_factory.mktemp(run_id))
        return done[run_id]

    get.model_dir = tied_model_dir
    return get


def checkpoint_digests(model_dir) -> dict:
    """What the shim's `parameters_at_start` must read for an untouched checkpoint."""
    import hashlib

    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    return {name: hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest() for name, t in weights.items()}


@pytest.mark.parametrize("run_id", list(RUNS))
def test_two_processes(run_id, two_process_runs):
    """A tied-embedding model (Qwen2.5-shaped: embed_tokens and lm_head are one tensor, which
    ZeRO-3 partitions once) under DDP, ZeRO-2 and ZeRO-3."""
    mode, rl, selfplay = RUNS[run_id]
    run, stores = two_process_runs(run_id)

    # both ranks started from the checkpoint's exact weights (a ZeRO-3-partitioned tied
    # embedding included), and every rank generated its shard and received the others':
    # identical stores
    assert stores[0]["parameters_at_start"] == checkpoint_digests(two_process_runs.model_dir)
    assert stores[0]["parameters_at_start"] == stores[1]["parameters_at_start"]
    # every rank generated its shard and holds its tokens; the metadata of every example is everywhere
    assert_rank_stores_agree(stores, examples=64, iteration=1)
    # the schedule restarts at iteration 1 (with its own peak for CHI2); each rank's optimizer
    # state (under ZeRO: its flat partitions') is reset there, reached through every wrapper
    lrs = dict(run.scalars("train/learning_rate"))
    assert lrs[4] < lrs[1] and lrs[5] == pytest.approx(lrs[1] * (0.5 if selfplay is CHI2 else 1.0), rel=1e-6)
    reset = re.search(r"self-play iteration 1: optimizer state of (\d+) parameters reset", run.output)
    assert reset and int(reset.group(1)) > 0
    rows = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")
    assert len(rows) == 64 and all(r["ref_logp_real"] < 0 for r in rows)
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 8  # 2 iterations x 4 steps: both ranks shared the data
    if rl == "spin":
        assert losses[1] == pytest.approx(math.log(2), abs=1e-4) and losses[5] == pytest.approx(math.log(2), abs=1e-4)
    else:
        assert losses[1] == pytest.approx(0.0, abs=1e-5)
        first = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
        # θ_0 swapped in under ZeRO-3 scores y exactly as θ_t did at iteration 0
        assert [r["base_logp_real"] for r in rows] == pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)
        # evaluation: the held-out rows' opponents, sharded and gathered like the training ones;
        # the χ² objective on them is 0 before any step, metrics summed over both ranks' batches
        assert stores[0]["eval_metadata"] is not None
        assert len(read_jsonl(run.output_dir / "selfplay" / "eval_iter_1.jsonl")) == 16
        eval_loss = dict(run.scalars("eval/loss"))
        assert sorted(eval_loss) == [0, 4, 8] and eval_loss[0] == pytest.approx(0.0, abs=1e-5)
        assert sorted(dict(run.scalars("eval/rewards/margins"))) == [0, 4, 8]
    # finite throughout: HF's logging_nan_inf_filter would log a NaN loss as 0
    for row in run.logs():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert (run.output_dir / "model.safetensors").exists()
    sharded = "generating with sharded weights" in run.output
    assert sharded == (selfplay is SHARDED_GENERATION)


def test_same_seed_same_opponents_and_first_step(two_process_runs):
    """DDP, ZeRO-2 and ZeRO-3 runs of one config must agree up to the first optimizer step:
    iteration 0's opponents are sampled from the same θ_0 (ZeRO-3 gathers the exact fp32
    weights) with the same RNG streams (seed, iteration, rank) on the same round-robin prompt
    shards, and step 1's forward runs at θ_0 on the same batches; only the order of the
    gradient reduction differs between engines. A run that is not deterministic (a ZeRO-3
    parameter read before its gather landed, at load or for generation) differs here first."""
    runs = {run_id: two_process_runs(run_id)[0] for run_id in ("ddp-spin", "zero2-spin", "zero3-spin")}
    exports = {run_id: read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl") for run_id, run in runs.items()}
    reference = exports["ddp-spin"]
    for run_id, rows in exports.items():
        assert [(r["generated"], r["status"]) for r in rows] == [(r["generated"], r["status"]) for r in reference], run_id
        assert [r["ref_logp_real"] for r in rows] == pytest.approx([r["ref_logp_real"] for r in reference], abs=1e-4)
        scored = [r["ref_logp_generated"] for r in rows if r["status"] == "ok"]
        assert scored == pytest.approx([r["ref_logp_generated"] for r in reference if r["status"] == "ok"], abs=1e-4)
    tags = ("loss", "grad_norm", "logps/real", "logps/generated", "rewards/margins", "opponent/length", "opponent/truncated_frac")
    for tag in tags:
        first = {run_id: dict(run.scalars(f"train/{tag}"))[1] for run_id, run in runs.items()}
        for run_id, value in first.items():
            assert value == pytest.approx(first["ddp-spin"], rel=1e-4, abs=1e-5), (tag, first)


def test_shim_completes_every_zero3_gather():
    """DeepSpeed's ZeRO-3 gather of several parameters waits only on the last of its async
    all-gathers (CUDA stream order makes that enough on GPUs); gloo finishes them out of
    order, so without the shim ~10% of these gathers expose a parameter whose all-gather
    has not landed (what loaded a checkpoint weight as uninitialised memory)."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import _env

    script = str(REPO / "tests" / "scripts" / "zero3_gather_check.py")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), script, "100"],
        capture_output=True, text=True, env=_env(_shim_env()), timeout=300,
    )
    assert "INCOMPLETE=0/200" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("gather", [True, False], ids=["zero3-lsp", "zero3-lsp-sharded-generation"])
def test_two_processes_lsp(gather, tmp_path, tied_arithmetic_model_dir, reward_model_dir):
    """`rl: lsp` under ZeRO-3 on a tied-embedding model: the full-FT reference model is
    loaded from `base_model` and sharded (TRL's prepare_deepspeed), judged and scored on both
    ranks; with `ds3_gather_for_generation: false` every generate runs with synced_gpus in
    lockstep."""
    from conftest import lsp_config, with_reward_module

    out = with_reward_module(tmp_path)
    ds_config = tmp_path / "zero3.json"
    ds_config.write_text(json.dumps({**ZERO["zero3"], **FP32_AUTO}))
    cfg = lsp_config(tied_arithmetic_model_dir, out, ddp_timeout=60, micro_batch_size=1, deepspeed=str(ds_config))
    cfg["selfplay"]["generation"]["ds3_gather_for_generation"] = gather
    cfg["selfplay"]["lsp"].update({"reward_model": str(reward_model_dir)})
    launcher = ["--launcher", "torchrun", "--", "--nproc_per_node", "2", "--master_port", str(free_port())]
    run = axolotl_train(cfg, out / "lsp.yml", extra_args=launcher, env=_shim_env(), timeout=600)
    assert run.returncode == 0, run.output[-6000:]

    logs = run.logs()
    assert len(logs) == 3
    # rank 0's log line sums both ranks' games: 2 ranks × 1 game × 4 queries
    assert all(0.0 <= row["lsp/degenerate_query_frac"] <= 1.0 for row in logs)
    assert "lsp/self_reward" in logs[0] and "lsp/judge_parse_fail_frac" in logs[0]
    # the sharded reference is θ_0: no KL before the first update, some after
    assert logs[0]["lsp/kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["lsp/kl"] > 0
    for row in logs:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert read_jsonl(run.output_dir / "selfplay" / "lsp_samples.jsonl")
    assert (run.output_dir / "model.safetensors").exists()


def test_one_process_zero3_kl_to_base(tmp_path, tiny_model_dir):
    """ZeRO-3 in ONE process with `kl_to_base`. Without the gather for generation the policy's
    ZeRO-3 parameters hold no data outside a forward, so θ_0 can be neither copied from them nor
    swapped into them: lp_θ0 was silently lp_θt from iteration 1 on. `axolotl train` now refuses
    that before the model loads; with the gather, θ_0 scores y at iteration 1 exactly as θ_t
    did at iteration 0 (where θ_t = θ_0)."""
    ds_config = tmp_path / "zero3.json"
    ds_config.write_text(json.dumps({**ZERO["zero3"], **FP32_AUTO}))
    launcher = ["--launcher", "torchrun", "--", "--nproc_per_node", "1", "--master_port", str(free_port())]

    def run(gather, out):
        selfplay = {"iterations": 2, "kl_to_base": 0.5,
                    "generation": {"max_new_tokens": 12, "batch_size": 32, "ds3_gather_for_generation": gather}}
        cfg = base_config(tiny_model_dir, out, selfplay=selfplay, deepspeed=str(ds_config), ddp_timeout=60)
        return axolotl_train(cfg, out / "zero3.yml", extra_args=launcher, env=_shim_env(), timeout=600)

    refused = run(False, tmp_path / "sharded")
    assert refused.returncode != 0
    assert "cannot be used under DeepSpeed ZeRO-3 with `selfplay.generation.ds3_gather_for_generation: false`" in refused.output
    assert not refused.output_dir.exists()  # before the model loads, before the output directory

    gathered = run(True, tmp_path / "gathered")
    assert gathered.returncode == 0, gathered.output[-6000:]
    first = read_jsonl(gathered.output_dir / "selfplay" / "iter_0.jsonl")
    second = read_jsonl(gathered.output_dir / "selfplay" / "iter_1.jsonl")
    assert [r["base_logp_real"] for r in second] == pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)
    assert [r["ref_logp_real"] for r in second] != pytest.approx([r["ref_logp_real"] for r in first], abs=1e-3)
