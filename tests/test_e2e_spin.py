"""End-to-end: real Axolotl runs of `rl: spin` on a tiny local Llama (CPU)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import (
    DEMO_DATA,
    LORA,
    Run,
    axolotl_train,
    base_config,
    chat_entry,
    read_jsonl,
    spin_release_file,
    train_in_process,
    train_in_process_all,
    unchanged_parameters,
    write_jsonl,
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
    "nll/real",
    "selfplay/iteration",
]
STEPS_PER_ITERATION = 4  # 64 demo rows / micro_batch_size 16
DEMO_ROWS = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]
RELEASED_REPLY = "I do not know."
RELEASED = 41  # training rows whose prompt is among the first 40 demo conversations (one is there twice)


@pytest.fixture(scope="module")
def full_ft_run(tmp_path_factory, tiny_model_dir) -> Run:
    """Iteration 0 starts from released opponent data (the SPIN authors' parquet layout)
    covering 40 of the 64 demo conversations; the other rows are generated."""
    out = tmp_path_factory.mktemp("spin-full")
    released = spin_release_file(out / "SPIN_iter0" / "train.parquet", DEMO_ROWS[:40], RELEASED_REPLY)
    selfplay = {"iterations": 2, "opponents_from": str(released), "generation": {"max_new_tokens": 12, "batch_size": 32}}
    run = axolotl_train(base_config(tiny_model_dir, out, selfplay=selfplay), out / "spin.yml")
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


def test_released_opponents_replace_iteration_0s_generation(full_ft_run):
    """`opponents_from`: the matched rows' y' at iteration 0 is the file's reply (cut at the
    end of turn, scored under θ_0); only the others are generated. Iteration 1 generates all."""
    assert f"{RELEASED} opponents from `selfplay.opponents_from`, {64 - RELEASED} generated" in full_ft_run.output
    first = read_jsonl(full_ft_run.output_dir / "selfplay" / "iter_0.jsonl")
    released = [r for r in first if r["generated"] == RELEASED_REPLY + "<|im_end|>"]
    assert len(released) == RELEASED
    assert all(r["status"] == "ok" and not r["truncated"] and r["ref_logp_generated"] < 0 for r in released)
    second = read_jsonl(full_ft_run.output_dir / "selfplay" / "iter_1.jsonl")
    assert not [r for r in second if r["generated"].startswith(RELEASED_REPLY)]


def test_resumed_ablation_reuses_exported_opponents(full_ft_run, tmp_path, tiny_model_dir):
    """An export as `opponents_from` (an ablation rerun against the same opponents): all 64
    match, nothing is generated, and iteration 0 trains exactly as the run that made them."""
    export = full_ft_run.output_dir / "selfplay" / "iter_0.jsonl"
    selfplay = {"iterations": 1, "opponents_from": str(export), "generation": {"max_new_tokens": 12, "batch_size": 32}}
    run = train_in_process(base_config(tiny_model_dir, tmp_path, selfplay=selfplay), tmp_path / "ablation.yml")
    assert "64 opponents from `selfplay.opponents_from`, 0 generated" in run.output
    assert "self-play: generating opponents" not in run.output
    again = read_jsonl(run.output_dir / "selfplay" / "iter_0.jsonl")
    source = read_jsonl(export)
    assert [r["generated"] for r in again] == [r["generated"] for r in source]
    assert [r["ref_logp_generated"] for r in again] == pytest.approx([r["ref_logp_generated"] for r in source], abs=1e-4)
    losses, original = dict(run.scalars("train/loss")), dict(full_ft_run.scalars("train/loss"))
    assert [losses[s] for s in range(1, 5)] == pytest.approx([original[s] for s in range(1, 5)], abs=1e-5)


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
    default on): every iteration still starts at exactly ln 2, plus `sft_weight` × the real
    responses' token-mean NLL (`nll/real`)."""
    cfg = base_config(
        dropout_model_dir,
        tmp_path,
        **{**LORA, "lora_dropout": 0.5},
        selfplay={"iterations": 2, "history": 2, "sft_weight": 0.25, "generation": {"max_new_tokens": 12, "batch_size": 32}},
    )
    report = tmp_path / "moved.json"
    run = train_in_process(cfg, tmp_path / "lora.yml", "--param-report", str(report))
    moved = json.loads(report.read_text())
    assert moved and all("lora_" in name for name in moved), "only adapter weights are trainable"
    assert all(moved.values()), [n for n, m in moved.items() if not m]
    losses, nll = dict(run.scalars("train/loss")), dict(run.scalars("train/nll/real"))
    for first_step in (1, 1 + STEPS_PER_ITERATION):
        assert nll[first_step] > 1.0
        assert losses[first_step] == pytest.approx(LN2 + 0.25 * nll[first_step], abs=1e-4)
    logs = run.logs()
    # history 2: iteration 1 pairs each example with its iteration-0 AND iteration-1
    # opponents (mean age 0.5 when none is dropped; strictly between 0 and 1 when both are used)
    assert logs[0]["opponent/age"] == 0.0
    assert 0.0 < logs[STEPS_PER_ITERATION]["opponent/age"] < 1.0
    assert (run.output_dir / "adapter_model.safetensors").exists()


