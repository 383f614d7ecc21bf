"""The `hf` backend: batched sampling with `generate` on the model being trained.

`generate_responses` samples one response per prompt: prompts are sorted by
length so each batch holds prompts of similar length (little padding),
left-padded by hand (never trusting `tokenizer.padding_side`, which Axolotl flips
for some models), and cut at the first end-of-turn token. Rows that end their
turn leave the running batch and its KV cache (`_decode_batch`), so the batch
does not keep decoding them until its longest response ends.

It runs on an already-unwrapped model (the caller enters TRL's
`unwrap_model_for_generation`, which gathers ZeRO-3 parameters once and turns
gradient checkpointing off for the duration). Sampling uses its own seeded RNG
stream, so generations are reproducible and never disturb the training RNG
(HF restores the training RNG on resume; generation must not depend on it).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
from transformers import DynamicCache, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..batching import length_sorted_batches, progress_bar
from ..modeling import transformers_model
from .spec import SamplingSpec, cut_at_eos, neutral_generation_config


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Fork the global RNG (CPU and the current accelerator), seed it, restore after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# A `generate` segment ends once this fraction of its running rows has ended their turn;
# those rows then leave the batch and its KV cache (`_decode_batch`).
ENDED_FRACTION = 0.25


class _SomeRowsEnded:
    """Stopping criterion: stop the whole `generate` call once `ENDED_FRACTION` of the rows
    (at least one) have generated an end-of-turn token since `start`."""

    def __init__(self, eos_token_ids: set[int], start: int, rows: int):
        self.eos = torch.tensor(sorted(eos_token_ids))
        self.start = start
        self.enough = max(1, math.ceil(ENDED_FRACTION * rows))

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        ended = torch.isin(input_ids[:, self.start :], self.eos.to(input_ids.device)).any(dim=1)
        return torch.full_like(ended, bool(ended.sum() >= self.enough))


def _compactable_cache(model):
    """A fresh DynamicCache for `model` whose layers can drop rows, or None (then `generate`
    decodes every row of a batch until its longest response ends)."""
    config = transformers_model(model).config
    if getattr(config, "is_encoder_decoder", False):
        return None
    try:
        cache = DynamicCache(config=config)
    except (TypeError, ValueError):
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
        return None
    return cache


def _decode_batch(model, input_ids, attention_mask, generation_config, eos_token_ids, synced_gpus, stats) -> list[list[int]]:
    """Each row's generated tokens (padded after its end of turn) for one left-padded batch.

    `generate` decodes every row until the batch's longest response ends. Here it runs in
    segments: a segment stops once a quarter of its rows have ended (`_SomeRowsEnded`);
    those rows leave the batch and the KV cache (`batch_select_indices`), and the next
    segment continues the others from the cache. Each segment samples with the same
    generation config over the whole sequence so far (the repetition penalty sees the
    prompt and every token generated before), so each row is sampled exactly as in one
    `generate` call; only the RNG draws are shared differently among the rows. With
    `synced_gpus` every rank must run the same forwards: one `generate` call, as HF does it.
    """
    width, budget = input_ids.shape[1], generation_config.max_new_tokens
    cache = None if synced_gpus else _compactable_cache(model)
    if cache is None:
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, synced_gpus=synced_gpus
        )
        _count(stats, input_ids.shape[0] * (output.shape[1] - width))
        return [row[width:] for row in output.tolist()]
    eos = torch.tensor(sorted(eos_token_ids), device=input_ids.device)
    running = list(range(input_ids.shape[0]))  # the batch rows still generating
    results: list[list[int] | None] = [None] * len(running)
    produced = 0
    while running:
        config = copy.deepcopy(generation_config)
        config.max_new_tokens = budget - produced
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            past_key_values=cache,
            stopping_criteria=StoppingCriteriaList([_SomeRowsEnded(eos_token_ids, input_ids.shape[1], len(running))]),
            return_dict_in_generate=True,
            # explicit: left unset, `generate` syncs every rank's loop whenever ZeRO-3 (or FSDP) is
            # on, even with the weights gathered, and ranks that run different segments hang
            synced_gpus=False,
        )
        sequences, steps = output.sequences, output.sequences.shape[1] - input_ids.shape[1]
        produced += steps
        _count(stats, len(running) * steps)
        ended = torch.isin(sequences[:, input_ids.shape[1] :], eos).any(dim=1) | (produced >= budget)
        for row in ended.nonzero().flatten().tolist():
            results[running[row]] = sequences[row, width:].tolist()
        keep = (~ended).nonzero().flatten()
        if keep.numel() == 0:
            break
        cache = output.past_key_values
        cache.batch_select_indices(keep)
        input_ids = sequences[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], steps)], dim=1)[keep]
        running = [running[row] for row in keep.tolist()]
    return results  # type: ignore[return-value]


def _count(stats: dict | None, slots: int) -> None:
    if stats is not None:
        stats["decode_slots"] = stats.get("decode_slots", 0) + slots
        stats["generate_calls"] = stats.get("generate_calls", 0) + 1


@torch.no_grad()
def generate_responses(
    model,
    prompts: list[list[int]],
    *,
    spec: SamplingSpec,
    pad_token_id: int,
    eos_token_ids: set[int],
    batch_size: int,
    seed: int,
    show_progress: bool = False,
    synced_gpus: bool = False,
    description: str = "self-play: sampling",
    stats: dict | None = None,
) -> list[tuple[list[int], bool]]:
    """Generate one response per prompt; returns [(tokens, truncated)] in prompt order.

    Sampling follows `spec` and nothing else: the model's own generation config is
    neutralised for the call (see sampling.py). synced_gpus: ZeRO-3 without gathered
    weights; every rank must then call this with the same number of prompts (see
    `pad_for_lockstep`). `stats`, if given, receives "decode_slots" (rows × decode
    steps computed) and "generate_calls".
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    generation_config = spec.hf_generation_config(eos_token_ids, pad_token_id)
    try:
        with (
            seeded_rng(seed, device),
            neutral_generation_config(model, generation_config),
            progress_bar(len(prompts), description, show_progress) as bar,
        ):
            for batch in length_sorted_batches([len(p) for p in prompts], batch_size):
                width = max(len(prompts[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    prompt = prompts[i]
                    input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                    attention_mask[row, width - len(prompt) :] = 1
                rows = _decode_batch(
                    model, input_ids.to(device), attention_mask.to(device), generation_config, eos_token_ids,
                    synced_gpus, stats,
                )
                for row, i in enumerate(batch):
                    results[i] = cut_at_eos(rows[row], eos_token_ids)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
