"""Small model-level helpers the trainers share: PEFT detection and dropout off."""

from __future__ import annotations

import torch

# Float attributes through which HF modules apply dropout at forward time
# (`F.dropout(x, p=self.dropout, training=self.training)`; the attention functions
# read `self.attention_dropout`), beside the `nn.Dropout` modules.
_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout", "hidden_dropout", "activation_dropout")


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def transformers_model(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if is_peft_model(model) else model


def disable_dropout(model) -> int:
    """Switch off every dropout of `model` for good; returns how many were on.

    Covers `nn.Dropout` modules (LoRA's `lora_dropout`, Phi-3's `resid_pdrop`, ...)
    and the dropout probabilities HF attention layers keep as plain floats
    (`attention_dropout`, applied only in train mode), which TRL's
    `disable_dropout_in_model` misses.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name in _DROPOUT_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(value, bool) and value > 0:
                setattr(module, name, 0.0)
                changed += 1
    return changed
