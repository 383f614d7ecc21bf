"""End-to-end: real Axolotl runs of `rl: spin` on a tiny local Llama (CPU)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import (
    LORA,
    Run,
    axolotl_train,
    base_config,
    read_jsonl,
    train_in_process,
    unchanged_parameters,
)

pytestmark = pytest.mark.e2e
LN2 = math.log(2)
METRICS = [
    "rewards/real",
    "rewards/generated",
    "rewards/margins",
    "rewards/accuracies",
    "logps/real",
    "logps/generated",
    "opponent/length",
    "opponent/truncated_frac",
    "opponent/identical_frac",
    "selfplay/iteration",
]
STEPS_PER_ITERATION = 4  # 64 demo rows / micro_batch_size 16


@pytest.fixture(scope="module")
def full_ft_run(tmp_path_factory, tiny_model_dir) -> Run:
    out = tmp_path_factory.mktemp("spin-full")
    run = axolotl_train(base_config(tiny_model_dir, out), out / "spin.yml")
    assert run.returncode == 0, run.output[-5000:]
    return run


def test_first_loss_of_each_iteration_is_ln2(full_ft_run):
    losses = dict(full_ft_run.scalars("train/loss"))
    assert len(losses) == 2 * STEPS_PER_ITERATION
    for first_step in (1, 1 + STEPS_PER_ITERATION):
        assert losses[first_step] == pytest.approx(LN2, abs=1e-4)
    # and training moves away from ln 2 within the iteration
    assert losses[STEPS_PER_ITERATION] < LN2 - 0.01


def test_metrics_are_logged(full_ft_run):
    # the per-iteration summary goes through Axolotl's logging setup
    assert "self-play iteration 1: 64 opponents" in full_ft_run.output
    logs = full_ft_run.logs()
    assert len(logs) == 2 * STEPS_PER_ITERATION
    for name in METRICS:
        assert name in logs[0], name
        assert full_ft_run.scalars(f"train/{name}"), f"{name} missing from TensorBoard"
    assert [row["selfplay/iteration"] for row in logs] == [0.0] * 4 + [1.0] * 4
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert logs[3]["rewards/margins"] > 0  # the policy learns to prefer real over generated


def test_iteration_exports(full_ft_run):
    for iteration in (0, 1):
        rows = read_jsonl(full_ft_run.output_dir / "selfplay" / f"iter_{iteration}.jsonl")
        assert len(rows) == 64
        for row in rows:
            assert {"prompt", "real", "generated", "ref_logp_real", "ref_logp_generated"} <= set(row)
            assert row["prompt"].endswith("<|im_start|>assistant\n")
            assert row["real"].endswith("<|im_end|>")
            assert row["ref_logp_real"] < 0
        assert all(row["ref_logp_generated"] < 0 for row in rows if row["status"] == "ok")
    # iteration 1 is scored by the model after iteration 0's training
    first = read_jsonl(full_ft_run.output_dir / "selfplay" / "iter_0.jsonl")
    second = read_jsonl(full_ft_run.output_dir / "selfplay" / "iter_1.jsonl")
    assert [r["ref_logp_real"] for r in first] != [r["ref_logp_real"] for r in second]


def test_every_parameter_moved_full_finetune(full_ft_run, tiny_model_dir):
    unchanged = unchanged_parameters(tiny_model_dir, full_ft_run.output_dir)
    assert not unchanged, f"parameters that did not move: {unchanged}"


def test_lora_with_dropout_trains_every_adapter_parameter_from_ln2(tmp_path, dropout_model_dir):
    """LoRA dropout and the model's attention dropout are switched off (`disable_dropout`,
    default on): every iteration still starts at exactly ln 2."""
    cfg = base_config(
        dropout_model_dir,
        tmp_path,
        **{**LORA, "lora_dropout": 0.5},
        selfplay={"iterations": 2, "history": 2, "generation": {"max_new_tokens": 12, "batch_size": 32}},
    )
    report = tmp_path / "moved.json"
    run = train_in_process(cfg, tmp_path / "lora.yml", "--param-report", str(report))
    moved = json.loads(report.read_text())
    assert moved and all("lora_" in name for name in moved), "only adapter weights are trainable"
    assert all(moved.values()), [n for n, m in moved.items() if not m]
    losses = dict(run.scalars("train/loss"))
    assert losses[1] == pytest.approx(LN2, abs=1e-4)
    assert losses[1 + STEPS_PER_ITERATION] == pytest.approx(LN2, abs=1e-4)
    logs = run.logs()
    # history 2: iteration 1 pairs each example with its iteration-0 AND iteration-1
    # opponents (mean age 0.5 when none is dropped; strictly between 0 and 1 when both are used)
    assert logs[0]["opponent/age"] == 0.0
    assert 0.0 < logs[STEPS_PER_ITERATION]["opponent/age"] < 1.0
    assert (run.output_dir / "adapter_model.safetensors").exists()


def test_resume_mid_iteration_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    """Checkpoints at steps 2, 4, 6, 8 (iteration 1 = steps 5-8). Resuming from step 6
    must reuse the saved opponents, and from step 4 (a boundary) must regenerate the
    same ones; both end with the uninterrupted run's final loss."""
    saving = {"save_strategy": "steps", "save_steps": 2}
    full = axolotl_train(base_config(tiny_model_dir, tmp_path / "full", **saving), tmp_path / "full.yml")
    assert full.returncode == 0, full.output[-5000:]
    final = dict(full.scalars("train/loss"))[8]
    assert (full.output_dir / "checkpoint-6" / "selfplay_opponents.pt").exists()

    for checkpoint, fresh_iteration in (("checkpoint-6", False), ("checkpoint-4", True)):
        out = tmp_path / f"resume-{checkpoint}"
        cfg = base_config(
            tiny_model_dir, out, resume_from_checkpoint=str(full.output_dir / checkpoint), **saving
        )
        resumed = axolotl_train(cfg, out.with_suffix(".yml"))
        assert resumed.returncode == 0, resumed.output[-5000:]
        losses = dict(resumed.scalars("train/loss"))
        assert losses[8] == pytest.approx(final, abs=1e-5), (checkpoint, losses, final)
        regenerated = (resumed.output_dir / "selfplay" / "iter_1.jsonl").exists()
        assert regenerated == fresh_iteration
        if fresh_iteration:
            assert read_jsonl(resumed.output_dir / "selfplay" / "iter_1.jsonl") == read_jsonl(
                full.output_dir / "selfplay" / "iter_1.jsonl"
            )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_implementation_reaches_generation_and_scoring(attn, tmp_path, tiny_model_dir):
    """The configured `attn_implementation` (flash_attention_2 on GPUs; eager/sdpa here) is
    the one every self-play pass runs with: generation, θ_t scoring and θ_0 scoring (LoRA)."""
    cfg = base_config(
        tiny_model_dir,
        tmp_path,
        attn_implementation=attn,
        **LORA,
        selfplay={"iterations": 2, "kl_to_base": 0.5, "generation": {"max_new_tokens": 8, "batch_size": 32}},
        num_epochs=None,
    )
    probe = tmp_path / "attn.json"
    train_in_process(cfg, tmp_path / "attn.yml", "--probe-attn", str(probe))
    seen = json.loads(probe.read_text())
    passes = [name for name, _, _ in seen]
    assert passes.count("generate_responses") == 2 and passes.count("score_responses") >= 3
    assert {impl for _, impl, _ in seen} == {attn}
