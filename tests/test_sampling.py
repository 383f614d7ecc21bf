"""Samples come from π_θ as configured: nothing from the checkpoint's generation config,
distinct vLLM samples for equal prompts, every sampling parameter and the stop tokens sent,
no dropout in the forwards that are compared, the cut at end of turn, and the same samples
and scores whatever the batching."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper

from axolotl_selfplay.modeling import disable_dropout
from axolotl_selfplay.sampling.hf import generate_responses
from axolotl_selfplay.sampling.spec import SamplingSpec, cut_at_eos
from axolotl_selfplay.sampling.vllm import VLLMServer, group_equal_prompts

EOS = 2
PROMPT = [1, 40, 41, 42]


@pytest.fixture
def opinionated_model_dir(tiny_model_dir, tmp_path):
    """The tiny Llama shipping a generation_config.json that would change every sample:
    top_k 1 (greedy), a repetition penalty, no repeated bigrams, min_p, a low temperature."""
    path = tmp_path / "opinionated"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "generation_config.json").read_text())
    config.update(
        {"do_sample": True, "top_k": 1, "temperature": 0.1, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_p": 0.2}
    )
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


def _processors(model, spec):
    """The logits processors `generate` builds for one call of generate_responses."""
    seen = []
    build = model._get_logits_processor

    def spy(*args, **kwargs):
        processors = build(*args, **kwargs)
        seen.append([type(p) for p in processors])
        return processors

    model._get_logits_processor = spy
    generate_responses(model, [PROMPT], spec=spec, pad_token_id=0, eos_token_ids={EOS}, batch_size=1, seed=0)
    return seen[-1]


def test_sampling_ignores_the_checkpoints_generation_config(opinionated_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(opinionated_model_dir))
    assert model.generation_config.top_k == 1
    # temperature 1, top_p 1, no top_k: the plain softmax of the policy, nothing else
    assert _processors(model, SamplingSpec(max_new_tokens=4)) == []
    assert _processors(model, SamplingSpec(max_new_tokens=4, temperature=0.7, top_k=5)) == [
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    ]
    # top_k 1 would make all 16 samples of one prompt the same greedy answer
    samples = generate_responses(
        model, [PROMPT] * 16, spec=SamplingSpec(max_new_tokens=6), pad_token_id=0, eos_token_ids={EOS}, batch_size=16, seed=3
    )
    assert len({tuple(tokens) for tokens, _ in samples}) > 8
    # the shipped config is back in place (it is what a saved model keeps)
    assert model.generation_config.top_k == 1 and model.generation_config.repetition_penalty == 1.3


def test_sampling_ignores_the_generation_config_under_peft(opinionated_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(opinionated_model_dir)), LoraConfig(r=2, target_modules=["q_proj"])
    )
    samples = generate_responses(
        model, [PROMPT] * 16, spec=SamplingSpec(max_new_tokens=6), pad_token_id=0, eos_token_ids={EOS}, batch_size=16, seed=3
    )
    assert len({tuple(tokens) for tokens, _ in samples}) > 8
    assert model.get_base_model().generation_config.top_k == 1


class FakeVLLMClient:
    """Seeds like vLLM: every prompt of a request with the request's seed, the k-th of its
    `n` samples with seed + k; a sample is a pure function of (prompt, seed)."""

    def __init__(self):
        self.requests = []

    def generate(self, prompts, n, generation_kwargs, **sampling):
        self.requests.append({"prompts": prompts, "n": n, **sampling, **generation_kwargs})
        seed = generation_kwargs["seed"]
        completions = [[100 + hash((tuple(p), seed + k)) % 10**9, EOS] for p in prompts for k in range(n)]
        return {"completion_ids": completions}


def _server(client):
    server = VLLMServer.__new__(VLLMServer)  # no connection: the client is the fake
    server.client = client
    return server


def test_vllm_equal_prompts_get_distinct_samples_in_prompt_order():
    client = FakeVLLMClient()
    prompts = [[1, 5], [1, 6], [1, 5], [1, 7], [1, 6], [1, 5]]
    spec = SamplingSpec(max_new_tokens=9, temperature=0.8, top_k=3, repetition_penalty=1.1)
    samples = _server(client).generate(prompts, n=2, spec=spec, eos_token_ids={EOS, 3}, seed=11)
    assert len(samples) == 12
    by_prompt = {}
    for i, prompt in enumerate(prompts):
        by_prompt.setdefault(tuple(prompt), []).extend(tuple(t) for t, _ in samples[2 * i : 2 * i + 2])
    # the three copies of [1, 5] (2 samples each) are 6 different samples, not one sample thrice
    assert len(set(by_prompt[(1, 5)])) == 6 and len(set(by_prompt[(1, 6)])) == 4
    # one request per multiplicity (x3: [1, 5]; x2: [1, 6]; x1: [1, 7]), each prompt once
    assert sorted((len(r["prompts"]), r["n"]) for r in client.requests) == [(1, 2), (1, 4), (1, 6)]
    for request in client.requests:
        assert request["stop_token_ids"] == [2, 3]
        assert (request["temperature"], request["top_p"], request["top_k"], request["min_p"]) == (0.8, 1.0, 3, 0.0)
        assert (request["repetition_penalty"], request["max_tokens"]) == (1.1, 9)
    assert len({r["seed"] for r in client.requests}) == 3


class FakePushClient:
    def __init__(self):
        self.calls = []

    def init_communicator(self, device):
        self.calls.append("init")

    def update_named_param(self, name, tensor):
        self.calls.append(name)

    def reset_prefix_cache(self):
        self.calls.append("reset")


@pytest.mark.parametrize("main", [True, False])
def test_vllm_push_walks_the_weights_on_every_rank(main, monkeypatch):
    """Under FSDP2 each tensor is gathered by a collective: a rank that skipped the walk would
    leave the main process waiting forever. Only the main process talks to the server."""
    walked = []

    def named_weights(model):
        for name in ("a", "b"):
            walked.append(name)  # under FSDP2: full_tensor(), a collective
            yield name, torch.zeros(1)

    monkeypatch.setattr("axolotl_selfplay.sampling.vllm.vllm_named_weights", named_weights)
    server = _server(FakePushClient())
    server.accelerator = SimpleNamespace(is_main_process=main, device="cpu", wait_for_everyone=lambda: None)
    server._communicator_ready = False
    server.push_weights(torch.nn.Linear(1, 1))
    assert walked == ["a", "b"]
    assert server.client.calls == (["init", "a", "b", "reset"] if main else [])


def test_group_equal_prompts():
    groups = group_equal_prompts([[1], [2], [1], [3], [2], [1]])
    assert groups == [([(1,)], [[0, 2, 5]]), ([(2,)], [[1, 4]]), ([(3,)], [[3]])]


def test_greedy_spec_on_both_backends():
    greedy = SamplingSpec.greedy(5)
    assert greedy.vllm_request()["temperature"] == 0.0
    config = greedy.hf_generation_config({EOS}, 0)
    assert config.do_sample is False and config.top_k == 0 and config.repetition_penalty == 1.0


def test_disable_dropout_makes_train_mode_forwards_deterministic(tiny_model_dir, tmp_path):
    """Attention dropout (a float the attention function reads in train mode, not an
    nn.Dropout) and LoRA's dropout both change a train-mode forward until switched off."""
    from peft import LoraConfig, get_peft_model

    path = tmp_path / "dropout-model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager"),
        LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.train()
    ids = torch.tensor([PROMPT * 3])

    def forward():
        return model(input_ids=ids).logits

    assert not torch.equal(forward(), forward())
    assert disable_dropout(model) > 0
    assert model.training and torch.equal(forward(), forward())
    model.eval()
    eval_logits = forward()
    model.train()
    assert torch.allclose(forward(), eval_logits, atol=1e-6)  # train mode = eval mode now


