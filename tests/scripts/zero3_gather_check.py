"""Run by tests/test_distributed.py under torchrun (2 CPU ranks, gloo, the distributed shim):
gather a ZeRO-3-partitioned stack of biased Linear layers many times, as loading a checkpoint
and TRL's gather for generation do, and count the gathers in which some parameter did not
hold its full value yet. Prints `INCOMPLETE=<n>/<trials>` on rank 0."""

import json
import os
import sys

import deepspeed
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    deepspeed.init_distributed(dist_backend="gloo")
    expected = [p.detach().clone() for p in build().parameters()]
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = build()
    params = list(model.parameters())
    incomplete = 0
    for _ in range(trials):
        with deepspeed.zero.GatheredParameters(params):
            if not all(torch.equal(p.data, e) for p, e in zip(params, expected)):
                incomplete += 1
    counts = [None, None]
    torch.distributed.all_gather_object(counts, incomplete)
    if torch.distributed.get_rank() == 0:
        print("INCOMPLETE=" + json.dumps(sum(counts)) + f"/{2 * trials}", flush=True)
    # Leave together, tear gloo down, and skip the interpreter's finalization: a rank aborted
    # there twice in CI on a busy machine ("terminate called without an active exception"),
    # the second time after destroy_process_group, so some object still alive at shutdown
    # (not identified; pytorch/pytorch#179291 describes gloo work objects freed while Python
    # shuts down) is the likely cause. The measurement above is complete and printed by then.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
