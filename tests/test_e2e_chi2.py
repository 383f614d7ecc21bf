"""End-to-end: `rl: spin_chi2` with the regularisers (kl_to_base, fictitious play), full FT and LoRA."""

from __future__ import annotations

import json

import pytest
from conftest import LORA, Run, base_config, read_jsonl, train_in_process, unchanged_parameters

pytestmark = pytest.mark.e2e
STEPS_PER_ITERATION = 4
SELFPLAY = {
    "iterations": 3,
    "beta": 0.1,
    "history": 2,
    "kl_to_base": 0.5,
    "opponent_mixture": "uniform",
    "generation": {"max_new_tokens": 12, "batch_size": 32},
}


def _check_run(run: Run):
    losses = dict(run.scalars("train/loss"))
    assert len(losses) == 3 * STEPS_PER_ITERATION
    # iteration 0: θ = θ_t = θ_0, so r⁺ = r⁻ = 0 and the loss is exactly 0
    assert losses[1] == pytest.approx(0.0, abs=1e-5)
    logs = run.logs()
    assert "chi2/penalty" in logs[0] and logs[0]["chi2/penalty"] == pytest.approx(0.0, abs=1e-6)
    assert max(row["chi2/penalty"] for row in logs) > 0
    # fictitious play with h = 2 uses iteration t-1's opponents too
    assert max(row["opponent/age"] for row in logs[STEPS_PER_ITERATION:]) > 0
    # θ_0's log-prob of each real response is the same in every iteration's export and
    # equals θ_t's at iteration 0 (the starting model really is θ_0 every time)
    exports = [read_jsonl(run.output_dir / "selfplay" / f"iter_{t}.jsonl") for t in range(3)]
    for t in (1, 2):
        for first, later in zip(exports[0], exports[t]):
            assert later["base_logp_real"] == pytest.approx(first["ref_logp_real"], abs=1e-3)
    assert any(abs(r["ref_logp_real"] - r["base_logp_real"]) > 1e-2 for r in exports[2])


def test_spin_chi2_full_finetune_with_regularisers(tmp_path, tiny_model_dir):
    cfg = base_config(tiny_model_dir, tmp_path, rl="spin_chi2", selfplay=SELFPLAY)
    run = train_in_process(cfg, tmp_path / "chi2.yml")
    _check_run(run)
    assert not unchanged_parameters(tiny_model_dir, run.output_dir)


def test_spin_chi2_lora_with_regularisers(tmp_path, dropout_model_dir):
    """LoRA dropout and attention dropout (switched off by `disable_dropout`): the first
    loss is still exactly 0."""
    cfg = base_config(
        dropout_model_dir,
        tmp_path,
        rl="spin_chi2",
        selfplay=SELFPLAY,
        **{**LORA, "lora_dropout": 0.5},
    )
    report = tmp_path / "moved.json"
    _check_run(train_in_process(cfg, tmp_path / "chi2-lora.yml", "--param-report", str(report)))
    moved = json.loads(report.read_text())
    assert moved and all(moved.values()), [n for n, m in moved.items() if not m]


def test_spin_chi2_first_loss_of_each_iteration_is_the_sft_term(tmp_path, dropout_model_dir):
    """Without kl_to_base the reference is θ_t, so r⁺ = r⁻ = 0 at every iteration start and
    the χ² loss is 0: what is logged is `sft_weight` × the real responses' NLL (full
    fine-tuning of a model whose config carries attention dropout)."""
    selfplay = {"iterations": 2, "sft_weight": 0.5, "generation": {"max_new_tokens": 12, "batch_size": 32}}
    cfg = base_config(dropout_model_dir, tmp_path, rl="spin_chi2", selfplay=selfplay)
    run = train_in_process(cfg, tmp_path / "c.yml")
    losses, nll = dict(run.scalars("train/loss")), dict(run.scalars("train/nll/real"))
    assert losses[1] == pytest.approx(0.5 * nll[1], abs=1e-4) and nll[1] > 1.0
    assert losses[1 + STEPS_PER_ITERATION] == pytest.approx(0.5 * nll[1 + STEPS_PER_ITERATION], abs=1e-4)
    # the linear reward term pulls the χ² part below 0
    assert losses[STEPS_PER_ITERATION] - 0.5 * nll[STEPS_PER_ITERATION] < -0.01
    # the rewards stay inside the χ² bound [-1/(2c(1-α)), 1/(2cα)] = [-2, 2]
    assert all(abs(row[k]) <= 2.0 for row in run.logs() for k in ("rewards/real", "rewards/generated"))
