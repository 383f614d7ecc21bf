"""The starting model θ_0: `kl_to_base` (α-SPIN's reference mixture) and LSP's reference.

θ_0 is the model the run starts from: the base model, plus the adapter loaded
from `lora_model_dir` when the run continues an existing LoRA ("KL toward where
I started"). No second model is kept on the accelerator for SPIN:
- LoRA trained from scratch: θ_0 is the policy with its adapter disabled (free).
- LoRA from `lora_model_dir`: the loaded adapter's weights (small) are copied whole to
  CPU when training starts — before a resumed run loads its checkpoint, so the
  copy is θ_0 either way, and before accelerate prepares the model (FSDP2 shards it
  there) — then, at the first swap, laid out as the live parameters are (under FSDP2
  this rank's DTensor shards) and swapped into the adapter while scoring.
- Full fine-tuning: a CPU copy of the trainable weights, sharded across the ranks:
  each rank keeps 1/world of every tensor (flattened), so all ranks together hold one
  copy (e.g. ~14 GB for a 7B model in bf16, ~1.75 GB per rank on 8 GPUs); under
  FSDP2 each rank keeps its own DTensor shards. It is taken at the first opponent
  refresh of a fresh run, when the policy still is θ_0, inside the gathered-parameter
  context under ZeRO-3, or loaded from `base_model` when a run resumes. To score
  under θ_0 it is swapped into the live parameters and swapped back afterwards, one
  tensor at a time: the ranks all-gather their parts of θ_0 into the tensor and keep
  their part of θ_t in exchange (every rank swaps at the same time).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
from trl.models import unwrap_model_for_generation

from .. import get_logger
from ..modeling import is_peft_model

LOG = get_logger(__name__)


class StartingModel:
    def __init__(self, axolotl_cfg, policy=None):
        """`policy`: the model as Axolotl loaded it, before any training step or
        checkpoint load (needed for a `lora_model_dir` adapter's snapshot)."""
        self.cfg = axolotl_cfg
        self._weights: dict[str, torch.Tensor] | None = None  # laid out as the live parameters
        self._adapter: dict[str, torch.Tensor] | None = None  # whole, until the first swap lays it out
        if policy is not None and self._swaps_adapter(policy):
            self._adapter = _whole_copies(policy)

    def _disables_adapter(self, model) -> bool:
        # A fresh adapter is part of training, not of θ_0: switch it off.
        return is_peft_model(model) and not self.cfg.get("lora_model_dir")

    def _swaps_adapter(self, model) -> bool:
        return is_peft_model(model) and bool(self.cfg.get("lora_model_dir"))

    def snapshot(self, model) -> None:
        """Copy this rank's part of θ_0's trainable weights to CPU; `model` must still hold θ_0.
        Once: the evaluation rows' rollout at the start of a run finds the copy taken already."""
        if is_peft_model(model) or self._weights is not None:
            return  # adapters: disabled, or copied when the run started
        self._weights = _trainable_parts(model)

    @contextmanager
    def active(self, model):
        """Within the block, `model` computes θ_0's log-probs."""
        if self._disables_adapter(model):
            with model.disable_adapter():
                yield model
            return
        if self._weights is None:
            self._weights = self._starting_weights(model)
        self._swap(model)
        try:
            yield model
        finally:
            self._swap(model)

    def _starting_weights(self, model) -> dict[str, torch.Tensor]:
        """θ_0's trainable weights, laid out as `model`'s parameters are now."""
        if self._adapter is not None:
            params = dict(model.named_parameters())
            weights = {name: _rank_part(_like(params[name], whole)) for name, whole in self._adapter.items()}
            self._adapter = None
            return weights
        if is_peft_model(model):
            raise RuntimeError("the starting adapter of `lora_model_dir` was not copied when training started")
        return self._load_from_base_model(model)

    def _swap(self, model) -> None:
        """Exchange the stored weights with the live ones, tensor by tensor (a collective
        when the stored ones are rank parts)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, stored in self._weights.items():
                self._weights[name] = _exchange(_readable(name, params[name]), stored)

    def _load_from_base_model(self, model) -> dict[str, torch.Tensor]:
        LOG.info("kl_to_base: loading the starting weights from %s to CPU", self.cfg.get("base_model"))
        base = AutoModelForCausalLM.from_pretrained(
            self.cfg.get("base_model"),
            torch_dtype=next(model.parameters()).dtype,
            revision=self.cfg.get("revision_of_model") or "main",
            trust_remote_code=bool(self.cfg.get("trust_remote_code")),
        )
        state = base.state_dict()
        weights = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name not in state or tuple(state[name].shape) != tuple(param.shape):
                raise ValueError(
                    f"kl_to_base: parameter `{name}` of the policy does not match `base_model` "
                    f"{self.cfg.get('base_model')} (resized embeddings?). Resume is not possible with "
                    "kl_to_base for this model: restart the run, or set `kl_to_base: 0`."
                )
            weights[name] = _rank_part(_like(param, state[name].detach()))
        del base, state
        return weights


# -- θ_0 sharded across the ranks ------------------------------------------------------
# Under DDP and DeepSpeed (ZeRO-3: inside the gathered-parameter context) every rank holds
# the same full tensors, so each keeps only its part: the k = ceil(numel / world) elements
# of the flattened tensor starting at rank·k. FSDP2's DTensors are shards already: a rank
# keeps its own local shard (`.to("cpu")` of a DTensor copies only that).


def _trainable_parts(model) -> dict[str, torch.Tensor]:
    return {name: _rank_part(_readable(name, p).detach()) for name, p in model.named_parameters() if p.requires_grad}


def _whole_copies(model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters, whole (a LoRA adapter's: small)."""
    return {
        name: _readable(name, p).detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
    }


def _readable(name: str, param: torch.Tensor) -> torch.Tensor:
    # Outside a gather a ZeRO-3 parameter holds no data: a copy of it would be empty, and
    # swapping it back in later a silent no-op (θ_0 scored as θ_t).
    if getattr(param, "ds_numel", 0) and param.data.numel() == 0:
        raise RuntimeError(
            f"θ_0 (`selfplay.kl_to_base`, or `rl: lsp`'s reference): parameter `{name}` is partitioned by ZeRO-3 "
            "and holds no data outside a gather, so θ_0 cannot be copied into or out of it. Set "
            "`selfplay.generation.ds3_gather_for_generation: true`, or `selfplay.kl_to_base: 0`."
        )
    return param


def _is_dtensor(tensor) -> bool:
    return hasattr(tensor, "full_tensor")


def _like(param, full: torch.Tensor) -> torch.Tensor:
    """`full` (every rank loaded the same) laid out as `param`: under FSDP2 this rank's shard."""
    if not _is_dtensor(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def _split(tensor) -> bool:
    """Whether ranks keep parts of `tensor` (the same answer on every rank)."""
    return _ranks()[1] > 1 and not _is_dtensor(tensor)


def _ranks() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a replicated tensor, on CPU (a DTensor: its local shard)."""
    if not _split(tensor):
        return tensor.to("cpu", copy=True)
    rank, world = _ranks()
    flat = tensor.reshape(-1)
    k = -(-flat.numel() // world)
    return flat[rank * k : (rank + 1) * k].to("cpu", copy=True)


def _exchange(param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Put `stored` (a rank part, or a whole tensor / DTensor shard) into `param`; returns
    the same kind of part of what `param` held."""
    live = _rank_part(param.data)
    if not _split(param):  # the whole tensor (one process), or a DTensor shard
        param.data.copy_(stored.to(device=param.device, dtype=param.dtype))
        return live
    _, world = _ranks()
    k = -(-param.numel() // world)
    part = torch.zeros(k, dtype=param.dtype, device=param.device)
    part[: stored.numel()] = stored.to(device=param.device, dtype=param.dtype)
    full = torch.empty(k * world, dtype=param.dtype, device=param.device)
    dist.all_gather_into_tensor(full, part)
    param.data.copy_(full[: param.numel()].view_as(param))
    return live


class ReferenceModel:
    """π_ref = θ_0 for LSP, which needs it at every step (KL and the self-judge).

    - LoRA: the policy with its adapter disabled, or with the `lora_model_dir`
      adapter's starting weights swapped in (`StartingModel`; no extra accelerator
      memory either way).
    - Full fine-tuning: a frozen copy, made when training starts (the policy still
      is θ_0). Under ZeRO-3 the policy's weights are already sharded, so the copy
      is loaded from `base_model` instead; with DeepSpeed it is prepared the way
      TRL prepares reference models (sharded under ZeRO-3, replicated otherwise).
    """

    def __init__(self, policy, accelerator, axolotl_cfg):
        self.accelerator = accelerator
        self.frozen = None
        self.starting = None
        if is_peft_model(policy):
            self.starting = StartingModel(axolotl_cfg, policy)
            return
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            frozen = self._load_base_model(policy, axolotl_cfg)
        else:
            frozen = copy.deepcopy(policy)
        frozen.requires_grad_(False)
        frozen.eval()
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
            from trl.models.utils import prepare_deepspeed

            frozen = prepare_deepspeed(frozen, accelerator)
        else:
            frozen = frozen.to(accelerator.device)
        self.frozen = frozen

    @staticmethod
    def _load_base_model(policy, axolotl_cfg):
        LOG.info("rl: lsp: loading the reference model from %s (ZeRO-3)", axolotl_cfg.get("base_model"))
        return AutoModelForCausalLM.from_pretrained(
            axolotl_cfg.get("base_model"),
            torch_dtype=next(policy.parameters()).dtype,
            attn_implementation=getattr(policy.config, "_attn_implementation", None),
            revision=axolotl_cfg.get("revision_of_model") or "main",
            trust_remote_code=bool(axolotl_cfg.get("trust_remote_code")),
        )

    @contextmanager
    def active(self, policy_wrapped, gather_deepspeed3_params: bool = True):
        """Yields a module computing π_ref, ready for `generate` and no-grad forwards."""
        if self.frozen is None:
            with unwrap_model_for_generation(
                policy_wrapped, self.accelerator, gather_deepspeed3_params=gather_deepspeed3_params
            ) as policy, self.starting.active(policy):
                yield policy
            return
        with unwrap_model_for_generation(
            self.frozen, self.accelerator, gather_deepspeed3_params=gather_deepspeed3_params
        ) as reference:
            yield reference
