"""SelfPlayCollator: batches of example indices; the [real; generated] join.

Axolotl runs the training collator in DataLoader worker processes that prefetch
batches. A worker holds its own copy of whatever the collator references, so an
opponent store refreshed in the main process at an iteration boundary is not
seen by a worker that is already running (persistent workers silently trained
iteration 2 on iteration-1 opponents in our prototype). The collator therefore
only carries each example's index; `pair_batch` joins the examples with their
current opponents inside the trainer, in the main process, at the step that
uses them.
"""

from __future__ import annotations

import torch

from .logprobs import pad_sequences
from .opponent import OpponentStore, Pair

INDEX_COLUMN = "selfplay_index"


class SelfPlayCollator:
    """Collates rows of the self-play training dataset into `{"selfplay_index": (B,)}`.

    Accepts the keyword arguments Axolotl's causal builder passes to every
    collator (tokenizer, padding, pad_to_multiple_of, return_tensors).
    """

    def __init__(self, tokenizer=None, padding=True, pad_to_multiple_of=None, return_tensors="pt", **kwargs):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if features and INDEX_COLUMN not in features[0]:
            raise KeyError(
                f"training rows carry no `{INDEX_COLUMN}` column; the self-play collator "
                "only works with the SelfPlayTrainer's training dataset"
            )
        return {INDEX_COLUMN: torch.tensor([f[INDEX_COLUMN] for f in features], dtype=torch.long)}


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
