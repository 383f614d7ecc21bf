"""Crash-consistent checkpoints: a run killed at any moment resumes to exactly the uninterrupted run.

Unit tests of checkpoints.py (which checkpoint a resumed run starts from), then real runs of
Axolotl's training entry point (tests/scripts/run_train.py, what `axolotl train` runs in each
process) killed with SIGKILL at chosen moments — inside a checkpoint save included — and
restarted with `auto_resume_from_checkpoints`: the finished weights and every iteration's
exported opponents must equal those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import (
    RUN_TRAIN,
    _env,
    base_config,
    free_port,
    lsp_config,
    read_jsonl,
    warm_python,
    with_reward_module,
    write_config,
)

from axolotl_selfplay.checkpoints import (
    TRAINER_STATE,
    IncompleteCheckpointError,
    newest_complete,
    resume_checkpoint,
)
from axolotl_selfplay.spin.store import STATE_FILE, OpponentStore
from axolotl_selfplay.spin.trainer import SpinTrainer

LOG = logging.getLogger("test_checkpoints")


def _checkpoint(run_dir: Path, step: int, state: str | None = "{}", store: bool = True, log_history=()) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state is not None:
        text = state if state != "{}" else json.dumps({"global_step": step, "log_history": list(log_history)})
        (folder / TRAINER_STATE).write_text(text)
    if store:
        (folder / STATE_FILE).write_bytes(b"")
    return folder


# -- which checkpoint a resumed run starts from -----------------------------------------------


def test_auto_resume_skips_an_interrupted_save(tmp_path, caplog):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    torn = _checkpoint(tmp_path, 6, state='{"global_step": 6, "log_hi')  # killed while HF wrote it
    _checkpoint(tmp_path, 8, state=None)  # killed before HF marked it
    assert newest_complete(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="test_checkpoints"):
        chosen = resume_checkpoint(str(tmp_path / "checkpoint-8"), str(tmp_path), auto_resume=True, log=LOG)
    assert chosen == str(tmp_path / "checkpoint-4")
    assert "checkpoint-8 is incomplete" in caplog.text and "resuming from" in caplog.text
    assert resume_checkpoint(str(torn), str(tmp_path), auto_resume=True, log=LOG) == str(tmp_path / "checkpoint-4")
    assert resume_checkpoint(True, str(tmp_path), auto_resume=False, log=LOG) == str(tmp_path / "checkpoint-4")
    assert resume_checkpoint(str(tmp_path / "checkpoint-2"), str(tmp_path), auto_resume=True, log=LOG) == str(
        tmp_path / "checkpoint-2"
    )


def test_a_named_incomplete_checkpoint_stops_the_run_naming_the_one_to_use(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, state=None)
    with pytest.raises(IncompleteCheckpointError) as error:
        resume_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path), auto_resume=False, log=LOG)
    message = str(error.value)
    assert f"{tmp_path / 'checkpoint-4'} is incomplete" in message
    assert f"`resume_from_checkpoint: {tmp_path / 'checkpoint-2'}`" in message


def test_an_interrupted_first_save_resumes_from_the_start(tmp_path):
    _checkpoint(tmp_path, 1, state=None)
    assert resume_checkpoint(str(tmp_path / "checkpoint-1"), str(tmp_path), auto_resume=True, log=LOG) is None
    assert resume_checkpoint(None, str(tmp_path), auto_resume=True, log=LOG) is None


def _trainer_with_store() -> SimpleNamespace:
    return SimpleNamespace(opponents=OpponentStore([[1, 2]], [[3, 4]]), eval_opponents=None)


def test_a_self_play_checkpoint_without_its_opponents_is_refused(tmp_path):
    """Regenerating them would make the resumed (half-trained) model the opponent."""
    folder = _checkpoint(tmp_path, 3, store=False, log_history=[{"loss": 0.69, "selfplay/iteration": 0.0}])
    with pytest.raises(IncompleteCheckpointError, match="written by a self-play run but holds no opponent store"):
        SpinTrainer._load_stores(_trainer_with_store(), str(folder))


def test_a_checkpoint_of_a_run_without_self_play_starts_self_play(tmp_path, caplog):
    folder = _checkpoint(tmp_path, 3, store=False, log_history=[{"loss": 1.2}])  # e.g. the SFT run
    with caplog.at_level(logging.WARNING):
        SpinTrainer._load_stores(_trainer_with_store(), str(folder))
    assert "is a checkpoint of a run without self-play" in caplog.text


# -- real runs, killed and restarted -----------------------------------------------------------

SAVING = {
    # 64 rows / 22 per step = 3 steps per iteration, 6 in all; a checkpoint at every step
    "micro_batch_size": 22,
    "save_strategy": "steps",
    "save_steps": 1,
    "save_total_limit": 2,
    "auto_resume_from_checkpoints": True,
    "lr_scheduler": "linear",
    "selfplay": {"iterations": 2, "generation": {"max_new_tokens": 10, "batch_size": 32}},
}


def _run(config: Path, kill_at: str | None, launcher: list[str] | None = None, env=None) -> subprocess.CompletedProcess:
    """One run of Axolotl's training entry point in a session of its own (the kill takes its
    whole process group, never pytest), optionally killed at `kill_at`."""
    args = [RUN_TRAIN, str(config), *(["--kill-at", kill_at] if kill_at else [])]
    if launcher is None:  # one process: forked from the warm Python, in a process group of its own
        return warm_python().run(args, cwd=config.parent, env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)
    command = [*launcher, *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=_env({"OMP_NUM_THREADS": "1", **(env or {})}),
        cwd=str(config.parent), timeout=900, start_new_session=True,
    )


def _final_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "model.safetensors"))


def _assert_same_run(resumed_dir: Path, full_dir: Path, iterations: int = 2) -> None:
    full, resumed = _final_weights(full_dir), _final_weights(resumed_dir)
    assert full.keys() == resumed.keys()
    for name, tensor in full.items():
        assert (resumed[name] - tensor).abs().max().item() <= 1e-6, name
    for t in range(iterations):
        name = f"iter_{t}.jsonl"
        assert read_jsonl(resumed_dir / "selfplay" / name) == read_jsonl(full_dir / "selfplay" / name), name


@pytest.mark.e2e
def test_killed_at_any_moment_resumes_to_the_uninterrupted_run(tmp_path, tiny_model_dir):
    """Killed three times, each at a different moment: while HF writes trainer_state.json (a torn
    file), when the opponent store's save starts inside a checkpoint save, and when HF starts
    rotating older checkpoints away. Each restart resumes from the newest complete checkpoint:
    the one before the torn one, the one before the interrupted save, and the newest (the kill
    came after it was complete) — mid-iteration, so the opponents come from the store."""
    full_cfg = base_config(tiny_model_dir, tmp_path / "full", **SAVING)
    full = _run(write_config(full_cfg, tmp_path / "full" / "config.yml"), None)
    assert full.returncode == 0, full.stderr[-5000:]

    cfg = base_config(tiny_model_dir, tmp_path / "killed", **SAVING)
    config = write_config(cfg, tmp_path / "killed" / "config.yml")
    run_dir = Path(cfg["output_dir"])
    # (kill point, the checkpoint the next start must resume from)
    for kill_at, resumes_from in (("trainer-state:2", 1), ("store:2", 2), ("rotate:2", 4)):
        killed = _run(config, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.returncode, killed.stderr[-3000:])
        assert newest_complete(str(run_dir)) == str(run_dir / f"checkpoint-{resumes_from}"), kill_at
    finished = _run(config, None)
    assert finished.returncode == 0, finished.stderr[-5000:]
    output = finished.stdout + finished.stderr
    assert f"resumed iteration 1 opponents from {run_dir / 'checkpoint-4'}" in output
    _assert_same_run(run_dir, Path(full_cfg["output_dir"]))


@pytest.mark.e2e
def test_lsp_killed_mid_run_resumes_to_the_uninterrupted_run(tmp_path, arithmetic_model_dir):
    """LSP's games are seeded by the micro-step: a resumed run must count it from the
    checkpoint's step, or it replays the first steps' games."""
    lsp = {"save_strategy": "steps", "save_steps": 1, "auto_resume_from_checkpoints": True}

    def config(name):
        cfg = lsp_config(arithmetic_model_dir, with_reward_module(tmp_path / name), **lsp)
        cfg["selfplay"]["lsp"]["self_reward"] = False
        return cfg, write_config(cfg, tmp_path / name / "config.yml")

    full_cfg, full_config = config("full")
    full = _run(full_config, None)
    assert full.returncode == 0, full.stderr[-5000:]
    cfg, killed_config = config("killed")
    killed = _run(killed_config, "step:3")  # checkpoints 1 and 2 are complete
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = _run(killed_config, None)
    assert finished.returncode == 0, finished.stderr[-5000:]
    _assert_same_run(Path(cfg["output_dir"]), Path(full_cfg["output_dir"]), iterations=0)
    samples = "selfplay/lsp_samples.jsonl"
    assert read_jsonl(Path(cfg["output_dir"]) / samples) == read_jsonl(Path(full_cfg["output_dir"]) / samples)


@pytest.mark.e2e
@pytest.mark.distributed
@pytest.mark.one_version("0.19", why="the 2-process runs live on 0.19; both versions run the 1-process kill tests")
def test_a_rank_killed_inside_a_checkpoint_save_resumes_to_the_uninterrupted_run(tmp_path, tiny_model_dir):
    """Two processes (DDP on gloo): rank 1 dies when the opponent store's save starts (a
    collective: every rank's shard is gathered to the main process, which writes it);
    torchrun takes rank 0 down. The restart resumes from the checkpoint before."""
    shim = str(Path(__file__).resolve().parent / "distributed_shim")
    env = {"PYTHONPATH": os.pathsep.join([shim, os.environ.get("PYTHONPATH", "")])}
    two = {**SAVING, "micro_batch_size": 11, "ddp_timeout": 60}  # 64 / (11 × 2) = 3 steps per iteration

    def launcher():
        torchrun = str(Path(sys.executable).parent / "torchrun")
        return [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port())]

    full_cfg = base_config(tiny_model_dir, tmp_path / "full", **two)
    full = _run(write_config(full_cfg, tmp_path / "full" / "config.yml"), None, launcher(), env)
    assert full.returncode == 0, full.stderr[-5000:]

    cfg = base_config(tiny_model_dir, tmp_path / "killed", **two)
    config = write_config(cfg, tmp_path / "killed" / "config.yml")
    run_dir = Path(cfg["output_dir"])
    killed = _run(config, "store:5@1", launcher(), env)  # the save of checkpoint-5, mid-iteration 1
    assert killed.returncode != 0
    assert newest_complete(str(run_dir)) == str(run_dir / "checkpoint-4")
    finished = _run(config, None, launcher(), env)
    assert finished.returncode == 0, finished.stderr[-5000:]
    _assert_same_run(run_dir, Path(full_cfg["output_dir"]))
