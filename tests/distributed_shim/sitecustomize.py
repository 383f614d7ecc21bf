"""CPU-TEST SCAFFOLDING ONLY — never part of the shipped plugin.

Loaded by every Python process started with this folder on PYTHONPATH (the
2-process tests in tests/test_distributed.py put it there). Inside torchrun
workers (LOCAL_RANK set) on a machine without CUDA it applies three workarounds
that let accelerate / DeepSpeed / Axolotl run 2 CPU processes on gloo (measured in
shared/research/deepspeed_cpu.md; none is needed on GPUs):

1. accelerate picks no process-group backend on CPU unless `cpu=True`, which
   disables DeepSpeed: force "gloo" (and MULTI_CPU for plain DDP).
2. gloo's all_gather_into_tensor writes into views with autograd on, which ZeRO-2's
   optimizer step trips over: run DeepSpeed's collectives under no_grad.
   And gloo finishes async collectives out of order (on its worker threads), while
   DeepSpeed's ZeRO-3 coalesced all-gather (`_allgather_params_coalesced`, behind
   every `GatheredParameters` of more than one parameter: loading a checkpoint,
   TRL's gather for generation) launches one per parameter and waits on the LAST
   only, as CUDA stream order makes that enough on GPUs. On CPU a parameter could be
   read before its all-gather landed, and the late write then overwrote it: a
   checkpoint weight (e.g. q_proj.weight, loaded beside its bias) replaced by the
   uninitialised partition memory, at random, more often on a busy machine. So every
   DeepSpeed collective completes before it returns.
3. Axolotl maps `device_map` to the integer LOCAL_RANK under DDP / ZeRO-2 ("GPU N"):
   map integer device maps to "cpu".
4. Axolotl 0.21 asks torch.cuda.can_device_access_peer when WORLD_SIZE > 1, which
   raises without a GPU (CUDA torch build): answer "no peer access".
It also skips DeepSpeed's JIT build of an inference-only shared-memory op (45 s).

With SELFPLAY_TEST_STORE_DUMP=DIR every rank writes to DIR/rank{RANK}.json a digest of
its opponent store when training ends, and of every parameter (gathered under ZeRO-3)
when training starts, so a test can check that all ranks agree and start from the
checkpoint's weights.
"""

import functools
import inspect
import os

if "LOCAL_RANK" in os.environ:
    import torch

    if not torch.cuda.is_available():

        def _patch_accelerate():
            from accelerate import state

            original = state.PartialState._prepare_backend

            def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
                backend_, distributed_type = original(self, cpu, sagemaker_dp, backend)
                if backend_ is None and not cpu:
                    backend_ = "gloo"
                    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
                        distributed_type = state.DistributedType.MULTI_CPU
                return backend_, distributed_type

            state.PartialState._prepare_backend = _prepare_backend

        def _patch_deepspeed_collectives():
            import importlib

            try:
                backend = importlib.import_module("deepspeed.comm.torch")
            except ImportError:
                return
            backend.build_shm_op = lambda: None  # inference-only op; skip its JIT build
            collectives = (
                "all_gather_into_tensor", "all_gather_base", "all_gather", "all_gather_coalesced",
                "reduce_scatter_tensor", "reduce_scatter", "all_reduce", "all_reduce_coalesced",
                "reduce", "broadcast", "all_to_all_single",
            )
            for name in collectives:
                fn = getattr(backend.TorchBackend, name, None)
                if fn is None:
                    continue

                def make(fn):
                    signature = inspect.signature(fn)

                    @functools.wraps(fn)
                    def wrapper(*args, **kwargs):
                        with torch.no_grad():
                            work = fn(*args, **kwargs)
                        if signature.bind_partial(*args, **kwargs).arguments.get("async_op") and hasattr(work, "wait"):
                            work.wait()  # complete now: gloo would finish it out of order
                        return work

                    return wrapper

                setattr(backend.TorchBackend, name, make(fn))

        def _patch_device_map():
            from transformers import modeling_utils

            original = modeling_utils.PreTrainedModel.__dict__["from_pretrained"].__func__

            @functools.wraps(original)
            def from_pretrained(cls, *args, **kwargs):
                device_map = kwargs.get("device_map")
                if isinstance(device_map, int):
                    kwargs["device_map"] = "cpu"
                elif isinstance(device_map, dict):
                    kwargs["device_map"] = {k: "cpu" if isinstance(v, int) else v for k, v in device_map.items()}
                return original(cls, *args, **kwargs)

            modeling_utils.PreTrainedModel.from_pretrained = classmethod(from_pretrained)

        _patch_accelerate()
        _patch_deepspeed_collectives()
        _patch_device_map()
        torch.cuda.can_device_access_peer = lambda device, peer: False

    if os.environ.get("SELFPLAY_TEST_STORE_DUMP"):
        import hashlib
        import json

        from transformers import Trainer

        _train = Trainer.train

        def parameter_digests(model) -> dict:
            """sha256 of every parameter's float32 bytes (each rank gathers ZeRO-3 shards)."""
            digests = {}
            for name, param in model.named_parameters():
                if hasattr(param, "ds_id"):
                    import deepspeed

                    with deepspeed.zero.GatheredParameters([param]):
                        data = param.detach().float().contiguous().clone()
                else:
                    data = param.detach().float().contiguous()
                digests[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
            return digests

        def train(self, *args, **kwargs):
            at_start = parameter_digests(self.model)
            result = _train(self, *args, **kwargs)
            store = getattr(self, "opponents", None)
            if store is not None:
                digest = hashlib.sha256(json.dumps(store.state_dict(), sort_keys=True).encode()).hexdigest()
                path = os.path.join(os.environ["SELFPLAY_TEST_STORE_DUMP"], f"rank{os.environ['RANK']}.json")
                with open(path, "w") as f:
                    json.dump({"iteration": store.iteration, "examples": len(store), "digest": digest, "parameters_at_start": at_start}, f)
            return result

        Trainer.train = train
