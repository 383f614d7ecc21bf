"""The self-play iterations in optimizer steps, and the learning-rate schedule and the
optimizer at iteration boundaries (SPIN family).

`StepPlan` counts the optimizer steps of K iterations of E epochs before any model
loads (`axolotl-selfplay check`, the `max_steps` warning).

In the official SPIN code every iteration is a separate training run from the
previous iteration's weights: a fresh optimizer and a fresh learning-rate
schedule (warm-up, then decay to 0 over that iteration's steps), each iteration
with its own peak learning rate. Here the K iterations are one Trainer run, so:

- `IterationSchedule` holds the scheduler Axolotl builds for ONE iteration's
  steps (any of Axolotl's: linear, cosine, one_cycle, rex, ...) and rewinds it
  to its first step at every iteration start (`restart_schedule`). With
  `learning_rates` the optimizer runs at the scheduler's value × (that
  iteration's peak / `learning_rate`).
- `reset_optimizer_state` leaves the optimizer as a freshly built one (`reset_optimizer`):
  no moving averages, step counts back at their start, for every optimizer family Axolotl
  builds that it is tested against (config.py's `check_reset_optimizer` refuses the others
  before the model loads).

The trainer calls both at the start of each iteration, before its first
optimizer step (`at_iteration_start`); a run resumed mid-iteration loads the
scheduler's position and the optimizer state from the checkpoint and does not
restart either, so it continues exactly where the interrupted run was.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from .distributed import launched_world_size


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


# Per-group values an optimizer step advances, kept in `param_groups` where `state.clear()` does
# not reach them: the schedule-free optimizers' step count `k`, weight sum and peak learning rate;
# the group step count of Axolotl's Dion and (Dist)Muon, and of DeepSpeed's FusedAdam / FusedLion
# (set when ZeRO loads a checkpoint; new per-parameter state starts from it). A fresh optimizer
# has its `defaults` value, or none.
GROUP_COUNTERS = ("step", "k", "weight_sum", "lr_max", "scheduled_lr")
# Per-parameter entries set when the optimizer is built and only read by its step: Axolotl's
# Muon marks each parameter as Muon's or AdamW's there.
BUILT_STATE = ("use_muon",)


def reset_optimizer_state(optimizer) -> int:
    """Leave `optimizer` as a freshly built one on the same parameters would be; returns how
    many parameters had state.

    The per-parameter state (moving averages, step counts) goes: optimizers create it
    again at their next step, as at their first. The group counters go back to their start,
    the entries set at construction stay, and bitsandbytes' paged buffers are reset in place.
    The state lives in the optimizer at the bottom of the wrappers (accelerate's
    `AcceleratedOptimizer`, DeepSpeed's ZeRO, BF16 and FP16 optimizers, each `.optimizer`; under
    ZeRO its parameters are this rank's flat partitions).
    """
    inner = _innermost(optimizer)
    state = inner.state
    count = len(state)
    if getattr(inner, "is_paged", False) and hasattr(inner, "init_state"):
        _reset_paged_state(inner)
    else:
        built = {param: {k: v for k, v in entries.items() if k in BUILT_STATE} for param, entries in state.items()}
        state.clear()
        for param, entries in built.items():
            if entries:
                state[param].update(entries)
    defaults = getattr(inner, "defaults", {})
    for group in inner.param_groups:
        for key in GROUP_COUNTERS:
            if key in defaults:
                group[key] = copy.deepcopy(defaults[key])
            else:
                group.pop(key, None)
    return count


def _innermost(optimizer):
    while hasattr(getattr(optimizer, "optimizer", None), "param_groups"):
        optimizer = optimizer.optimizer
    return optimizer


def _reset_paged_state(optimizer) -> None:
    """bitsandbytes' paged optimizers (`paged_adamw_8bit`, ...) allocate their large state
    buffers in CUDA managed memory, which bitsandbytes never frees (each buffer stays in its
    GlobalPageManager): a new state per iteration would keep every old one alive. So the
    fresh state is built by the optimizer's own `init_state` in ordinary memory and copied
    into the paged buffers it replaces."""
    paged, optimizer.is_paged = optimizer.is_paged, False
    try:
        for gindex, group in enumerate(optimizer.param_groups):
            for pindex, param in enumerate(group["params"]):
                old = dict(optimizer.state.get(param) or {})
                if not old:
                    continue  # never stepped: its first step allocates as usual
                optimizer.state[param].clear()
                optimizer.init_state(group, param, gindex, pindex)
                fresh = optimizer.state[param]
                for key, value in fresh.items():
                    buffer = old.get(key)
                    if getattr(buffer, "is_paged", False) and (buffer.shape, buffer.dtype) == (value.shape, value.dtype):
                        buffer.copy_(value)
                        fresh[key] = buffer
    finally:
        optimizer.is_paged = paged


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


@dataclass
class StepPlan:
    """How many optimizer steps the K iterations of E epochs take, and what `max_steps` does to them
    (known before the model loads: `axolotl-selfplay check` prints it, the data preparation warns)."""

    examples: int
    iterations: int
    epochs_per_iteration: int
    steps_per_epoch: int
    max_steps: int | None

    @classmethod
    def of(cls, cfg, examples: int) -> StepPlan:
        sp = cfg.selfplay
        world = launched_world_size()
        batches = math.ceil(examples / (cfg.micro_batch_size * world))  # per rank, as HF's dataloader
        steps = max(1, math.ceil(batches / (cfg.gradient_accumulation_steps or 1)))
        max_steps = cfg.get("max_steps")
        return cls(
            examples,
            sp["iterations"],
            sp["epochs_per_iteration"],
            steps,
            max_steps if max_steps and max_steps > 0 else None,
        )

    @property
    def steps_per_iteration(self) -> int:
        return self.steps_per_epoch * self.epochs_per_iteration

    @property
    def total_steps(self) -> int:
        return self.steps_per_iteration * self.iterations

    @property
    def iterations_run(self) -> int:
        if self.max_steps is None:
            return self.iterations
        return min(self.iterations, math.ceil(self.max_steps / self.steps_per_iteration))

    def warning(self) -> str | None:
        """`max_steps` overrides the epochs: say which iterations will really run.

        A warning, not an error: `max_steps` is Axolotl's usual budget cap and smoke-test
        knob, and the run it gives is still correct self-play, only shorter or longer."""
        m, per, k = self.max_steps, self.steps_per_iteration, self.iterations
        if m is None or m == self.total_steps:
            return None
        plan = f"{k} iterations × {per} steps = {self.total_steps} steps"
        if m > self.total_steps:
            return (
                f"`max_steps: {m}` is longer than the self-play schedule ({plan}): the last "
                f"{m - self.total_steps} steps train again on iteration {k - 1}'s opponents and no new "
                "ones are generated. Remove `max_steps`, or raise `selfplay.iterations`."
            )
        run = self.iterations_run
        message = (
            f"`max_steps: {m}` stops the run before the end of the self-play schedule ({plan}): "
            f"only {run} of {k} iterations will run"
        )
        last_steps = m - (run - 1) * per
        if last_steps < per:
            message += (
                f", and the last one generates opponents for all {self.examples} prompts to train "
                f"{last_steps} of its {per} steps"
            )
        return message + (
            f". Set `selfplay.iterations: {max(1, m // per)}` and remove `max_steps`, or set `max_steps` "
            f"to a multiple of {per}."
        )
