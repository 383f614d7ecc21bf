"""Batches of (prompt, response) token rows, shared by training, scoring and generation.

- `pad_sequences`: right-padded prompt+response rows whose labels cover the
  responses only (`IGNORE_INDEX` elsewhere), as the losses and scoring read them.
- `length_sorted_batches`: indices grouped by length, longest first, so a batch
  spends little compute on padding.
- `progress_bar`: long passes (generation, scoring) show progress on the main process.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

IGNORE_INDEX = -100  # the label of a position that is not trained (prompt, padding), as in HF and Axolotl


def pad_sequences(
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response rows into one batch; labels cover responses only.

    Returns input_ids, attention_mask and labels, each (N, max_len), on CPU.
    """
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    n = len(prompts)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        row = list(prompt) + list(response)
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        labels[i, len(prompt) : len(row)] = torch.tensor(list(response), dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices into `lengths`, `batch_size` at a time, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
