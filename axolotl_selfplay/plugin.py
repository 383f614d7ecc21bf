"""SelfPlayPlugin: wires self-play into Axolotl; every hook is inert without `selfplay`.

Axolotl >= 0.20 loads installed plugins for EVERY config, so each hook returns
plain None (or []) unless the config asks for self-play: an ordinary SFT or DPO
run trains exactly as if this package were not installed.

The seam: `register()` sees the raw YAML before validation and moves
`rl: spin` into `selfplay.type`, leaving `rl` unset. Axolotl then builds its
causal (SFT) trainer, the one path that hands the model to a plugin trainer
class and uses a plugin collator.
"""

from __future__ import annotations

import difflib

from axolotl.integrations.base import BasePlugin

from . import get_logger
from .config import (
    SELFPLAY_RL_TYPES,
    check_compatible,
    check_num_epochs,
    check_schedule,
    parse_selfplay_block,
    remap_rl,
)

LOG = get_logger(__name__)

LORA_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _selfplay_enabled(cfg) -> bool:
    return bool(cfg.get("selfplay"))


def _check_block_name(cfg) -> None:
    # Axolotl drops unknown top-level keys silently; a misspelt block would turn
    # a self-play run into plain SFT without a word.
    for key in list(cfg.keys()):
        if key != "selfplay" and difflib.SequenceMatcher(None, str(key).lower(), "selfplay").ratio() >= 0.8:
            raise ValueError(f"unknown top-level key `{key}`: did you mean `selfplay:`?")


def _check_rl_name(cfg) -> None:
    # A misspelt `rl: spn` is not remapped, so a `selfplay:` block would then fail on
    # `selfplay.type`, a key the user never wrote. Axolotl's own values pass untouched.
    rl = cfg.get("rl")
    rl = getattr(rl, "value", rl)
    if rl is None or rl in SELFPLAY_RL_TYPES:
        return
    from axolotl.utils.schemas.enums import RLType

    axolotl_types = [member.value for member in RLType]
    if rl in axolotl_types:
        return
    close = difflib.get_close_matches(str(rl), [*SELFPLAY_RL_TYPES, *axolotl_types], n=1, cutoff=0.6)
    if not (_selfplay_enabled(cfg) or (close and close[0] in SELFPLAY_RL_TYPES)):
        return  # nothing to do with self-play: Axolotl's own error names its values
    hint = f" did you mean `{close[0]}`?" if close else ""
    raise ValueError(
        f"unknown rl type `{rl}`:{hint} ({', '.join(SELFPLAY_RL_TYPES)}, or one of Axolotl's: "
        f"{', '.join(axolotl_types)})"
    )


class SelfPlayPlugin(BasePlugin):
    """`rl: spin`, `rl: spin_chi2` and `rl: lsp` for Axolotl (axolotl-selfplay)."""

    def register(self, cfg):
        _check_block_name(cfg)
        _check_rl_name(cfg)
        remap_rl(cfg)
        if not _selfplay_enabled(cfg):
            return
        # Validate the block now so its errors come before Axolotl's own checks.
        parsed = parse_selfplay_block(cfg["selfplay"])
        check_compatible(parsed.type, cfg.get)
        check_schedule(parsed, cfg.get)
        if parsed.type == "lsp":
            from .data import LSP_NO_DATA, check_lsp_seed_datasets
            from .rewards import load_reward_funcs

            load_reward_funcs(parsed.lsp.reward_funcs)  # import errors now, not after the model loads
            if not cfg.get("datasets"):
                # Axolotl requires `datasets:`; LSP needs none. The plugin's
                # load_datasets hook recognises this entry and builds the games.
                cfg["datasets"] = [{"path": LSP_NO_DATA}]
            check_lsp_seed_datasets(cfg["datasets"], parsed.lsp.challenger_prompt)
        else:
            if cfg.get("num_epochs") is None:
                cfg["num_epochs"] = parsed.iterations * parsed.epochs_per_iteration
            check_num_epochs(cfg.get("num_epochs"), parsed.iterations, parsed.epochs_per_iteration)
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
            from .data import prepare_lsp_games

            return prepare_lsp_games(cfg)  # one row per game; the trainer turns rows into Challenger prompts
        from .data_check import prepare_spin_datasets

        # Axolotl's own SFT preparation (and cache), every row checked on the way.
        return prepare_spin_datasets(cfg).meta

    def get_trainer_cls(self, cfg):
        if not _selfplay_enabled(cfg):
            return None
        if cfg.selfplay.type == "lsp":
            from .trainers.lsp import LSPTrainer

            return LSPTrainer
        from .trainers.spin import SelfPlayTrainer

        return SelfPlayTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not _selfplay_enabled(cfg):
            return None
        # Evaluation too: the held-out rows are scored with the self-play objective
        # against opponents generated for them at every iteration (trainers/spin.py).
        from .collator import SelfPlayCollator

        return SelfPlayCollator, {}


__all__ = ["SELFPLAY_RL_TYPES", "SelfPlayPlugin"]
