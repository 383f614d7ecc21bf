"""The per-iteration learning-rate schedule and optimizer reset (schedule.py), without a trainer.

The "trainer" below does what HF's loop does with a scheduler: read the learning rate
the step uses, step the optimizer, step the scheduler; the self-play trainer calls
`begin_iteration` before the first step of every iteration.
"""

from __future__ import annotations

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from axolotl_selfplay.schedule import (
    IterationSchedule,
    at_iteration_start,
    find_iteration_schedule,
    iteration_warmup_steps,
    reset_optimizer_state,
)

STEPS = 4  # optimizer steps per iteration


def _optimizer(lr=1e-3):
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(3))
    return weights, torch.optim.AdamW([weights], lr=lr)


def _linear(optimizer, steps=STEPS, warmup=2):
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _train(schedule, optimizer, weights, iterations, start=(0, 0), restart_at_start=True):
    """The learning rate of every step from (iteration, step) `start` on."""
    used = []
    for t in range(start[0], iterations):
        first = start[1] if t == start[0] else 0
        schedule.begin_iteration(t, restart=first == 0 and restart_at_start)
        for _ in range(first, STEPS):
            used.append(round(schedule.get_last_lr()[0], 10))
            weights.grad = torch.ones_like(weights)
            optimizer.step()
            schedule.step()
    return used


def test_schedule_restarts_every_iteration_with_its_own_peak():
    """Linear, 2 warm-up steps of 4: λ = 0, 1/2, 1, 1/2 per iteration (HF's linear schedule),
    times the iteration's peak: 1e-3, then 5e-4 (`learning_rates: [1e-3, 5e-4]`, `learning_rate: 1e-3`)."""
    weights, optimizer = _optimizer()
    schedule = IterationSchedule(_linear(optimizer), optimizer, restart=True, scales=[1.0, 0.5])
    assert _train(schedule, optimizer, weights, 2) == [0.0, 5e-4, 1e-3, 5e-4, 0.0, 2.5e-4, 5e-4, 2.5e-4]
    # what the optimizer holds after the last step: the end of iteration 1's decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_without_restart_one_schedule_spans_the_run():
    """`restart_schedule: false`: today's behaviour, one warm-up and one decay over 8 steps."""
    weights, optimizer = _optimizer()
    schedule = IterationSchedule(_linear(optimizer, steps=2 * STEPS), optimizer, restart=False)
    expected = [0.0, 5e-4, 1e-3, 5 / 6 * 1e-3, 4 / 6 * 1e-3, 3 / 6 * 1e-3, 2 / 6 * 1e-3, 1 / 6 * 1e-3]
    assert _train(schedule, optimizer, weights, 2) == pytest.approx(expected)


def test_resume_mid_iteration_lands_on_the_same_schedule_position():
    """A checkpoint after step 2 of iteration 1: the new run loads the state dict into a
    scheduler built from scratch and does not restart; the remaining rates are the same."""
    weights, optimizer = _optimizer()
    schedule = IterationSchedule(_linear(optimizer), optimizer, restart=True, scales=[1.0, 0.5])
    full = _train(schedule, optimizer, weights, 2)

    weights, optimizer = _optimizer()
    schedule = IterationSchedule(_linear(optimizer), optimizer, restart=True, scales=[1.0, 0.5])
    _train(schedule, optimizer, weights, 1)
    schedule.begin_iteration(1, restart=True)
    for _ in range(2):
        weights.grad = torch.ones_like(weights)
        optimizer.step()
        schedule.step()
    saved = schedule.state_dict()

    weights, optimizer = _optimizer()
    resumed = IterationSchedule(_linear(optimizer), optimizer, restart=True, scales=[1.0, 0.5])
    resumed.load_state_dict(saved)
    assert _train(resumed, optimizer, weights, 2, start=(1, 2)) == full[STEPS + 2 :]


@pytest.mark.parametrize("kind", ["one_cycle", "jagged", "rex"])
def test_any_axolotl_scheduler_restarts(kind):
    """Rewinding through the state dict restarts schedulers that are not HF lambdas too."""
    from torch.optim.lr_scheduler import OneCycleLR

    from axolotl.utils.schedulers import JaggedLRRestartScheduler, RexLR

    weights, optimizer = _optimizer()
    if kind == "one_cycle":
        inner = OneCycleLR(optimizer, max_lr=1e-3, total_steps=STEPS)
    elif kind == "rex":
        inner = RexLR(optimizer, max_lr=1e-3, min_lr=0.0, total_steps=STEPS, num_warmup_steps=1)
    else:
        inner = JaggedLRRestartScheduler(optimizer, _linear(optimizer), 3, 1, 1)
    schedule = IterationSchedule(inner, optimizer, restart=True)
    rates = _train(schedule, optimizer, weights, 2)
    assert rates[:STEPS] == rates[STEPS:] and len(set(rates)) > 1


def test_reset_optimizer_state_is_a_fresh_optimizer_through_accelerate():
    """After the reset, Adam's next step equals the first step of a newly built Adam
    (bias correction from step 1, zero moments), also through accelerate's wrapper."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    weights, optimizer = _optimizer()
    wrapped = accelerator.prepare_optimizer(optimizer)
    for _ in range(3):
        weights.grad = torch.randn(3)
        wrapped.step()
    assert reset_optimizer_state(wrapped) == 1
    assert len(optimizer.state) == 0  # the real optimizer's state, not a copy
    start = weights.detach().clone()
    weights.grad = torch.ones(3)
    wrapped.step()

    fresh_weights = torch.nn.Parameter(start.clone())
    fresh = torch.optim.AdamW([fresh_weights], lr=1e-3)
    fresh_weights.grad = torch.ones(3)
    fresh.step()
    assert torch.equal(weights.detach(), fresh_weights.detach())


def test_find_the_schedule_inside_accelerates_wrapper():
    from accelerate.scheduler import AcceleratedScheduler

    weights, optimizer = _optimizer()
    schedule = IterationSchedule(_linear(optimizer), optimizer, restart=True)
    assert find_iteration_schedule(AcceleratedScheduler(schedule, optimizer)) is schedule
    assert find_iteration_schedule(_linear(optimizer)) is None


@pytest.mark.parametrize(
    "cfg, steps, expected",
    [
        ({"warmup_ratio": 0.1}, 1562, 156),  # the official recipe: 10 % of each iteration's steps
        ({"warmup_steps": 20}, 1562, 20),  # as written, in every iteration
        ({}, 1562, 46),  # Axolotl's default: 3 %, at most 100
        ({}, 10_000, 100),
        ({"warmup_ratio": 0.25}, 4, 2),  # Axolotl turns a warm-up of 1 step into 2
    ],
)
def test_iteration_warmup_steps(cfg, steps, expected):
    assert iteration_warmup_steps(cfg, steps) == expected


@pytest.mark.parametrize(
    "epoch, iteration, e, expected",
    [(0.0, 0, 1, True), (1.0, 1, 1, True), (1.5, 1, 1, False), (1.0, 0, 2, False), (2.0, 1, 2, True), (0.9999999, 1, 1, True)],
)
def test_at_iteration_start(epoch, iteration, e, expected):
    assert at_iteration_start(epoch, iteration, e) is expected
