"""What the ranks of a run must agree on: how many there are, and when they move in lockstep."""

from __future__ import annotations

import os

import torch
from accelerate.utils import DistributedType


def launched_world_size() -> int:
    """The number of processes the launcher started (`WORLD_SIZE`; 1 without a launcher).

    Read before any process group exists: the data preparation sizes the schedule
    and the LSP games with it before the model loads."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def sharded_generation(accelerator, model, gather_deepspeed3_params: bool) -> bool:
    """Whether every generate/forward is a collective over sharded weights, so that all
    ranks must run the same batches (`synced_gpus`, `pad_for_lockstep`): FSDP (each layer
    all-gathers its weights in its forward), or ZeRO-3 with `ds3_gather_for_generation: false`."""
    if accelerator.num_processes == 1:
        return False
    if is_fsdp(accelerator, model):
        return True
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return not gather_deepspeed3_params and getattr(ds_plugin, "zero_stage", 0) == 3


def is_fsdp(accelerator, model) -> bool:
    """FSDP as accelerate reports it, or a model whose parameters are FSDP2 DTensor shards."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return any(hasattr(param, "full_tensor") for param in model.parameters())


def pad_for_lockstep(items: list, filler, accelerator) -> list:
    """Pad `items` with `filler` to the longest length of this list on any rank.

    Under ZeRO-3 without gathered weights every forward is a collective, so all
    ranks must run the same number of batches; callers drop the padded results.
    """
    counts = accelerator.gather(torch.tensor([len(items)], device=accelerator.device))
    return items + [filler] * (int(counts.max()) - len(items))
