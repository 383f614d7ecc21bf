"""Stop a diverging run: non-finite losses, log-probs or rewards end training at once.

HF's `logging_nan_inf_filter` hides a NaN loss in the logs (it prints the last
finite one), so a run whose weights turned into NaN keeps "training" until the
next generation pass crashes, checkpointing the poisoned weights on the way.
The trainers call `check_finite` every step on values already reduced over
ranks (every rank then raises at the same step, so none waits in a collective),
and `WeightsGuard` checks the weights after every optimizer step, before HF
saves a checkpoint or the next rollout samples from them.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

LIKELY_CAUSES = (
    "Likely causes: a learning rate too high for this model (lower `learning_rate`, or add warm-up), "
    "fp16 overflow (use `bf16: true`, or lower the learning rate), or a bad batch "
    "(check the data of the examples named above)."
)


class NonFiniteError(RuntimeError):
    """Training produced a non-finite value; the run stops without saving it."""


def check_finite(values: dict[str, float], step: int, where: str) -> None:
    """Raise NonFiniteError naming every non-finite value of `values` (metric name -> value).

    `where` says what was being computed (e.g. "self-play iteration 1, examples [3, 17]").
    """
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if not bad:
        return
    listed = ", ".join(f"`{name}` = {value}" for name, value in bad.items())
    raise NonFiniteError(
        f"training stopped at step {step}: non-finite {listed} ({where}). The weights of this step "
        f"were not updated and no checkpoint of them was written. {LIKELY_CAUSES}"
    )


def check_weights_finite(model, accelerator, step: int) -> None:
    """Raise NonFiniteError if any parameter of `model` holds NaN or inf (checked on every
    rank's own shard under ZeRO-3 / FSDP, and agreed across ranks)."""
    bad = None
    with torch.no_grad():
        for name, param in model.named_parameters():
            local = getattr(param, "ds_tensor", None)  # DeepSpeed ZeRO-3: this rank's partition
            if local is None:
                local = param.to_local() if hasattr(param, "to_local") else param  # FSDP2: a DTensor shard
            if not torch.isfinite(local).all():
                bad = name
                break
    flag = torch.tensor([0.0 if bad is None else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item() > 0:
        where = f"parameter `{bad}`" if bad else "a parameter on another rank"
        raise NonFiniteError(
            f"training stopped after optimizer step {step}: the weights hold NaN or inf ({where}); no "
            f"checkpoint of them was written. {LIKELY_CAUSES}"
        )


class WeightsGuard(TrainerCallback):
    """After every optimizer step: the weights are finite, or training stops (HF then
    neither saves a checkpoint nor samples from them)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        check_weights_finite(self.trainer.model, self.trainer.accelerator, state.global_step)
