"""SelfPlayPlugin: wires self-play into Axolotl; every hook is inert without `selfplay`.

Axolotl >= 0.20 loads installed plugins for EVERY config, so each hook returns
plain None (or []) unless the config asks for self-play: an ordinary SFT or DPO
run trains exactly as if this package were not installed.

The seam: `register()` sees the raw YAML before validation and moves
`rl: spin` into `selfplay.type`, leaving `rl` unset. Axolotl then builds its
causal (SFT) trainer, the one path that hands the model to a plugin trainer
class and uses a plugin collator.

The plugin module imports only `config` (pydantic) at load time: Axolotl imports
it for every config once the package is installed. Each hook imports the part of
the package it hands to Axolotl when it is called.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from . import get_logger
from .config import LSP_NO_DATA, validate_selfplay_yaml

LOG = get_logger(__name__)

LORA_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _selfplay_enabled(cfg) -> bool:
    return bool(cfg.get("selfplay"))


class SelfPlayPlugin(BasePlugin):
    """`rl: spin`, `rl: spin_chi2` and `rl: lsp` for Axolotl (axolotl-selfplay)."""

    def register(self, cfg):
        from axolotl.utils.schemas.enums import RLType

        # Validated now, so its errors come before Axolotl's own checks.
        parsed = validate_selfplay_yaml(cfg, [member.value for member in RLType])
        if parsed is None:
            return
        if parsed.type == "lsp":
            from .lsp.rewards import load_reward_funcs

            load_reward_funcs(parsed.lsp.reward_funcs)  # import errors now, not after the model loads
            if not cfg.get("datasets"):
                # Axolotl requires `datasets:`; LSP needs none. The plugin's
                # load_datasets hook recognises this entry and builds the games.
                cfg["datasets"] = [{"path": LSP_NO_DATA}]
        if cfg.get("adapter") in ("lora", "qlora") and all(cfg.get(k) is None for k in LORA_KERNEL_KEYS):
            # With `rl` unset Axolotl would auto-enable its Triton LoRA kernels, which
            # it never enables for its own RL trainers; match `rl: dpo` (and keep CPU
            # runs working). Set the keys explicitly to opt in.
            for key in LORA_KERNEL_KEYS:
                cfg[key] = False
        LOG.info("axolotl-selfplay: `rl: %s` runs on Axolotl's causal trainer with the self-play plugin", parsed.type)

    def get_input_args(self):
        return "axolotl_selfplay.config.SelfPlayArgs"

    def load_datasets(self, cfg, preprocess=False):
        # Runs before any model loads, for `axolotl train` and `axolotl preprocess`:
        # every data error must surface here, not after minutes of model loading.
        if not _selfplay_enabled(cfg):
            return None
        if cfg.selfplay.type == "lsp":
            from .data.lsp import prepare_lsp_games

            return prepare_lsp_games(cfg)  # one row per game; the trainer turns rows into Challenger prompts
        from .data.spin import prepare_spin_data

        # Axolotl's own SFT preparation (and cache), every row checked on the way.
        return prepare_spin_data(cfg).meta

    def get_trainer_cls(self, cfg):
        if not _selfplay_enabled(cfg):
            return None
        if cfg.selfplay.type == "lsp":
            from .lsp.trainer import LSPTrainer

            return LSPTrainer
        from .spin.trainer import SpinTrainer

        return SpinTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not _selfplay_enabled(cfg):
            return None
        # Evaluation too: the held-out rows are scored with the self-play objective
        # against opponents generated for them at every iteration (spin/trainer.py).
        from .data.collator import SelfPlayCollator

        return SelfPlayCollator, {}


__all__ = ["SelfPlayPlugin"]