def test_cut_at_eos():
    assert cut_at_eos([5, 6, EOS, 0, 0], {EOS}) == ([5, 6, EOS], False)
    assert cut_at_eos([5, 6, 7], {EOS}) == ([5, 6, 7], True)  # truncated: kept, no EOS appended
    assert cut_at_eos([5, 0, 7], {EOS}) == ([5, 0, 7], True)  # a generated pad id is content
    assert cut_at_eos([5, 3, 7], {EOS, 3}) == ([5, 3], False)


def test_generation_is_batch_invariant_and_seeded(tiny_model_dir):
    """Length-sorted left-padded batches give the same greedy output as one prompt at a
    time, in the caller's order; sampling with the same seed repeats exactly and
    leaves the global RNG untouched."""
    from transformers import AutoModelForCausalLM

    from axolotl_selfplay.sampling.hf import generate_responses
    from axolotl_selfplay.sampling.spec import SamplingSpec
    from axolotl_selfplay.scoring.logprobs import score_responses

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts = [[1, 40, 41, 42, 43, 44], [1, 45], [1, 46, 47, 48]]
    kwargs = dict(pad_token_id=0, eos_token_ids={EOS}, seed=7)
    greedy, sampled = SamplingSpec.greedy(6), SamplingSpec(max_new_tokens=6)
    batched = generate_responses(model, prompts, spec=greedy, batch_size=3, **kwargs)
    single = [generate_responses(model, [p], spec=greedy, batch_size=1, **kwargs)[0] for p in prompts]
    assert batched == single
    state = torch.random.get_rng_state()
    first = generate_responses(model, prompts, spec=sampled, batch_size=2, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate_responses(model, prompts, spec=sampled, batch_size=2, **kwargs) == first
    model.train()
    responses = [tokens for tokens, _ in batched]
    scores = score_responses(model, prompts, responses, pad_token_id=0, batch_size=2)
    assert model.training  # scoring restores train mode
    one_by_one = [score_responses(model, [p], [r], pad_token_id=0, batch_size=1)[0] for p, r in zip(prompts, responses)]
    assert scores == pytest.approx(one_by_one, abs=1e-4)
