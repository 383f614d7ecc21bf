"""Batched opponent generation and no-grad scoring with the current policy.

`generate_responses` samples y' for many prompts: prompts are sorted by length
so each batch holds prompts of similar length (little padding), left-padded by
hand (never trusting `tokenizer.padding_side`, which Axolotl flips for some
models), and cut at the first EOS. `score_responses` computes lp(y|x) for many
(x, y) in batches, again length-sorted, in float32.

Both run on an already-unwrapped model (the caller enters TRL's
`unwrap_model_for_generation`, which gathers ZeRO-3 parameters once and turns
gradient checkpointing off for the duration). Sampling uses its own seeded RNG
stream, so generations are reproducible and never disturb the training RNG
(HF restores the training RNG on resume; generation must not depend on it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .logprobs import pad_sequences, sequence_logps, token_logps


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


# `generate` fills every option the call leaves unset from the checkpoint's
# generation_config.json, then from transformers' own defaults: Qwen2.5 ships top_k 20
# and repetition_penalty 1.05, Gemma-3 top_k 64, and transformers itself samples
# top-k 50. Self-play needs y' drawn from the policy itself (its log-probs are the
# reference; LSP's gradient is on-policy), shaped only by the `generation` keys, as
# the vLLM backend samples (TRL's client sends the same neutral values).
PLAIN_DECODING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "num_beams": 1}
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


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


@torch.no_grad()
def generate_responses(
    model,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_ids: set[int],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    show_progress: bool = False,
    synced_gpus: bool = False,
) -> list[tuple[list[int], bool]]:
    """Generate one response per prompt; returns [(tokens, truncated)] in prompt order.

    synced_gpus: ZeRO-3 without gathered weights; every rank must then call this
    with the same number of prompts (see `pad_for_lockstep`).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    sampling = {"temperature": temperature, "top_p": top_p, **PLAIN_SAMPLING} if do_sample else {}
    try:
        with seeded_rng(seed, device), _progress(len(prompts), "self-play: generating opponents", show_progress) as bar:
            for batch in _length_sorted_batches([len(p) for p in prompts], batch_size):
                width = max(len(prompts[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    prompt = prompts[i]
                    input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                    attention_mask[row, width - len(prompt) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=0,
                    do_sample=do_sample,
                    pad_token_id=pad_token_id,
                    eos_token_id=sorted(eos_token_ids),
                    use_cache=True,
                    synced_gpus=synced_gpus,
                    **PLAIN_DECODING,
                    **sampling,
                )
                for row, i in enumerate(batch):
                    results[i] = cut_at_eos(output[row, width:].tolist(), eos_token_ids)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def pad_for_lockstep(items: list, filler, accelerator) -> list:
    """Pad `items` with `filler` to the longest length of this list on any rank.

    Under ZeRO-3 without gathered weights every forward is a collective, so all
    ranks must run the same number of batches; callers drop the padded results.
    """
    counts = accelerator.gather(torch.tensor([len(items)], device=accelerator.device))
    return items + [filler] * (int(counts.max()) - len(items))


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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = [0.0] * len(prompts)
    try:
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
        bar = _progress(len(prompts), "self-play: scoring (reference log-probs)", show_progress)
        for batch in _length_sorted_batches(lengths, batch_size):
            padded = pad_sequences([prompts[i] for i in batch], [responses[i] for i in batch], pad_token_id)
            logits = model(
                input_ids=padded["input_ids"].to(device),
                attention_mask=padded["attention_mask"].to(device),
                use_cache=False,
            ).logits
            logps = sequence_logps(logits, padded["labels"].to(device))
            for row, i in enumerate(batch):
                scores[i] = float(logps[row])
            bar.update(len(batch))
        bar.close()
    finally:
        model.train(was_training)
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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[torch.Tensor | None] = [None] * len(prompts)
    try:
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
        for batch in _length_sorted_batches(lengths, batch_size):
            padded = pad_sequences([prompts[i] for i in batch], [responses[i] for i in batch], pad_token_id)
            logits = model(
                input_ids=padded["input_ids"].to(device),
                attention_mask=padded["attention_mask"].to(device),
                use_cache=False,
            ).logits
            logps, mask = token_logps(logits, padded["labels"].to(device))
            for row, i in enumerate(batch):
                scores[i] = logps[row][mask[row]].cpu()
    finally:
        model.train(was_training)
    return scores  # type: ignore[return-value]
