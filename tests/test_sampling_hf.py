"""Sampling with HF `generate` (sampling/hf.py): rows that end their turn leave the running
batch, with the same outputs as one HF `generate` call and fewer decode slots."""

from __future__ import annotations

import pytest
import torch

from axolotl_selfplay.sampling import hf
from axolotl_selfplay.sampling.hf import generate_responses
from axolotl_selfplay.sampling.spec import SamplingSpec, neutral_generation_config

# A random tiny model rarely ends a turn; with a third of the vocabulary as end-of-turn
# tokens its greedy replies end after 1 to ~20 tokens, at different steps per row.
EOS = set(range(3, 170))
PROMPTS = [[1, 300 + i, 301 + (7 * i) % 97, 410 + (i % 5)] for i in range(12)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()


def hf_generate(model, spec: SamplingSpec) -> list[list[int]]:
    """One HF `generate` call over the whole left-padded batch (every row decoded to the end)."""
    config = spec.hf_generation_config(EOS, pad_token_id=0)
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad(), neutral_generation_config(model, config):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [hf.cut_at_eos(row[width:], EOS)[0] for row in out.tolist()]


@pytest.mark.parametrize("fraction", [1e-9, 0.25])
def test_ended_rows_leave_the_batch_with_hf_identical_greedy_outputs(model, monkeypatch, fraction):
    monkeypatch.setattr(hf, "ENDED_FRACTION", fraction)
    # a repetition penalty depends on the whole sequence so far: continuing segments must see it
    spec = SamplingSpec(max_new_tokens=24, do_sample=False, repetition_penalty=1.3)
    stats = {}
    ours = generate_responses(
        model, PROMPTS, spec=spec, pad_token_id=0, eos_token_ids=EOS, batch_size=len(PROMPTS), seed=0, stats=stats
    )
    tokens = [t for t, _ in ours]
    assert tokens == hf_generate(model, spec)
    lengths = sorted(map(len, tokens))
    assert lengths[0] < lengths[-1]  # rows really end at different steps
    useful = sum(lengths)
    if fraction < 1e-6:  # every ending stops the segment: no slot is spent on an ended row
        assert stats["decode_slots"] == useful
    assert stats["decode_slots"] < len(PROMPTS) * lengths[-1]  # what one `generate` call spends
    assert stats["generate_calls"] > 1


def test_sampling_segments_keep_the_spec(model):
    """top_k 1 sampling is greedy in every segment; a seed repeats exactly."""
    greedy = generate_responses(model, PROMPTS, spec=SamplingSpec.greedy(16), pad_token_id=0, eos_token_ids=EOS,
                                batch_size=6, seed=0)
    top1 = SamplingSpec(max_new_tokens=16, top_k=1, temperature=0.7)
    sampled = generate_responses(model, PROMPTS, spec=top1, pad_token_id=0, eos_token_ids=EOS, batch_size=6, seed=1)
    assert sampled == greedy
    spec = SamplingSpec(max_new_tokens=16)
    first = generate_responses(model, PROMPTS, spec=spec, pad_token_id=0, eos_token_ids=EOS, batch_size=6, seed=2)
    assert first == generate_responses(model, PROMPTS, spec=spec, pad_token_id=0, eos_token_ids=EOS, batch_size=6, seed=2)
