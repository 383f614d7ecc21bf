"""The GPU proof kit's pass/fail logic (scripts/gpu_check.py), as pure functions: no model, no GPU."""

import importlib.util
import math
import os
import sys
import tarfile
import time
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


def test_fp32_tolerance_from_the_pairs_measured_rounding_by_hand():
    # beta 0.1; pair errors e = 0.2 + 0.1 = 0.3 and 0.4 + 0.3 = 0.7; the reference's taken as the
    # batch's worst, 0.7: H = 1.0 and 1.4; bound per pair beta*H*sigmoid(beta*H):
    #   0.1 * 1.0 * sigmoid(0.10) = 0.1 * 0.524979 = 0.0524979
    #   0.1 * 1.4 * sigmoid(0.14) = 0.14 * 0.534943 = 0.0748921
    # mean over 2 pairs + 1 identical (at ln 2 exactly): (0.0524979 + 0.0748921) / 3 = 0.0424633
    tol = gpu_check.ln2_tolerance_fp32(0.1, [(0.2, 0.1), (-0.4, 0.3)], dropped=1)
    assert math.isclose(tol, 0.0424633, rel_tol=1e-5)
    # the same without the identical pair: / 2
    assert math.isclose(gpu_check.ln2_tolerance_fp32(0.1, [(0.2, 0.1), (0.4, 0.3)]), 0.063695, rel_tol=1e-5)
    # fp32-sized errors fall to the print floor; no pairs at all: the floor
    assert gpu_check.ln2_tolerance_fp32(0.1, [(1e-6, 1e-6)]) == gpu_check.PRINT_RESOLUTION
    assert gpu_check.ln2_tolerance_fp32(0.1, []) == gpu_check.PRINT_RESOLUTION


def test_fp32_tolerance_is_far_tighter_than_the_worst_case_bound():
    # the issue's numbers: lp(y) ≈ −126, lp(y') ≈ −763 gave ±0.35; bf16 errors of ~0.05 nats per
    # sequence (what the scoring comparison measures) allow ~0.01
    assert math.isclose(gpu_check.ln2_tolerance(0.1, -126.0, -763.0, "bf16"), 0.1 * 889 / 256)
    assert gpu_check.ln2_tolerance_fp32(0.1, [(0.05, 0.05)] * 8) < 0.011


def fp32_record(loss, loss_fp32, errors=((0.01, 0.02),), iteration=0):
    return {"iteration": iteration, "loss": loss, "loss_fp32": loss_fp32, "beta": 0.1,
            "pair_errors": [list(e) for e in errors], "dropped": 0}


def test_first_loss_against_the_same_batch_in_fp32():
    ln2 = math.log(2)
    passing = [fp32_record(ln2 + 0.0005, ln2, iteration=0), fp32_record(ln2 - 0.0009, ln2 + 1e-7, iteration=1)]
    assert gpu_check.check_fp32_first_steps(passing, 2) == []
    # a reference scored wrongly: 0.35 off passed the old bound, fails here
    problems = gpu_check.check_fp32_first_steps([fp32_record(ln2 + 0.35, ln2), passing[1]], 2)
    assert len(problems) == 1 and problems[0].startswith("iteration 0: first loss 1.043147 vs fp32 0.693147")
    assert gpu_check.check_fp32_first_steps([fp32_record(float("nan"), ln2)], 1)[0].startswith("iteration 0")
    assert gpu_check.check_fp32_first_steps([fp32_record(0.7, 0.7)], 1) == [
        "iteration 0: fp32 first loss 0.700000 is not ln 2"]
    assert gpu_check.check_fp32_first_steps(passing[:1], 2) == [
        "fp32 check: expected 2 iterations' first batches, found 1"]


