"""Batched opponent generation and no-grad scoring with the current policy.

`generate_responses` samples y' for many prompts: prompts are sorted by length
so each batch holds prompts of similar length (little padding), left-padded by
hand (never trusting `tokenizer.padding_side`, which Axolotl flips for some
models), and cut at the first EOS. Rows that end their turn leave the running
batch and its KV cache (`_decode_batch`), so the batch does not keep decoding
them until its longest response ends. `score_responses` computes lp(y|x) for many
(x, y) in batches, again length-sorted, in float32.

Both run on an already-unwrapped model (the caller enters TRL's
`unwrap_model_for_generation`, which gathers ZeRO-3 parameters once and turns
gradient checkpointing off for the duration). Sampling uses its own seeded RNG
stream, so generations are reproducible and never disturb the training RNG
(HF restores the training RNG on resume; generation must not depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .logprobs import model_token_logps, pad_sequences
from .modeling import transformers_model
from .sampling import SamplingSpec, neutral_generation_config


def _length_sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Fork the global RNG (CPU and the current accelerator), seed it, restore after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def end_of_turn_ids(tokenizer, model) -> set[int]:
    """Tokens that end a response: the tokenizer's EOS and the model's generation EOS."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    ids.discard(None)
    return ids


def cut_at_eos(tokens: list[int], eos_token_ids: set[int]) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS.

    Returns (tokens, truncated): truncated is True when no EOS was generated,
    i.e. the response used all of max_new_tokens (generate pads only rows that
    finished, so an unfinished row has no padding to strip).
    """
    for position, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: position + 1], False
    return tokens, True


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
    decodes every row of a batch until its longest response ends, as before)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

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
    import copy

    from transformers import StoppingCriteriaList

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
            _progress(len(prompts), description, show_progress) as bar,
        ):
            for batch in _length_sorted_batches([len(p) for p in prompts], batch_size):
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


def sharded_generation(accelerator, model, gather_deepspeed3_params: bool) -> bool:
    """Whether every generate/forward is a collective over sharded weights, so that all
    ranks must run the same batches (`synced_gpus`, `pad_for_lockstep`): FSDP (each layer
    all-gathers its weights in its forward), or ZeRO-3 with `ds3_gather_for_generation: false`."""
    if accelerator.num_processes == 1:
        return False
    if is_fsdp(accelerator, model):
        return True
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return not gather_deepspeed3_params and getattr(ds_plugin, "zero_stage", 0) == 3


def is_fsdp(accelerator, model) -> bool:
    """FSDP as accelerate reports it, or a model whose parameters are FSDP2 DTensor shards."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return any(hasattr(param, "full_tensor") for param in model.parameters())


def pad_for_lockstep(items: list, filler, accelerator) -> list:
    """Pad `items` with `filler` to the longest length of this list on any rank.

    Under ZeRO-3 without gathered weights every forward is a collective, so all
    ranks must run the same number of batches; callers drop the padded results.
    """
    counts = accelerator.gather(torch.tensor([len(items)], device=accelerator.device))
    return items + [filler] * (int(counts.max()) - len(items))


def _scored_batches(model, prompts, responses, *, pad_token_id, batch_size, description, show_progress):
    """Yield (batch indices, per-token log-probs (n, T-1), label mask) for every
    length-sorted batch of (prompt, response) pairs, in eval mode and float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    try:
        with _progress(len(prompts), description, show_progress) as bar:
            for batch in _length_sorted_batches(lengths, batch_size):
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
