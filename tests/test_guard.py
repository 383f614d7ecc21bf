"""A diverging run stops at once with one clear error and leaves no checkpoint of bad weights."""

from __future__ import annotations

import math

import pytest
from conftest import RUN_TRAIN, base_config, lsp_config, python_script, with_reward_module, write_config

from axolotl_selfplay.guard import NonFiniteError, check_finite

NAN_REWARD = '''
def nan_reward(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)
'''


def test_check_finite_names_every_bad_value_and_the_step():
    check_finite({"loss": 0.7, "logps/real": -12.0}, step=3, where="x")  # finite: no error
    with pytest.raises(NonFiniteError) as error:
        check_finite({"loss": math.nan, "logps/real": -12.0, "rewards/real": math.inf}, step=3, where="iteration 1")
    message = str(error.value)
    assert "step 3" in message and "`loss` = nan" in message and "`rewards/real` = inf" in message
    assert "logps/real" not in message and "iteration 1" in message
    assert "learning_rate" in message and "bf16" in message  # likely causes, with the keys to change


def _train_expecting_failure(cfg, path):
    proc = python_script([RUN_TRAIN, str(write_config(cfg, path))], cwd=str(path.parent))
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_diverging_spin_run_stops_at_the_first_non_finite_step(tmp_path, tiny_model_dir):
    """An absurd learning rate: the weights after step 1 are huge but finite, and step 2's
    log-probs overflow. HF would log the last finite loss and train on; the run stops at step 2
    instead, before its update, and before checkpoint-2."""
    cfg = base_config(tiny_model_dir, tmp_path, learning_rate=1e30, save_strategy="steps", save_steps=1)
    output = _train_expecting_failure(cfg, tmp_path / "diverge.yml")
    assert "NonFiniteError: training stopped at step 2: non-finite `loss` = nan" in output
    assert "`logps/real` = " in output and "self-play iteration 0" in output
    assert "lower `learning_rate`" in output
    assert (tmp_path / "run" / "checkpoint-1").exists() and not (tmp_path / "run" / "checkpoint-2").exists()


def test_weights_guard_stops_before_nan_weights_are_saved_or_sampled(tiny_model_dir):
    """After an optimizer step that left NaN/inf in the weights, the callback raises (HF
    calls on_step_end before it saves a checkpoint or the next rollout samples)."""
    from types import SimpleNamespace

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from axolotl_selfplay.guard import WeightsGuard

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    guard = WeightsGuard(SimpleNamespace(model=model, accelerator=Accelerator(cpu=True)))
    state = SimpleNamespace(global_step=7)
    guard.on_step_end(None, state, None)  # finite: nothing happens
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"after optimizer step 7: .*`model.layers.1.mlp.up_proj.weight`"):
        guard.on_step_end(None, state, None)


def test_nan_reward_stops_lsp_at_the_first_step(tmp_path, arithmetic_model_dir):
    out = with_reward_module(tmp_path)
    (out / "bad_rewards.py").write_text(NAN_REWARD)
    cfg = lsp_config(arithmetic_model_dir, out, save_strategy="steps", save_steps=1)
    cfg["selfplay"]["lsp"].update({"reward_funcs": ["bad_rewards.nan_reward"], "self_reward": False})
    output = _train_expecting_failure(cfg, out / "nan.yml")
    assert "NonFiniteError: training stopped at step 1: non-finite" in output
    assert "`lsp/solver_reward` = nan" in output
    assert not (out / "run" / "checkpoint-1").exists()
