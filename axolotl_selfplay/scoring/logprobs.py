"""Log-probabilities of labelled (response) tokens, in float32.

- `token_logps`: from logits, one row at a time.
- `model_token_logps`: a model's forward straight to those log-probs: from the last
  hidden states at the labelled positions, lm_head in chunks, where that is exact for
  the model (scoring/head.py), from the full logits otherwise.
- `score_responses` / `score_response_tokens`: lp(y|x) of many (x, y) pairs without
  gradients, in length-sorted batches (reference log-probs, the judge's KL).
"""

from __future__ import annotations

import torch

from ..batching import IGNORE_INDEX, length_sorted_batches, pad_sequences, progress_bar
from .head import head_for, report_route, unwrap


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


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t | tokens_<t) over the labelled tokens of each row: (N,) float32."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def model_token_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logps(model(input_ids, attention_mask).logits, labels)`, through the
    hidden-state route when `head_for(model)` allows it: (N, T−1) float32 log-probs (0 where
    unlabelled) and the (N, T−1) bool mask of labelled tokens."""
    head, why = head_for(model)
    report_route(unwrap(model), head, why)
    if head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return token_logps(logits, labels)
    with head.returning_logps(labels):
        logps = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logps, labels[:, 1:] != IGNORE_INDEX


def _scored_batches(model, prompts, responses, *, pad_token_id, batch_size, description, show_progress):
    """Yield (batch indices, per-token log-probs (n, T-1), label mask) for every
    length-sorted batch of (prompt, response) pairs, in eval mode and float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    try:
        with progress_bar(len(prompts), description, show_progress) as bar:
            for batch in length_sorted_batches(lengths, batch_size):
                padded = pad_sequences([prompts[i] for i in batch], [responses[i] for i in batch], pad_token_id)
                logps, mask = model_token_logps(
                    model,
                    padded["input_ids"].to(device),
                    padded["attention_mask"].to(device),
                    padded["labels"].to(device),
                )
                yield batch, logps, mask
                bar.update(len(batch))
    finally:
        model.train(was_training)


@torch.no_grad()
def score_responses(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    show_progress: bool = False,
) -> list[float]:
    """lp(response | prompt) for each pair, summed over response tokens, float32."""
    scores = [0.0] * len(prompts)
    for batch, logps, _ in _scored_batches(
        model, prompts, responses, pad_token_id=pad_token_id, batch_size=batch_size,
        description="self-play: scoring (reference log-probs)", show_progress=show_progress,
    ):
        for row, total in zip(batch, logps.sum(-1).tolist()):
            scores[row] = total
    return scores


@torch.no_grad()
def score_response_tokens(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    pad_token_id: int,
    batch_size: int,
) -> list[torch.Tensor]:
    """Per-token lp(response_t | prompt, response_<t) for each pair: CPU float32 (len(response),)."""
    scores: list[torch.Tensor | None] = [None] * len(prompts)
    for batch, logps, mask in _scored_batches(
        model, prompts, responses, pad_token_id=pad_token_id, batch_size=batch_size,
        description="", show_progress=False,
    ):
        for row, i in enumerate(batch):
            scores[i] = logps[row][mask[row]].cpu()
    return scores  # type: ignore[return-value]
