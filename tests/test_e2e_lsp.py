"""End-to-end: real Axolotl runs of `rl: lsp` (no dataset) on a tiny warmed-up Llama (CPU)."""

from __future__ import annotations

import json

import pytest
from conftest import (
    LORA,
    Run,
    lsp_config,
    read_jsonl,
    train_in_process,
    unchanged_parameters,
    with_attention_dropout,
    with_reward_module,
)

pytestmark = pytest.mark.e2e
STEPS = 3
METRICS = [
    "lsp/solver_reward",
    "lsp/challenger_reward",
    "lsp/query_length",
    "lsp/answer_length",
    "lsp/zero_std_frac",
    "lsp/degenerate_query_frac",
    "lsp/kl",
]
# A reward with spread in every group (answers differ in length), so every step
# carries signal for both roles whatever the tiny model's arithmetic.
@pytest.fixture(scope="module")
def lsp_run(tmp_path_factory, arithmetic_model_dir, reward_model_dir) -> Run:
    """LSP (self-reward on) with every task-reward source: the arithmetic reward
    function and a (random) reward model, weighted; full fine-tuning."""
    out = with_reward_module(tmp_path_factory.mktemp("lsp-full"))
    cfg = lsp_config(arithmetic_model_dir, out)
    cfg["selfplay"]["lsp"].update({"reward_model": str(reward_model_dir), "reward_weights": [1.0, 0.5]})
    run = train_in_process(cfg, out / "lsp.yml")
    return run


def test_lsp_logs_every_metric(lsp_run):
    logs = lsp_run.logs()
    assert len(logs) == STEPS
    for name in METRICS + ["lsp/self_reward", "lsp/judge_parse_fail_frac"]:
        assert name in logs[0], name
        assert lsp_run.scalars(f"train/{name}"), f"{name} missing from TensorBoard"
    for row in logs:
        assert 0.0 <= row["lsp/judge_parse_fail_frac"] <= 1.0
        assert 0.0 <= row["lsp/self_reward"] <= 7.0
        assert 0.0 <= row["lsp/zero_std_frac"] <= 1.0
        assert row["lsp/query_length"] > 0
    # the warmed-up model writes well-formed problems
    assert logs[0]["lsp/degenerate_query_frac"] < 0.5
    # θ starts at the reference (k3 = 0) and moves away from it
    assert logs[0]["lsp/kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["lsp/kl"] > 0


def test_lsp_writes_samples_every_logging_step(lsp_run):
    rows = read_jsonl(lsp_run.output_dir / "selfplay" / "lsp_samples.jsonl")
    assert {row["step"] for row in rows} == {1, 2, 3}
    assert len(rows) == 3 * 8  # the first 8 queries of each step (2 games × 4)
    for row in rows:
        assert {"seed", "query", "degenerate", "challenger_reward", "answers"} <= set(row)
        # 3 answers with their rewards, or none for a degenerate query
        assert len(row["answers"]) == (0 if row["degenerate"] else 3)
        for answer in row["answers"]:
            assert {"answer", "reward", "self_reward"} <= set(answer)
    # the untrained judge never writes `Score: k`: one warning says so
    assert "none of the judge's" in lsp_run.output


def test_lsp_every_parameter_moved_full_finetune(lsp_run, arithmetic_model_dir):
    unchanged = unchanged_parameters(arithmetic_model_dir, lsp_run.output_dir)
    assert not unchanged, f"parameters that did not move: {unchanged}"


def test_lsp_zero_lora_trains_every_adapter_parameter(tmp_path, arithmetic_model_dir):
    out = with_reward_module(tmp_path)
    # seed prompts: each game's Challenger prompt is built from one of these
    seeds = ("Write an addition problem.", "Write an addition problem!")
    (out / "seeds.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in seeds))
    # a model whose config carries attention dropout, and LoRA dropout: both switched off
    model_dir = with_attention_dropout(arithmetic_model_dir, tmp_path / "dropout-model")
    cfg = lsp_config(model_dir, out, datasets=[{"path": "seeds.jsonl", "field": "topic"}], **{**LORA, "lora_dropout": 0.5})
    cfg["selfplay"]["lsp"].update(
        {
            "self_reward": False,
            "reward_funcs": ["varied.by_text"],  # distinct answers, distinct rewards: every step moves
            "challenger_prompt": "{seed}",
        }
    )
    report = tmp_path / "moved.json"
    run = train_in_process(cfg, out / "lsp_zero.yml", "--param-report", str(report))
    moved = json.loads(report.read_text())
    assert moved and all("lora_" in name for name in moved), "only adapter weights are trainable"
    assert all(moved.values()), [n for n, m in moved.items() if not m]
    logs = run.logs()
    assert len(logs) == STEPS
    for name in METRICS:
        assert name in logs[0], name
    assert "lsp/self_reward" not in logs[0]  # LSP-Zero: no judge
    # the reference is the adapter-disabled base: equal to the policy before the first update
    # (dropout is off: with it on the policy forward would already differ), then not
    assert logs[0]["lsp/kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["lsp/kl"] > 0
    assert (run.output_dir / "adapter_model.safetensors").exists()
    samples = read_jsonl(run.output_dir / "selfplay" / "lsp_samples.jsonl")
    assert samples and {row["seed"] for row in samples} <= set(seeds)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_attention_implementation_reaches_every_lsp_model(adapter, tmp_path, arithmetic_model_dir, reward_model_dir):
    """The configured `attn_implementation` (flash_attention_2 on GPUs; eager here, not
    the library default sdpa) reaches the policy's generations, the reference model
    (judge and KL scoring: a frozen copy with full fine-tuning, the adapter-disabled
    policy with LoRA) and the reward model. The LoRA case is also LSP's judge under LoRA."""
    attn = "eager"
    out = with_reward_module(tmp_path)
    cfg = lsp_config(arithmetic_model_dir, out, attn_implementation=attn, max_steps=1, **(LORA if adapter == "lora" else {}))
    cfg["selfplay"]["lsp"]["reward_model"] = str(reward_model_dir)
    probe = tmp_path / "attn.json"
    run = train_in_process(cfg, out / "attn.yml", "--probe-attn", str(probe))
    seen = json.loads(probe.read_text())
    passes = [name for name, _, _ in seen]
    # challenger + solver + judge generations, reference scoring, reward model
    assert passes.count("generate_responses") == 3
    assert passes.count("score_response_tokens") == 1 and passes.count("reward_model") == 1
    assert {impl for _, impl, _ in seen} == {attn}, seen
    assert 0.0 <= run.logs()[0]["lsp/judge_parse_fail_frac"] <= 1.0
