"""Generation through a vLLM server with TRL's client: `vllm_mode: server`, `vllm_weight_transfer: nccl`,
and what every vLLM backend shares (the weights in vLLM's naming, equal prompts merged).

The other backends: sampling/vllm_colocate.py (an engine in this process) and
sampling/vllm_files.py (a server that reloads the weights from files); sampling/vllm_backend.py
picks one.

The server here is the one Axolotl ships: start it with the same YAML on GPUs that do
not train (`CUDA_VISIBLE_DEVICES=7 axolotl vllm-serve config.yml`; host and port
from Axolotl's `vllm:` block), then `axolotl train config.yml` on the others.
We talk to it with TRL's `VLLMClient`, so the protocol always matches the TRL
that the installed Axolotl ships (Axolotl 0.19's TRL-style server, Axolotl
0.21's native `vllm serve`).

- Weights: before generating, the main process pushes the policy's weights to
  the server over TRL's NCCL weight-update group — once per iteration for SPIN
  (the opponent θ_t is frozen during an iteration), once per optimizer step for
  LSP (micro-steps of one accumulated step sample the same weights).
  With LoRA the adapter is merged for the push and unmerged after, and tensors
  are named as in the base model (TRL's scheme). Under ZeRO-3 the weights are
  gathered for the push (TRL's `unwrap_model_for_generation`).
- Generation: every rank sends its own prompts (token ids); `n` samples per
  prompt come back prompt-major. Every sampling parameter of the `SamplingSpec`
  is sent (the server would otherwise apply the checkpoint's
  generation_config.json), with the end-of-turn tokens as `stop_token_ids` (the
  server's EOS may not be the chat template's). Requests are seeded; equal prompts
  are merged so that they get distinct samples (`generate`).
- Scoring (log-probs under θ_t, θ_0), the LSP judge and the reward model stay
  on the training GPUs: only sampling moves to the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from .. import get_logger
from ..modeling import is_peft_model
from .spec import SamplingSpec, cut_at_eos

LOG = get_logger(__name__)


def vllm_named_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in the server's (base model's) naming.

    For a PEFT model the caller has merged the adapter: the LoRA tensors are
    skipped, `base_model.model.` and `.base_layer` are dropped from the names,
    and `modules_to_save` copies replace the originals (as TRL does).
    """
    is_peft = is_peft_model(model)
    for name, param in model.named_parameters():
        if is_peft:
            if "lora_" in name or "original_module" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace("modules_to_save.default.", "")
        # FSDP2: a DTensor shard; every rank gathers the whole tensor (a collective: all ranks iterate)
        yield name, param.data.full_tensor() if hasattr(param.data, "full_tensor") else param.data


@contextmanager
def merged_adapter(model):
    """Within the block a PEFT model's adapter is merged into its base weights (the engine
    holds base-model tensors only); unmerged after, also on error."""
    is_peft = is_peft_model(model)
    if is_peft:
        model.merge_adapter()
    try:
        yield
    finally:
        if is_peft:
            model.unmerge_adapter()


class VLLMServer:
    def __init__(self, axolotl_cfg, accelerator, timeout: float):
        try:
            from trl.generation.vllm_client import VLLMClient
        except ImportError:  # older TRL layout
            from trl.extras.vllm_client import VLLMClient
        vllm_cfg = axolotl_cfg.get("vllm") or {}
        host = vllm_cfg.get("host") or "0.0.0.0"
        port = int(vllm_cfg.get("port") or 8000)
        self.accelerator = accelerator
        try:
            self.client = VLLMClient(host=host, server_port=port, connection_timeout=timeout)
        except ImportError as error:
            raise ImportError(
                f"`selfplay.generation.backend: vllm` needs the vllm package on the training machine "
                f"({error}). Install Axolotl's vllm extra, or set `backend: hf`."
            ) from None
        except OSError as error:  # builtin ConnectionError (TRL 1.14) or requests' (TRL 1.9)
            raise ConnectionError(
                f"`selfplay.generation.backend: vllm`: no vLLM server at {host}:{port} after {timeout:.0f}s. "
                "Start it first with `axolotl vllm-serve <this config>` (`vllm.host`/`vllm.port` choose the "
                "address), or raise `selfplay.generation.vllm_server_timeout`."
            ) from error
        self._communicator_ready = False
        LOG.info("self-play: generating through the vLLM server at %s:%d", host, port)

    def push_weights(self, model) -> None:
        """Send the weights of `model` (unwrapped and, under ZeRO-3, gathered) to the server.

        Every rank calls this and walks the weights: under FSDP2 each tensor is gathered by a
        collective all ranks must join, and every rank merges and unmerges the adapter, so the
        ranks' weights stay equal (merge then unmerge rounds; TRL does the same). Only the main
        process talks to the server.
        """
        main = self.accelerator.is_main_process
        if main and not self._communicator_ready:
            self.client.init_communicator(device=self.accelerator.device)
            self._communicator_ready = True
        batch = getattr(self.client, "weight_update", None) if main else None  # TRL >= 1.14: one update
        with merged_adapter(model), batch() if batch is not None else nullcontext():
            for name, tensor in vllm_named_weights(model):
                if main:
                    self.client.update_named_param(name, tensor)
        if main:
            self.client.reset_prefix_cache()
        self.accelerator.wait_for_everyone()

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        spec: SamplingSpec,
        eos_token_ids: set[int],
        seed: int,
    ) -> list[tuple[list[int], bool]]:
        """`n` samples per prompt, prompt-major: [(tokens cut at the first end-of-turn, truncated)].

        vLLM seeds every prompt of a request with the request's seed (child k of
        `n` with seed + k), so two equal prompts in one request would get the same
        samples. Equal prompts are therefore merged into one prompt asking for all
        their samples, and prompts are grouped by multiplicity (one request each).
        """
        results: list[list[tuple[list[int], bool]]] = [[] for _ in prompts]
        for request, (prompt_keys, positions) in enumerate(group_equal_prompts(prompts)):
            copies = len(positions[0])
            output = self.client.generate(
                prompts=[list(key) for key in prompt_keys],
                n=copies * n,
                generation_kwargs={
                    "seed": (int(seed) + request * _REQUEST_SEED_STRIDE) % 2**31,
                    "stop_token_ids": sorted(eos_token_ids),
                },
                **spec.vllm_request(),
            )
            samples = [cut_at_eos(list(ids), eos_token_ids) for ids in output["completion_ids"]]
            for k, slots in enumerate(positions):
                mine = samples[k * copies * n : (k + 1) * copies * n]
                for copy, position in enumerate(slots):
                    results[position] = mine[copy * n : (copy + 1) * n]
        return [sample for per_prompt in results for sample in per_prompt]


_REQUEST_SEED_STRIDE = 1_000_003  # requests' seed ranges (seed .. seed + n·copies) never overlap


def group_equal_prompts(prompts: list[list[int]]) -> list[tuple[list[tuple[int, ...]], list[list[int]]]]:
    """Merge equal prompts and group the distinct ones by how often they occur.

    Returns one (distinct prompts, their positions in `prompts`) group per
    multiplicity, in first-seen order; all prompts of a group occur equally often.
    """
    positions: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        positions.setdefault(tuple(prompt), []).append(i)
    groups: dict[int, tuple[list, list]] = {}
    for key, slots in positions.items():
        keys, slot_lists = groups.setdefault(len(slots), ([], []))
        keys.append(key)
        slot_lists.append(slots)
    return list(groups.values())