def test_resume_mid_iteration_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    """Checkpoints at steps 2, 4, 6, 8 (iteration 1 = steps 5-8). Resuming from step 6
    must reuse the saved opponents (of the training and the evaluation rows), the schedule
    position and the optimizer state; from step 4 (a boundary) it must regenerate the same
    opponents, restart the schedule and reset the optimizer. Both end with the uninterrupted
    run's final loss, learning rates and evaluation.

    The uninterrupted run also shows the per-iteration schedule (linear, warm-up 25 % of each
    iteration, peaks `learning_rates`) and the self-play evaluation of 16 held-out rows."""
    saving = {
        "save_strategy": "steps",
        "save_steps": 2,
        "val_set_size": 16,  # 48 training rows / micro_batch_size 12 = 4 steps per iteration
        "micro_batch_size": 12,
        "eval_batch_size": 8,
        "eval_steps": 4,  # and Axolotl's eval_on_start
        "lr_scheduler": "linear",
        "warmup_ratio": 0.25,
        "selfplay": {"iterations": 2, "learning_rates": [1e-3, 5e-4], "generation": {"max_new_tokens": 12, "batch_size": 32}},
    }
    full = train_in_process(base_config(tiny_model_dir, tmp_path / "full", **saving), tmp_path / "full.yml")
    final = dict(full.scalars("train/loss"))[8]
    assert (full.output_dir / "checkpoint-6" / "selfplay_opponents.pt").exists()
    assert (full.output_dir / "checkpoint-6" / "selfplay_eval_opponents.pt").exists()

    # HF's linear schedule with 2 warm-up steps of 4 (λ = 0, 1/2, 1, 1/2), restarted at step 5
    # with iteration 1's peak; the optimizer state is reset there
    lrs = dict(full.scalars("train/learning_rate"))
    assert [lrs[s] for s in range(1, 9)] == pytest.approx([0, 5e-4, 1e-3, 5e-4, 0, 2.5e-4, 5e-4, 2.5e-4], abs=1e-9)
    assert "self-play iteration 1: optimizer state of" in full.output

    # evaluation measures self-play: before any step θ = θ_t, so the held-out loss is ln 2;
    # at the end of each iteration the held-out rewards separate real from generated
    eval_loss = dict(full.scalars("eval/loss"))
    assert sorted(eval_loss) == [0, 4, 8] and eval_loss[0] == pytest.approx(LN2, abs=1e-4)
    for name in ("rewards/real", "rewards/generated", "rewards/margins", "rewards/accuracies", "logps/real",
                 "logps/generated", "nll/real"):
        assert sorted(dict(full.scalars(f"eval/{name}"))) == [0, 4, 8], name
    assert dict(full.scalars("eval/rewards/margins"))[4] > 0
    for t in (0, 1):
        assert len(read_jsonl(full.output_dir / "selfplay" / f"eval_iter_{t}.jsonl")) == 16
        assert len(read_jsonl(full.output_dir / "selfplay" / f"iter_{t}.jsonl")) == 48

    for checkpoint, fresh_iteration in (("checkpoint-6", False), ("checkpoint-4", True)):
        out = tmp_path / f"resume-{checkpoint}"
        cfg = base_config(
            tiny_model_dir, out, resume_from_checkpoint=str(full.output_dir / checkpoint), **saving
        )
        resumed = train_in_process(cfg, out.with_suffix(".yml"))
        losses = dict(resumed.scalars("train/loss"))
        assert losses[8] == pytest.approx(final, abs=1e-5), (checkpoint, losses, final)
        resumed_lrs = dict(resumed.scalars("train/learning_rate"))
        assert {s: lrs[s] for s in resumed_lrs} == pytest.approx(resumed_lrs, abs=1e-9)
        assert dict(resumed.scalars("eval/loss"))[8] == pytest.approx(eval_loss[8], abs=1e-5)
        regenerated = (resumed.output_dir / "selfplay" / "iter_1.jsonl").exists()
        assert regenerated == fresh_iteration
        assert ("optimizer state of" in resumed.output) == fresh_iteration
        if fresh_iteration:
            for name in ("iter_1.jsonl", "eval_iter_1.jsonl"):
                assert read_jsonl(resumed.output_dir / "selfplay" / name) == read_jsonl(full.output_dir / "selfplay" / name)


def test_schedule_free_iterations_start_from_the_same_weights_with_or_without_evaluation(tmp_path, tiny_model_dir):
    """A schedule-free optimizer keeps two points in the weights: where its steps are taken and
    the averaged weights HF evaluates with (left in place after an evaluation). θ_t is the point
    training continues from whether or not an evaluation ran just before the iteration boundary,
    so the iteration's first loss is ln 2 and an evaluation changes nothing in training. Before,
    an evaluation at the boundary made θ_t the averaged weights: with the optimizer reset the run
    went on from other weights than without the evaluation; without the reset, training went on
    from the other point (first loss 0.6888)."""
    heldout = write_jsonl(tmp_path / "heldout.jsonl", DEMO_ROWS[:8])
    evaluate = {"test_datasets": [chat_entry(heldout, split="train")], "eval_strategy": "steps", "eval_steps": 4,
                "eval_batch_size": 8}
    setups = {"plain": (True, {}), "evaluated": (True, evaluate), "kept": (False, evaluate)}  # reset, extra
    runs = []
    for name, (reset, extra) in setups.items():
        cfg = base_config(tiny_model_dir, tmp_path / name, optimizer="schedule_free_adamw", **extra)
        cfg["selfplay"]["reset_optimizer"] = reset
        runs.append((cfg, tmp_path / f"{name}.yml", ()))
    results = dict(zip(setups, train_in_process_all(runs)))
    for run in results.values():
        assert run.returncode == 0, run.output[-5000:]
    assert dict(results["evaluated"].scalars("eval/loss")), "no evaluation ran"
    losses = {name: dict(run.scalars("train/loss")) for name, run in results.items()}
    assert losses["evaluated"] == pytest.approx(losses["plain"], abs=1e-6)
    for name in losses:
        assert len(losses[name]) == 2 * STEPS_PER_ITERATION
        for first_step in (1, 1 + STEPS_PER_ITERATION):
            assert losses[name][first_step] == pytest.approx(LN2, abs=1e-5), (name, losses[name])


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
