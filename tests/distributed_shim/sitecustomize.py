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
5. FSDP2 (`fsdp_version: 2`): accelerate only turns FSDP on for GPU-type distributed
   states and builds its device mesh on "cuda". Promote the CPU state to FSDP when
   ACCELERATE_USE_FSDP is set, and build the mesh on "cpu" (torch's fully_shard runs
   on CPU with gloo). transformers' full-state-dict gather for the final save
   (`get_model_state_dict(..., cpu_offload=True)`) fails on CPU tensors ("invalid python
   storage"): gather each DTensor with `full_tensor()` instead.
6. Axolotl starts DeepSpeed's process group itself in a one-process run, asking for "nccl":
   ask for "gloo" (a one-process ZeRO-3 run on CPU).
7. Resuming a DDP run: HF loads the optimizer state with map_location "cpu:0" (the CPU
   rank's device), which torch cannot restore to: map it to "cpu".
It also skips DeepSpeed's JIT build of an inference-only shared-memory op (45 s).

With SELFPLAY_TEST_STORE_DUMP=DIR every rank writes to DIR/rank{RANK}.json a digest of
its opponent stores' metadata (training and evaluation rows) and the examples whose
tokens it holds when training ends, and of every parameter (gathered under ZeRO-3) when
training starts, so a test can check that all ranks agree, share the tokens out and
start from the checkpoint's weights.
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

        def _patch_deepspeed_init():
            import importlib

            try:
                comm = importlib.import_module("deepspeed.comm.comm")
            except ImportError:
                return
            original = comm.init_distributed

            @functools.wraps(original)
            def init_distributed(dist_backend=None, *args, **kwargs):
                return original("gloo" if dist_backend == "nccl" else dist_backend, *args, **kwargs)

            comm.init_distributed = init_distributed
            importlib.import_module("deepspeed.comm").init_distributed = init_distributed

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

        def _patch_fsdp():
            from accelerate import parallelism_config, state

            build_device_mesh = parallelism_config.ParallelismConfig.build_device_mesh
            parallelism_config.ParallelismConfig.build_device_mesh = lambda self, device_type: build_device_mesh(
                self, "cpu"
            )
            original_init = state.AcceleratorState.__init__

            def __init__(self, *args, fsdp_plugin=None, **kwargs):
                original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
                # Axolotl sets ACCELERATE_USE_FSDP after start-up, so read it here
                wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
                if wants_fsdp and fsdp_plugin is not None and self.distributed_type == state.DistributedType.MULTI_CPU:
                    self.distributed_type = state.DistributedType.FSDP
                    self.fsdp_plugin = fsdp_plugin

            state.AcceleratorState.__init__ = __init__

            from accelerate import Accelerator

            get_state_dict = Accelerator.get_state_dict

            def get_state_dict_on_cpu(self, model, unwrap=True):
                if not any(hasattr(param, "full_tensor") for param in model.parameters()):  # not FSDP2
                    return get_state_dict(self, model, unwrap)
                state = {
                    name: (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()
                    for name, tensor in model.state_dict().items()
                }
                return state

            Accelerator.get_state_dict = get_state_dict_on_cpu

        def _patch_checkpoint_map_location():
            # HF loads a resumed checkpoint's optimizer with map_location=args.device, which a
            # CPU rank reports as "cpu:0"; torch cannot restore storages to an indexed CPU device.
            original = torch.load

            @functools.wraps(original)
            def load(*args, map_location=None, **kwargs):
                if isinstance(map_location, (str, torch.device)) and str(map_location).startswith("cpu:"):
                    map_location = "cpu"
                return original(*args, map_location=map_location, **kwargs)

            torch.load = load

        _patch_accelerate()
        _patch_checkpoint_map_location()
        _patch_deepspeed_collectives()
        _patch_deepspeed_init()
        _patch_device_map()
        _patch_fsdp()
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
                import io

                import torch

                def metadata_of(store):
                    """The metadata every rank holds for all examples (None: no such store)."""
                    if store is None:
                        return None
                    metadata = {
                        "ref": store.ref_logp_real,
                        "base": store.base_logp_real,
                        "pool": [[(o.iteration, o.length, o.status, o.ref_logp, o.base_logp, o.truncated, o.empty)
                                  for o in pool] for pool in store.pool],
                    }
                    return hashlib.sha256(json.dumps(metadata).encode()).hexdigest()

                # Every rank: the metadata it holds for all examples, and which examples' tokens
                # it holds. Rank 0: a digest of the whole store (gathered, a collective).
                state = store.state_dict()
                full = None
                if state is not None:
                    buffer = io.BytesIO()
                    torch.save(state, buffer)
                    full = hashlib.sha256(buffer.getvalue()).hexdigest()
                path = os.path.join(os.environ["SELFPLAY_TEST_STORE_DUMP"], f"rank{os.environ['RANK']}.json")
                # FSDP2 shards parameters as DTensors: record that the policy really was sharded
                sharded = any(hasattr(p, "to_local") for p in self.model.parameters())
                with open(path, "w") as f:
                    json.dump(
                        {"iteration": store.iteration, "examples": len(store),
                         "metadata": metadata_of(store),
                         "eval_metadata": metadata_of(getattr(self, "eval_opponents", None)),
                         "held": [i for i in range(len(store)) if store.holds(i)],
                         "held_tokens": store.nbytes() // 4, "full_digest": full, "fsdp_sharded": sharded,
                         "parameters_at_start": at_start},
                        f,
                    )
            return result

        Trainer.train = train
