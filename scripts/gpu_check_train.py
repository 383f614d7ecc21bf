"""Axolotl's train entry point in-process (what `accelerate launch -m axolotl.cli.train` runs on
one rank), timing every optimizer step and recording the peak device memory (GPU proof kit).

    python scripts/gpu_check_train.py CONFIG.yml STEPS.json

STEPS.json: {"step_seconds": [...], "peak_gib": float} — each step timed from on_step_begin to
on_step_end with the device synchronised, so generation and scoring at an iteration's start are
not counted as step time; the peak (torch.cuda.max_memory_allocated) covers the whole run.
"""

import json
import sys
import time

import torch
from transformers import Trainer, TrainerCallback


def main(config: str, steps_file: str) -> None:
    times: list[float] = []

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            times.append(time.perf_counter() - self.started)
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            with open(steps_file, "w") as f:
                json.dump({"step_seconds": times, "peak_gib": peak}, f)

    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())

    Trainer.__init__ = init
    from axolotl.cli.train import do_cli

    do_cli(config=config)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
