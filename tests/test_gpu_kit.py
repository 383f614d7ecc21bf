"""The GPU proof kit's pass/fail logic (scripts/gpu_check.py), as pure functions: no model, no GPU."""

import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

LOG = """
 12%|#| 1/8 {'loss': '0.6931', 'grad_norm': '1.272', 'logps/real': '-400.5', 'logps/generated': '-380', 'selfplay/iteration': '0', 'tokens/trainable': 118, 'epoch': '0.125'}
 25%|#| 2/8 {'loss': '0.6542', 'grad_norm': '1.377', 'logps/real': '-399', 'logps/generated': '-381', 'selfplay/iteration': '0', 'tokens/trainable': 118, 'epoch': '0.25'}
{'train_runtime': '6.749', 'train_loss': '0.6124'}
 50%|#| 3/8 {'loss': '%s', 'grad_norm': '%s', 'logps/real': '-401', 'logps/generated': '-379', 'selfplay/iteration': '1', 'tokens/trainable': 118, 'epoch': '1.1'}
"""


def run_log(first_loss_of_iteration_1: str, grad_norm: str = "1.0") -> str:
    return LOG.replace("'%s', 'grad_norm': '%s'", f"'{first_loss_of_iteration_1}', 'grad_norm': '{grad_norm}'")


def test_parses_every_step_dict_and_only_those():
    rows = gpu_check.parse_train_logs(run_log("0.6932"))
    assert [r["loss"] for r in rows] == [0.6931, 0.6542, 0.6932]
    assert rows[0]["tokens/trainable"] == 118.0
    assert [r["loss"] for r in gpu_check.first_losses_per_iteration(rows)] == [0.6931, 0.6932]


def test_bf16_tolerance_scales_with_the_log_probs_and_fp32_is_the_print_floor():
    # bf16: u = 2^-8, beta 0.1, |lp(y)| + |lp(y')| = 780 -> 0.1 * 780 / 256
    assert math.isclose(gpu_check.ln2_tolerance(0.1, -400.0, -380.0, "bf16"), 0.1 * 780 / 256)
    assert gpu_check.ln2_tolerance(0.1, -400.0, -380.0, "fp32") == gpu_check.PRINT_RESOLUTION


def test_first_loss_of_each_iteration_must_be_ln2_within_tolerance():
    assert gpu_check.check_spin_logs(gpu_check.parse_train_logs(run_log("0.7")), 0.1, "bf16", 2) == []
    problems = gpu_check.check_spin_logs(gpu_check.parse_train_logs(run_log("0.7")), 0.1, "fp32", 2)
    assert len(problems) == 1 and problems[0].startswith("iteration 1: first loss 0.7000")
    problems = gpu_check.check_spin_logs(gpu_check.parse_train_logs(run_log("0.6931")), 0.1, "fp32", 3)
    assert problems == ["expected 3 iterations in the logs, found 2"]


def test_any_non_finite_logged_value_fails():
    problems = gpu_check.check_spin_logs(gpu_check.parse_train_logs(run_log("0.6931", grad_norm="nan")), 0.1, "bf16", 2)
    assert problems == ["step 3: non-finite grad_norm"]
    assert gpu_check.check_spin_logs([], 0.1, "bf16", 2) == ["no training logs found"]
