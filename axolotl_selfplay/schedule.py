"""The learning-rate schedule and the optimizer at self-play iteration boundaries (SPIN family).

In the official SPIN code every iteration is a separate training run from the
previous iteration's weights: a fresh optimizer and a fresh learning-rate
schedule (warm-up, then decay to 0 over that iteration's steps), each iteration
with its own peak learning rate. Here the K iterations are one Trainer run, so:

- `IterationSchedule` holds the scheduler Axolotl builds for ONE iteration's
  steps (any of Axolotl's: linear, cosine, one_cycle, rex, ...) and rewinds it
  to its first step at every iteration start (`restart_schedule`). With
  `learning_rates` the optimizer runs at the scheduler's value × (that
  iteration's peak / `learning_rate`).
- `reset_optimizer_state` forgets Adam's / RMSprop's moving averages and step
  counts, as a freshly built optimizer has none (`reset_optimizer`).

The trainer calls both at the start of each iteration, before its first
optimizer step (`at_iteration_start`); a run resumed mid-iteration loads the
scheduler's position and the optimizer state from the checkpoint and does not
restart either, so it continues exactly where the interrupted run was.
"""

from __future__ import annotations

import copy


class IterationSchedule:
    """A learning-rate scheduler for the Trainer that restarts at every self-play iteration.

    `inner` is the scheduler Axolotl built (for one iteration's steps when
    `restart` is true, for the whole run otherwise); `scales[t]` multiplies its
    learning rates during iteration t. The Trainer steps it once per optimizer
    step and saves `state_dict()` in every checkpoint, as for any scheduler;
    `begin_iteration` is called by the self-play trainer.
    """

    def __init__(self, inner, optimizer, *, restart: bool, scales: list[float] | None = None):
        self.inner = inner
        self.optimizer = optimizer
        self.restart = restart
        self.scales = scales
        self.iteration = 0
        # The scheduler's state at its first step: rewinding to it is a restart. A state
        # dict captures any scheduler's position (it is what a resumed run loads).
        self._first_step = copy.deepcopy(inner.state_dict())
        self._apply()

    @property
    def scale(self) -> float:
        return self.scales[self.iteration] if self.scales else 1.0

    def begin_iteration(self, iteration: int, restart: bool) -> None:
        """Enter `iteration`; `restart`: no step of it has been taken yet (not a resumed run
        in the middle of it), so the schedule starts over when `restart_schedule` is on."""
        self.iteration = iteration
        if restart and self.restart:
            # a copy: some schedulers' load_state_dict consumes the dict (Axolotl's jagged restarts)
            self.inner.load_state_dict(copy.deepcopy(self._first_step))
        self._apply()

    def _apply(self) -> None:
        """Optimizer learning rates = the inner scheduler's × this iteration's scale."""
        for group, lr in zip(self.optimizer.param_groups, self.inner.get_last_lr()):
            group["lr"] = lr * self.scale

    # -- what the Trainer (and DeepSpeed's engine) call --------------------------------

    def step(self, *args, **kwargs) -> None:
        # The inner scheduler sees its own, unscaled rates: some compute the next rate
        # from the current one.
        for group, lr in zip(self.optimizer.param_groups, self.inner.get_last_lr()):
            group["lr"] = lr
        self.inner.step(*args, **kwargs)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [lr * self.scale for lr in self.inner.get_last_lr()]

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.iteration = state["iteration"]
        self._apply()


def find_iteration_schedule(scheduler) -> IterationSchedule | None:
    """The IterationSchedule inside the Trainer's scheduler: accelerate wraps it
    (`.scheduler`) when DeepSpeed's engine steps it."""
    while scheduler is not None and not isinstance(scheduler, IterationSchedule):
        scheduler = getattr(scheduler, "scheduler", None)
    return scheduler


def reset_optimizer_state(optimizer) -> int:
    """Forget the per-parameter state of `optimizer` (moving averages, step counts), as a
    freshly built optimizer has none; returns how many parameters had state.

    torch optimizers (and bitsandbytes', DeepSpeed's CPU / fused Adam) create their
    state lazily at the next step. `optimizer.state` reaches the real optimizer through
    every wrapper: accelerate's `AcceleratedOptimizer` and DeepSpeed's ZeRO, BF16 and
    FP16 optimizers all forward `state` to the optimizer they wrap (under ZeRO it holds
    the state of this rank's flat partitions).
    """
    state = optimizer.state
    count = len(state)
    state.clear()
    return count


def at_iteration_start(epoch: float, iteration: int, epochs_per_iteration: int) -> bool:
    """Whether no optimizer step of `iteration` has been taken at Trainer epoch `epoch`
    (a float: 1.5 when a run resumes in the middle of its second epoch)."""
    return abs(epoch - iteration * epochs_per_iteration) < 1e-6


def iteration_warmup_steps(cfg, steps_per_iteration: int) -> int:
    """Axolotl's warm-up rule (`_configure_warmup_and_logging` in core/builders/base.py)
    applied to one iteration's steps instead of the whole run: `warmup_steps` as given,
    `warmup_ratio` × the iteration's steps, or Axolotl's default of 3 % (at most 100)."""
    if cfg.get("warmup_steps") is not None:
        warmup = int(cfg["warmup_steps"])
    elif cfg.get("warmup_ratio") is not None:
        warmup = max(int(cfg["warmup_ratio"] * steps_per_iteration), 0)
    else:
        warmup = min(int(0.03 * steps_per_iteration), 100)
    return 2 if warmup == 1 else warmup  # as Axolotl does
