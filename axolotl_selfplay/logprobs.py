"""Per-sequence log-probabilities of labelled tokens, computed in float32."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | tokens_<t) per labelled token.

    logits: (N, T, V) from a causal LM over input_ids (N, T); labels: (N, T) with
    IGNORE_INDEX on prompt and padding. Returns (logps, mask), both (N, T−1):
    float32 log-probs (0 where unlabelled) and the bool mask of labelled tokens.

    log-softmax runs in float32 one row at a time, so bf16 logits never lose
    precision and the (N, T, V) float32 copy is never materialised at once.
    """
    labels = labels[:, 1:]
    logits = logits[:, :-1]
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0)
    per_token = []
    for row_logits, row_labels in zip(logits, safe_labels):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        per_token.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(per_token) * mask, mask


def model_token_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logps` of `model`'s forward over `input_ids`: from the last hidden states at
    the labelled positions, lm_head in chunks, where that is exact for the model; from the
    full logits otherwise (head_logps.py)."""
    from .head_logps import model_token_logps as from_hidden_states

    return from_hidden_states(model, input_ids, attention_mask, labels)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t | tokens_<t) over the labelled tokens of each row: (N,) float32."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


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