def test_sdpa_backend_from_profiler_op_names():
    cuda_efficient = ["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_efficient_attention",
                      "aten::_efficient_attention_forward", "aten::_scaled_dot_product_efficient_attention_backward"]
    assert gpu_check.sdpa_backends(cuda_efficient) == ["memory-efficient"]
    cuda_flash = ["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
                  "aten::_flash_attention_forward"]
    assert gpu_check.sdpa_backends(cuda_flash) == ["flash"]
    assert gpu_check.sdpa_backends(["aten::_scaled_dot_product_cudnn_attention"]) == ["cuDNN"]
    assert gpu_check.sdpa_backends(["aten::_scaled_dot_product_flash_attention_for_cpu"]) == ["flash (CPU kernel)"]
    assert gpu_check.sdpa_backends(["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_attention_math"]) \
        == ["math"]
    assert gpu_check.sdpa_backends(["aten::scaled_dot_product_attention"]) == ["math"]
    assert gpu_check.sdpa_backends([]) == []


IMAGE_LIST = """# comment
torch==2.11.0
Pydantic_Core==2.46.5  # a comment
huggingface_hub
cuda-toolkit[cublas]==13.0.2
"""


def test_environment_audit_fails_on_a_missing_an_extra_or_another_version():
    image = gpu_check.read_package_list(IMAGE_LIST)
    assert image == {"torch": "2.11.0", "pydantic-core": "2.46.5", "huggingface-hub": None, "cuda-toolkit": "13.0.2"}
    exact = {"torch": "2.11.0", "pydantic-core": "2.46.5", "huggingface-hub": "1.33.0", "cuda-toolkit": "13.0.2"}
    assert gpu_check.audit_environment(exact, image, set()) == []
    assert gpu_check.audit_environment({**exact, "pydantic": "2.13.5"}, image, set()) == [
        "not in the image's list nor the wheelhouse: pydantic 2.13.5"]
    assert gpu_check.audit_environment({**exact, "pydantic": "2.13.5"}, image, {"pydantic"}) == []
    missing = dict(exact)
    del missing["huggingface-hub"]
    assert gpu_check.audit_environment(missing, image, set()) == ["missing: huggingface-hub"]
    assert gpu_check.audit_environment({**exact, "torch": "2.14.1"}, image, set()) == [
        "torch 2.14.1, the image's is 2.11.0"]


def test_the_image_list_has_no_pydantic_and_the_wheelhouse_carries_it():
    root = Path(__file__).resolve().parents[1]
    image = gpu_check.read_package_list((root / "scripts" / "gpu_image_requirements.txt").read_text())
    assert len(image) == 197 and image["torch"] == "2.11.0" and image["transformers"] == "5.17.0"
    carried = {"pydantic", "pydantic-core", "annotated-types", "typing-inspection"}
    assert not carried & set(image)
    wheelhouse = (root / "scripts" / "gpu_wheelhouse.sh").read_text()
    for name in carried:
        assert f" {name}==" in wheelhouse


def test_a_timed_out_part_kills_its_whole_process_tree(tmp_path):
    # a child that starts a grandchild and both sleep: the time limit must end both
    pids = tmp_path / "pids"
    script = (f"import os, subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
              f"print('started', flush=True)\n"
              f"time.sleep(60)\n")
    start = time.monotonic()
    rc, text = gpu_check.run_logged([sys.executable, "-c", script], tmp_path / "logs" / "part.log", timeout=3)
    assert rc == 124 and "started" in text and time.monotonic() - start < 30
    assert "time limit of 3 s reached" in (tmp_path / "logs" / "part.log").read_text()
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), f"process {pid} outlived the time limit"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of ours is a zombie until reaped: that counts as ended
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_a_finished_part_leaves_no_straggler_and_its_full_log(tmp_path):
    pids = tmp_path / "pids"
    script = (f"import subprocess, sys\n"
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pids)!r}, 'w').write(str(child.pid))\n"
              f"print('x' * 10000)\n")
    rc, text = gpu_check.run_logged([sys.executable, "-c", script], tmp_path / "logs" / "part.log", timeout=30)
    assert rc == 0 and len(text) > 10000  # the whole output, not a tail
    pid = int(pids.read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_logs_are_packed_whole(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    out.mkdir()
    (work / "logs" / "part.log").write_text("line\n" * 100000)
    (work / "spin.yml").write_text("rl: spin\n")
    gpu_check.pack_logs(work, out)
    with tarfile.open(out / "gpu_logs.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["logs/part.log", "spin.yml"]
        assert tar.extractfile("logs/part.log").read() == b"line\n" * 100000
    assert (out / "gpu_logs.tar.gz").stat().st_size < 10000  # compressed
