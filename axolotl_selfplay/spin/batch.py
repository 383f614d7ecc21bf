"""pair_batch: one SPIN training step's rows, [real; generated], with their reference log-probs."""

from __future__ import annotations

import torch

from ..batching import pad_sequences
from .store import OpponentStore, Pair


def pair_batch(
    store: OpponentStore, examples: list[int], pairs: list[Pair], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One right-padded batch: the B real rows first, then one row per pair's y'.

    Every rank must call it at every training step: the tokens may be held by other
    ranks (`OpponentStore.fetch`).

    Returns input_ids/attention_mask/labels of shape (B + P, T); `real_row` (P,)
    mapping each pair to its real row; the reference log-probs under θ_t of the
    real rows `ref_real_logps` (B,) and of the pairs' y' `ref_generated_logps`
    (P,), float32; and when the store holds them the same under θ_0
    (`base_real_logps`, `base_generated_logps`).
    """
    row_of = {example: row for row, example in enumerate(examples)}
    prompts, reals, generated = store.fetch(examples, pairs)  # a collective with several ranks
    prompts = prompts + [prompts[row_of[p.example]] for p in pairs]
    batch = pad_sequences(prompts, reals + generated, pad_token_id)
    batch["real_row"] = torch.tensor([row_of[p.example] for p in pairs], dtype=torch.long)
    batch["ref_real_logps"] = torch.tensor([store.ref_logp_real[i] for i in examples], dtype=torch.float32)
    batch["ref_generated_logps"] = torch.tensor([p.opponent.ref_logp for p in pairs], dtype=torch.float32)
    if store.has_base:  # starting-model log-probs for kl_to_base
        batch["base_real_logps"] = torch.tensor([store.base_logp_real[i] for i in examples], dtype=torch.float32)
        batch["base_generated_logps"] = torch.tensor([p.opponent.base_logp for p in pairs], dtype=torch.float32)
    return batch
