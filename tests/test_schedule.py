"""The iterations in optimizer steps (StepPlan), the per-iteration learning-rate schedule and
optimizer reset (schedule.py), without a trainer.

The "trainer" below does what HF's loop does with a scheduler: read the learning rate
the step uses, step the optimizer, step the scheduler; the self-play trainer calls
`begin_iteration` before the first step of every iteration.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from axolotl_selfplay.schedule import (
    IterationSchedule,
    StepPlan,
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
    from axolotl.utils.schedulers import JaggedLRRestartScheduler, RexLR
    from torch.optim.lr_scheduler import OneCycleLR

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


def test_schedule_with_a_longer_max_steps():
    longer = StepPlan(examples=64, iterations=2, epochs_per_iteration=1, steps_per_epoch=4, max_steps=12)
    assert longer.iterations_run == 2
    assert "the last 4 steps train again on iteration 1's opponents" in longer.warning()
    assert StepPlan(64, 2, 1, 4, 8).warning() is None and StepPlan(64, 2, 1, 4, None).warning() is None
    assert StepPlan(64, 3, 2, 4, 16).iterations_run == 2  # 8 steps per iteration


# -- reset_optimizer for every optimizer family Axolotl builds ------------------------------


class _Tiny(torch.nn.Module):
    """Named like a causal LM's parts, which Axolotl's Muon and Dion sort into their groups: an
    embedding and lm_head (AdamW), a 64×80 matrix (Muon / Dion; over bitsandbytes' 4096-element
    minimum for 8-bit state) and a norm (AdamW)."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(20, 16)
        self.proj = torch.nn.Linear(64, 80)
        self.norm = torch.nn.LayerNorm(80)
        self.lm_head = torch.nn.Linear(16, 20, bias=False)


def _hf(name, **args):
    """transformers' optimizer `name`, built as the Trainer builds it (Axolotl passes `optimizer:` on)."""

    def build(model):
        from transformers import Trainer, TrainingArguments

        training_args = TrainingArguments(output_dir="unused", optim=name, learning_rate=1e-2, weight_decay=0.01,
                                          report_to=[], **args)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        return cls(model.parameters(), **kwargs)

    return build


def _axolotl(name):
    """Axolotl's own optimizer `name`, with the arguments Axolotl's builder passes it."""
    adam = {"lr": 1e-2, "weight_decay": 0.01, "betas": (0.9, 0.95)}

    def build(model):
        args = None  # Axolotl's training arguments: unused by these factories
        if name == "muon":
            from axolotl.contribs.mit.muon import MuonOptimizerFactory

            return MuonOptimizerFactory()(model, args, **adam)
        if name == "muon (with a device mesh: DistMuon)":
            from axolotl.contribs.mit.muon.dist_muon import DistMuonOptimizerFactory

            return DistMuonOptimizerFactory()(model, args, device_mesh=None, **adam)
        if name == "muon_8bit":
            muon_8bit = pytest.importorskip("axolotl.utils.optimizers.muon_8bit", reason="Axolotl >= 0.21")
            return muon_8bit.Muon8bitOptimizerFactory()(model, args, device_mesh=None, **adam)
        if name == "dion":
            from axolotl.contribs.mit.dion import DionOptimizerFactory

            return DionOptimizerFactory()(model, args, dion_lr=1e-2, dion_mu=0.95, lr=1e-2, weight_decay=0.01)
        if name == "sinkgd":
            from axolotl.utils.optimizers.sinkgd import SinkGDOptimizerFactory

            return SinkGDOptimizerFactory()(model, args, **adam)
        if name == "adopt_adamw":
            from axolotl.utils.optimizers.adopt import ADOPT

            return ADOPT(model.parameters(), decouple=True, **adam)
        if name == "adamc":
            from axolotl.utils.optimizers.adamc import AdamC

            return AdamC(model.parameters(), **adam)
        assert name == "ao_adamw_fp8"
        from torchao.optim.adam import AdamWFp8

        return AdamWFp8(model.parameters(), **adam)

    return build


HF_FAMILIES = [
    "adamw_torch", "adamw_torch_fused", "adafactor", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd",
]
AXOLOTL_FAMILIES = ["muon", "muon (with a device mesh: DistMuon)", "muon_8bit", "dion", "sinkgd", "adopt_adamw",
                    "adamc", "ao_adamw_fp8"]
FAMILIES = {
    **{name: _hf(name) for name in HF_FAMILIES},
    "sgd": _hf("sgd", optim_args="momentum=0.9"),
    **{name: _axolotl(name) for name in AXOLOTL_FAMILIES},
}


