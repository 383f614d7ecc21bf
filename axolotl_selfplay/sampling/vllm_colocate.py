"""Generation through a vLLM engine inside each training process: `vllm_mode: colocate`.

One `vllm.LLM` per training process, started at the first generation and kept for the run
(its start-up costs tens of seconds). Before each generation phase whose weights are new
(SPIN: each iteration's θ_t; LSP: each optimizer step) the policy's weights are loaded into
it in place: the worker's own `reload_weights(weights_iterator=...)`, reached through
`LLM.collective_rpc`, then the prefix cache is dropped (its KV entries were computed with
the old weights). TRL's route, `model_runner.model.load_weights`, fails on vLLM's CPU
build (it prepacks linear weights and leaves parameters without a `weight_loader`); the
worker's reload runs the model's own loading (and the repacking) on CPU and GPU alike.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as TRL's colocation
forces): the weights are handed over as tensors, never serialised. With LoRA the adapter is
merged for the load; under ZeRO-3 the caller holds the weights gathered
(`unwrap_model_for_generation`), under FSDP2 the tensors are gathered for the load
(`full_tensor`, sampling/vllm.py), so every rank loads its own engine.

Sampling matches the `hf` backend's distribution: every `SamplingSpec` value is set in
`SamplingParams`, the engine is built with `generation_config="vllm"` (the checkpoint's
generation_config.json supplies no defaults), the model's EOS is ignored and the
end-of-turn ids stop a sample (exactly the tokens `generate` stops at here), and each prompt
gets its own seed.

GPU only, not run by this project's CPU tests: `vllm_gpu_memory_utilization`,
`vllm_enable_sleep_mode` (the engine sleeps, level 1, after each generation phase and wakes
before the next weight load, freeing its memory for training) and several training processes
(each rank's engine started with TRL's `distributed_executor_backend="external_launcher"`).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from .. import get_logger
from .spec import SamplingSpec, cut_at_eos
from .vllm import merged_adapter, vllm_named_weights

LOG = get_logger(__name__)

_PROMPT_SEED_STRIDE = 1_000_003  # prompt k's children use seed + k·stride .. + n - 1: never overlapping


def sampling_params(spec: SamplingSpec, *, n: int, seed: int, eos_token_ids: set[int]) -> dict:
    """The keyword arguments of `vllm.SamplingParams` for `spec` (also the body of a
    `/v1/completions` request, whose fields have the same names)."""
    sampling = spec.do_sample
    return {
        "n": n,
        "temperature": spec.temperature if sampling else 0.0,
        "top_p": spec.top_p if sampling else 1.0,
        "top_k": spec.top_k if sampling else 0,  # 0 = off (vLLM and HF alike)
        "min_p": spec.min_p if sampling else 0.0,
        "repetition_penalty": spec.repetition_penalty,
        "max_tokens": spec.max_new_tokens,
        "seed": int(seed) % 2**31,
        # stop exactly where `generate` stops here: at an end-of-turn id, never at the model's own EOS
        "stop_token_ids": sorted(eos_token_ids),
        "ignore_eos": True,
    }


def prompt_seed(seed: int, k: int) -> int:
    """The seed of prompt k of a call: vLLM seeds child j of a prompt with seed + j."""
    return (int(seed) + k * _PROMPT_SEED_STRIDE) % 2**31


@contextmanager
def hidden_from_vllm_module_scan():
    """vLLM's CPU build scans the globals of every imported module when its engine starts (to rebind
    Triton kernels to CPU ones) and crashes on a value whose `__dict__` is no mapping: llvmlite's
    `ffi.lib` (numba imports it in a training process) answers every attribute with a C function.
    Modules holding such values leave `sys.modules` while the engine starts; none holds a kernel."""
    hidden = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            try:
                odd = hasattr(value, "__dict__") and not hasattr(vars(value), "get")
            except Exception:  # noqa: BLE001 - whatever vLLM's scan would trip over
                odd = True
            if odd:
                hidden[name] = module
                break
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.modules.update(hidden)


class ColocatedVLLM:
    """An in-process vLLM engine on the training model's checkpoint; same interface as the
    server backends (`push_weights`, `generate`)."""

    def __init__(self, *, model_dir: str, dtype: str, max_model_len: int, gpu_memory_utilization: float,
                 enable_sleep_mode: bool, seed: int, accelerator):
        self.engine_args = {
            "model": model_dir,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enable_sleep_mode": enable_sleep_mode,
            "seed": seed,
            "generation_config": "vllm",  # no sampling defaults from the checkpoint's generation_config.json
        }
        self.sleep_mode = enable_sleep_mode
        self.asleep = False
        self.accelerator = accelerator
        self.llm = None
        self.stats = {"start_s": 0.0, "load_s": 0.0, "loads": 0}

    def _engine(self):
        """The engine, started on first use (so a run that never generates never pays for it)."""
        if self.llm is None:
            # read when the engine is built: tensors are handed to the worker in this process
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            from vllm import LLM  # noqa: PLC0415 - importing vLLM takes seconds; only `backend: vllm` needs it

            on_gpu = self.accelerator.device.type == "cuda"
            if not on_gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                # left unset, vLLM's CPU build sizes the KV cache from all free memory (a 24 GiB machine's
                # worker was killed): 2 GiB holds thousands of short self-play samples
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = "2"
                LOG.info("self-play: VLLM_CPU_KVCACHE_SPACE unset: the colocated engine's KV cache gets 2 GiB")
            launch = {}
            if getattr(self.accelerator, "num_processes", 1) > 1:
                # TRL's colocation: each rank's engine joins the launcher's process group instead of
                # initialising one of its own (GPU only; not run by this project's CPU tests)
                launch["distributed_executor_backend"] = "external_launcher"
            start = time.perf_counter()
            # CUDA graphs on GPU; vLLM's CPU build compiles the model without enforce_eager (minutes)
            with hidden_from_vllm_module_scan():
                self.llm = LLM(**self.engine_args, enforce_eager=not on_gpu, **launch)
            self.stats["start_s"] = time.perf_counter() - start
            LOG.info("self-play: vLLM engine (colocated) started in %.1f s", self.stats["start_s"])
        return self.llm

    def push_weights(self, model) -> None:
        """Load the weights of `model` (unwrapped; gathered under ZeRO-3) into this process's engine."""
        llm = self._engine()
        start = time.perf_counter()
        if self.asleep:  # weights first, the KV cache after the load (TRL's order: less memory at once)
            llm.wake_up(tags=["weights"])
        with merged_adapter(model):
            weights = list(vllm_named_weights(model))
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self.asleep:
            llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        llm.reset_prefix_cache()  # its KV entries were computed with the old weights
        self.stats["load_s"] += time.perf_counter() - start
        self.stats["loads"] += 1

    def generate(
        self, prompts: list[list[int]], *, n: int, spec: SamplingSpec, eos_token_ids: set[int], seed: int
    ) -> list[tuple[list[int], bool]]:
        """`n` samples per prompt, prompt-major: [(tokens cut at the first end-of-turn, truncated)]."""
        from vllm import SamplingParams  # noqa: PLC0415 - see _engine

        llm = self._engine()
        if self.asleep:  # a phase with the weights already loaded (LSP's answers, SPIN's evaluation)
            llm.wake_up()
            self.asleep = False
        params = [
            SamplingParams(**sampling_params(spec, n=n, seed=prompt_seed(seed, k), eos_token_ids=eos_token_ids),
                           detokenize=False)
            for k in range(len(prompts))
        ]
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        if self.sleep_mode:
            llm.sleep(level=1)  # training runs next: give the memory back
            self.asleep = True
        return [cut_at_eos(list(sample.token_ids), eos_token_ids) for out in outputs for sample in out.outputs]
