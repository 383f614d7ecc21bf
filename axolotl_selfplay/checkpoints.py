"""Which checkpoint a resumed self-play run starts from, so that a kill at any moment resumes
to exactly the run it interrupted.

HF's Trainer writes a checkpoint folder file by file (model, optimizer, scheduler, RNG) and
marks it complete last, by writing `trainer_state.json`; only then does it rotate older
checkpoints away (`save_total_limit`). The self-play trainers write their own state (SPIN's
opponent stores) into the folder before HF's files, and clear a stale `trainer_state.json`
first, so that:

- a folder with a readable `trainer_state.json` holds everything the run needs;
- a run killed inside a save leaves a folder without one (or with a torn one), and the
  older complete checkpoints are still there.

`resume_checkpoint` turns the checkpoint Axolotl or the user asked for into one that is
complete: with `auto_resume_from_checkpoints` (Axolotl picked the newest folder) it falls back
to the newest complete checkpoint, logging both; a checkpoint the user named must be complete,
or the run stops naming the one to use. A complete checkpoint without the opponent store is
from a run without self-play (e.g. the SFT run self-play starts from), unless its log shows
self-play metrics: then the store is missing and the run stops instead of regenerating the
opponents with the wrong model.
"""

from __future__ import annotations

import json
import os
import re

TRAINER_STATE = "trainer_state.json"  # HF's: written last, it marks a checkpoint complete
SELFPLAY_METRIC = "selfplay/iteration"  # logged by every self-play run's trainer (spin/trainer.py)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class IncompleteCheckpointError(RuntimeError):
    """A checkpoint cannot be resumed; the message names it and the one to use."""


def trainer_state(folder: str) -> dict | None:
    """The checkpoint's trainer_state.json, or None when it is missing or torn."""
    try:
        with open(os.path.join(folder, TRAINER_STATE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_complete(folder: str) -> bool:
    return trainer_state(folder) is not None


def unmark_complete(folder: str) -> None:
    """Before a save writes into `folder` again (a run that resumed from an older checkpoint
    reaches the step of an interrupted save): the folder is incomplete until HF marks it."""
    try:
        os.remove(os.path.join(folder, TRAINER_STATE))
    except FileNotFoundError:
        pass


def checkpoints_of(run_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `run_dir`, oldest step first."""
    if not os.path.isdir(run_dir):
        return []
    steps = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := _CHECKPOINT.match(name))]
    return [os.path.join(run_dir, name) for _, name in sorted(steps)]


def newest_complete(run_dir: str, before: str | None = None) -> str | None:
    """The newest complete checkpoint of `run_dir` (older than `before`, when given)."""
    folders = checkpoints_of(run_dir)
    if before is not None and os.path.abspath(before) in map(os.path.abspath, folders):
        folders = folders[: list(map(os.path.abspath, folders)).index(os.path.abspath(before))]
    complete = [folder for folder in folders if is_complete(folder)]
    return complete[-1] if complete else None


def resume_checkpoint(requested, output_dir: str, auto_resume: bool, log) -> str | None:
    """The complete checkpoint to resume from, for `resume_from_checkpoint=requested`
    (a path, True for the newest of `output_dir`, or None/False for a fresh run)."""
    if not requested:
        return None
    if requested is True:
        chosen = newest_complete(output_dir)
        if chosen is None:
            raise IncompleteCheckpointError(f"no complete checkpoint in {output_dir} to resume from")
        return chosen
    requested = str(requested)
    if is_complete(requested):
        return requested
    fallback = newest_complete(os.path.dirname(os.path.abspath(requested)), before=requested)
    if auto_resume:
        # Axolotl picked the newest folder; the run was killed while writing it.
        log.warning(
            "self-play: %s is incomplete (the run was stopped while saving it: no readable %s); "
            "resuming from %s instead",
            requested,
            TRAINER_STATE,
            fallback or "the start (no complete checkpoint)",
        )
        return fallback
    use = f"set `resume_from_checkpoint: {fallback}`" if fallback else "remove `resume_from_checkpoint`"
    raise IncompleteCheckpointError(
        f"{requested} is incomplete: it has no readable {TRAINER_STATE} (the run was stopped while saving it). "
        f"Resume from the newest complete checkpoint: {use}, or set `auto_resume_from_checkpoints: true`."
    )


def is_selfplay_checkpoint(folder: str) -> bool:
    """Whether the run that wrote the complete checkpoint `folder` was a self-play run."""
    state = trainer_state(folder) or {}
    return any(SELFPLAY_METRIC in entry for entry in state.get("log_history", []))
