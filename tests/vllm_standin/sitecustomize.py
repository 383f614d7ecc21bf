"""CPU-test scaffolding for `generation.backend: vllm` (never part of the plugin).

TRL's VLLMClient refuses to start without the vllm package and sends weights
over NCCL, which needs GPUs. In every process of the test run this makes TRL
believe vllm (its GPU build) is installed and sends each pushed tensor to the stand-in server
(tests/vllm_standin/server.py) over HTTP instead. Everything else — the client's
HTTP generation requests, our weight naming, LoRA merging, push timing — is the
code that runs on GPUs.
"""

import base64

try:
    import requests
    from trl.generation import vllm_client
except Exception:  # a process without TRL (e.g. the launcher): nothing to patch
    vllm_client = None

if vllm_client is not None:
    vllm_client.is_vllm_available = lambda *args, **kwargs: True

    def init_communicator(self, device=0):
        self.communicator = "stand-in (HTTP)"

    def update_named_param(self, name, weights):
        data = base64.b64encode(weights.detach().float().contiguous().cpu().numpy().tobytes()).decode()
        response = requests.post(
            f"{self.base_url}/standin/weights", json={"name": name, "shape": list(weights.shape), "data": data}
        )
        response.raise_for_status()

    vllm_client.VLLMClient.init_communicator = init_communicator
    vllm_client.VLLMClient.update_named_param = update_named_param

try:
    from axolotl_selfplay import config as selfplay_config
except Exception:  # a process without the plugin
    selfplay_config = None
if selfplay_config is not None:
    # the plugin's check before the model loads: as if vLLM's GPU build were installed (NCCL allowed)
    selfplay_config.installed_vllm = lambda: ("vllm", (0, 32, 0))