def _grads(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


def _steps(model, optimizer, seeds):
    torch.manual_seed(7)  # Dion draws its low-rank factor from the global RNG when its state starts
    for seed in seeds:
        if hasattr(optimizer, "train"):
            optimizer.train()  # schedule-free: as the Trainer does before every training step
        _grads(model, seed)
        optimizer.step()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reset_optimizer_steps_as_a_newly_built_one(family):
    """For each optimizer family, after an iteration's steps and a reset, the next steps equal
    those of the same optimizer newly built on the same weights: moving averages, step counts,
    the schedule-free optimizers' group counters (k, weight sum, peak learning rate), Dion's
    and DistMuon's group step, Muon's per-parameter role all as a new optimizer has them."""
    import copy

    build = FAMILIES[family]
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = build(model)
    _steps(model, optimizer, (0, 1, 2))
    assert reset_optimizer_state(optimizer) > 0 or family == "sgd" and not optimizer.state
    fresh_model = copy.deepcopy(model)
    fresh = build(fresh_model)
    _steps(model, optimizer, (10, 11, 12))
    _steps(fresh_model, fresh, (10, 11, 12))
    for (name, param), fresh_param in zip(model.named_parameters(), fresh_model.parameters()):
        assert torch.equal(param.detach(), fresh_param.detach()), (family, name)


def test_the_refusal_list_is_the_tested_list():
    """`reset_optimizer` is refused before the model loads for any `optimizer:` not tested above."""
    from axolotl_selfplay.config import RESETTABLE_OPTIMIZERS

    tested = {name.split(" ")[0] for name in FAMILIES}
    assert set(RESETTABLE_OPTIMIZERS) == tested


@pytest.mark.parametrize("family", ["paged_adamw_8bit", "paged_adamw_32bit", "paged_lion_8bit", "paged_ademamix_8bit"])
def test_reset_of_a_paged_optimizer_allocates_no_new_paged_buffer(family):
    """bitsandbytes never frees a paged buffer (CUDA managed memory, kept in its GlobalPageManager),
    so the reset refills the ones it has. On CPU bitsandbytes allocates ordinary tensors; the
    buffers are marked paged here as `get_paged` marks them on a GPU."""
    from bitsandbytes.functional import GlobalPageManager

    torch.manual_seed(0)
    model = _Tiny()
    optimizer = FAMILIES[family](model)
    _steps(model, optimizer, (0, 1))
    paged = {}
    for param, state in optimizer.state.items():
        for key in ("state1", "state2"):
            if key in state:
                state[key].is_paged = True
                paged[param, key] = state[key]
    assert paged
    managed = len(GlobalPageManager.get_instance().paged_tensors)
    reset_optimizer_state(optimizer)
    for (param, key), buffer in paged.items():
        assert optimizer.state[param][key] is buffer and not buffer.any()  # the same buffer, as new
        assert optimizer.state[param]["step"] == 0
    assert len(GlobalPageManager.get_instance().paged_tensors) == managed


@pytest.mark.parametrize(
    "optimizer, deepspeed_optimizer, refused",
    [
        (None, None, None),  # Axolotl's default, adamw_torch_fused
        ("paged_adamw_8bit", None, None),
        ("galore_adamw_layerwise", None, "keeps one optimizer per parameter"),
        ("adalomo", None, "outside `optimizer.state`"),
        ("came_pytorch", None, "is not one it is verified for"),
        ("adamw_torch", "AdamW", None),  # DeepSpeed's optimizer section replaces `optimizer:`
        ("adamw_torch", "OneBitAdam", "builds `onebitadam`"),
    ],
)
def test_reset_optimizer_is_refused_where_it_is_not_verified(tmp_path, optimizer, deepspeed_optimizer, refused):
    import json

    from axolotl_selfplay.config import check_reset_optimizer, parse_selfplay_block

    cfg = {"optimizer": optimizer}
    if deepspeed_optimizer:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({"optimizer": {"type": deepspeed_optimizer}}))
        cfg["deepspeed"] = str(path)
    sp = parse_selfplay_block({"type": "spin"})
    if refused is None:
        check_reset_optimizer(sp, cfg.get)
        return
    with pytest.raises(ValueError, match=r"`selfplay.reset_optimizer: true`.*" + re.escape(refused)) as error:
        check_reset_optimizer(sp, cfg.get)
    assert "Set `selfplay.reset_optimizer: false`" in str(error.value)
    check_reset_optimizer(parse_selfplay_block({"type": "spin", "reset_optimizer": False}), cfg.get)
    check_reset_optimizer(parse_selfplay_block({"type": "lsp"}), cfg.get)  # LSP has no iterations
