"""SelfPlayCollator: batches of example indices, for both algorithms.

Axolotl runs the training collator in DataLoader worker processes that prefetch
batches. A worker holds its own copy of whatever the collator references, so an
opponent store refreshed in the main process at an iteration boundary is not
seen by a worker that is already running (persistent workers silently trained
iteration 2 on iteration-1 opponents in our prototype). The collator therefore
only carries each example's index; the trainer builds the real batch in the main
process at the step that uses it (SPIN: `spin.batch.pair_batch` joins the examples
with their current opponents; LSP: a row is a game, played in `training_step`).
"""

from __future__ import annotations

import torch

from .columns import INDEX_COLUMN


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
                "only works with the self-play trainers' training datasets"
            )
        return {INDEX_COLUMN: torch.tensor([f[INDEX_COLUMN] for f in features], dtype=torch.long)}
