"""Which vLLM backend samples for `selfplay.generation.backend: vllm`, built from the config.

- `vllm_mode: colocate`: an engine in each training process (sampling/vllm_colocate.py);
- `vllm_mode: server` + `vllm_weight_transfer: nccl`: TRL's client and NCCL (sampling/vllm.py);
- `vllm_mode: server` + `vllm_weight_transfer: files`: vLLM's OpenAI-compatible server in dev
  mode, weights as files (sampling/vllm_files.py).

The plugin has resolved an unset `vllm_mode` from the YAML (config.py's `vllm_mode`: server when
Axolotl's `vllm:` block names one; Axolotl fills a default block later) and refused, before the
model loaded, a mode the installed vLLM cannot run (config.py's `check_vllm`).
"""

from __future__ import annotations

import os

from ..config import vllm_mode
from .vllm import VLLMServer
from .vllm_colocate import ColocatedVLLM
from .vllm_files import FilesVLLMServer


def engine_max_model_len(cfg) -> int:
    """`vllm_max_model_length`, else the longest prompt plus the longest sample: `sequence_len` +
    the larger of `max_new_tokens` and LSP's `max_query_tokens`."""
    gen = cfg.selfplay.generation
    if gen.get("vllm_max_model_length"):
        return int(gen.vllm_max_model_length)
    lsp = cfg.selfplay.get("lsp") or {}
    longest_sample = max(int(gen.max_new_tokens), int(lsp.get("max_query_tokens") or 0))
    return int(cfg.sequence_len or 2048) + longest_sample


def connect_vllm(trainer):
    """The trainer's vLLM backend when `generation.backend: vllm`, else None."""
    cfg = trainer.axolotl_cfg
    gen = cfg.selfplay.generation
    if gen.backend != "vllm":
        return None
    mode = vllm_mode(gen, cfg.get)
    if mode == "colocate":
        dtype = next(trainer.accelerator.unwrap_model(trainer.model).parameters()).dtype
        return ColocatedVLLM(
            model_dir=str(cfg.base_model),
            dtype=str(dtype).removeprefix("torch."),
            max_model_len=engine_max_model_len(cfg),
            gpu_memory_utilization=gen.vllm_gpu_memory_utilization,
            enable_sleep_mode=gen.vllm_enable_sleep_mode,
            seed=int(cfg.seed or 0) + trainer.accelerator.process_index,
            accelerator=trainer.accelerator,
        )
    if gen.vllm_weight_transfer == "files":
        block = cfg.get("vllm") or {}
        return FilesVLLMServer(
            host=block.get("host") or "127.0.0.1",  # dev-mode servers listen on localhost (vllm_files.py)
            port=int(block.get("port") or 8000),
            weights_dir=gen.vllm_weights_dir or os.path.join(trainer.args.output_dir, "vllm_weights"),
            timeout=gen.vllm_server_timeout,
            accelerator=trainer.accelerator,
        )
    return VLLMServer(cfg, trainer.accelerator, gen.vllm_server_timeout)
