"""`generation.vllm_mode: colocate` on the real vLLM engine (vLLM's CPU build, fp32): one engine
for this file, in this process, as the trainer holds it.

Sampling parity with the `hf` backend on the same weights: greedy samples equal token for token
before and after a weight load (also a LoRA merged for the load, and with a repetition penalty);
seeded samples reproduce; top_k / top_p / min_p keep every sampled token inside the set HF's
probabilities allow. Then `axolotl train` with `backend: vllm` (colocated by default): SPIN's
iteration-1 opponents are the greedy continuations of the weights after iteration 0, and LSP
plays its games with the engine.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    axolotl_train,
    base_config,
    lsp_config,
    read_jsonl,
    vllm_or_skip,
    vllm_test_prompts,
    with_reward_module,
)

vllm_or_skip()

from axolotl_selfplay.data.split import end_of_turn_ids  # noqa: E402
from axolotl_selfplay.sampling.hf import generate_responses  # noqa: E402
from axolotl_selfplay.sampling.spec import SamplingSpec  # noqa: E402
from axolotl_selfplay.sampling.vllm_colocate import ColocatedVLLM  # noqa: E402

pytestmark = pytest.mark.vllm
CPU = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0)


@pytest.fixture(scope="module")
def setup(vllm_model_dir):
    asks = ["Write a problem.", "What is 3+4?", "What is 12+30?", "Give me an addition problem.", "hi"]
    setup = vllm_test_prompts(vllm_model_dir, asks)
    setup.prompts.append(setup.prompts[1])  # an equal prompt: its own samples
    setup.engine = ColocatedVLLM(
        model_dir=str(vllm_model_dir), dtype="float32", max_model_len=256, gpu_memory_utilization=0.3,
        enable_sleep_mode=False, seed=0, accelerator=CPU,
    )
    return setup


def hf_samples(setup, model, spec, seed=0, n=1):
    prompts = [p for p in setup.prompts for _ in range(n)]
    return generate_responses(model, prompts, spec=spec, pad_token_id=setup.pad, eos_token_ids=setup.eos,
                              batch_size=8, seed=seed)


def vllm_samples(setup, spec, seed=0, n=1):
    return setup.engine.generate(setup.prompts, n=n, spec=spec, eos_token_ids=setup.eos, seed=seed)


def perturbed(model, scale=0.02, seed=1):
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return other


def test_greedy_equals_hf_before_and_after_a_weight_load(setup):
    greedy = SamplingSpec.greedy(24)
    assert vllm_samples(setup, greedy) == hf_samples(setup, setup.model, greedy)  # iteration 0: the checkpoint
    assert any(not truncated for _, truncated in hf_samples(setup, setup.model, greedy))  # some turns end
    moved = perturbed(setup.model)
    setup.engine.push_weights(moved)  # iteration 1: θ_1
    assert vllm_samples(setup, greedy) == hf_samples(setup, moved, greedy)
    assert hf_samples(setup, moved, greedy) != hf_samples(setup, setup.model, greedy)  # the load mattered
    for penalty in (1.8, 0.3):  # < 1 favours the prompt's tokens: greedy output surely changes
        penalised = SamplingSpec(max_new_tokens=24, do_sample=False, repetition_penalty=penalty)
        assert vllm_samples(setup, penalised) == hf_samples(setup, moved, penalised), penalty
    assert vllm_samples(setup, penalised) != vllm_samples(setup, greedy)
    assert setup.engine.stats["loads"] == 1 and setup.engine.stats["start_s"] > 0


def test_a_lora_adapter_is_merged_for_the_load(setup):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(setup.model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    greedy = SamplingSpec.greedy(24)
    setup.engine.push_weights(peft_model)
    assert vllm_samples(setup, greedy) == hf_samples(setup, peft_model, greedy)
    assert not any(getattr(module, "merged", False) for module in peft_model.modules())  # unmerged after the load
    setup.engine.push_weights(setup.model)  # back to the checkpoint for the next tests


def test_seeded_samples_reproduce_and_differ_by_seed(setup):
    spec = SamplingSpec(max_new_tokens=16)
    first = vllm_samples(setup, spec, seed=7, n=3)
    assert first == vllm_samples(setup, spec, seed=7, n=3)
    assert first != vllm_samples(setup, spec, seed=8, n=3)
    tokens = [tuple(t) for t, _ in first]
    assert len(set(tokens[3:6] + tokens[15:18])) > 1  # an equal prompt (the last) gets its own samples


def allowed(probs: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """The tokens HF's top-k / top-p / min-p would keep at one position."""
    keep = torch.ones_like(probs, dtype=torch.bool)
    if spec.top_k:
        keep &= probs >= probs.topk(spec.top_k).values[-1]
    if spec.top_p < 1:
        ordered, order = probs.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # mass of the more likely tokens
        keep_sorted = before < spec.top_p
        keep &= torch.zeros_like(keep).scatter(0, order, keep_sorted)
    if spec.min_p:
        keep &= probs >= spec.min_p * probs.max()
    return keep


@pytest.mark.parametrize(
    "spec",
    [
        SamplingSpec(max_new_tokens=16, top_k=3),
        SamplingSpec(max_new_tokens=16, top_p=0.5),
        SamplingSpec(max_new_tokens=16, min_p=0.2, temperature=1.5),
    ],
    ids=["top_k", "top_p", "min_p"],
)
def test_truncation_knobs_keep_every_token_inside_hfs_allowed_set(setup, spec):
    samples = vllm_samples(setup, spec, seed=3, n=4)
    prompts = [p for p in setup.prompts for _ in range(4)]
    checked = 0
    for prompt, (tokens, _) in zip(prompts, samples):
        with torch.no_grad():
            logits = setup.model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
        probs = torch.softmax(logits / spec.temperature, dim=-1)
        for position, token in enumerate(tokens):
            keep = allowed(probs[position], spec)
            # a token at the edge of the set may differ by rounding: allow 1e-4 of probability slack
            assert keep[token] or probs[position][token] >= probs[position][keep].min() - 1e-4, (spec, position)
            checked += 1
    assert checked > 50
    unrestricted = vllm_samples(setup, SamplingSpec(max_new_tokens=16), seed=3, n=4)
    assert samples != unrestricted  # the knob changed what was drawn


def test_spin_trains_with_a_colocated_engine(tmp_path, vllm_model_dir):
    """Two SPIN iterations, greedy: the opponents of iteration 1 are HF's greedy continuations of
    the weights saved after iteration 0 (loaded into the engine in place)."""
    gen = {"backend": "vllm", "do_sample": False, "max_new_tokens": 12}
    cfg = base_config(vllm_model_dir, tmp_path, selfplay={"iterations": 2, "generation": gen},
                      save_strategy="steps", save_steps=4, sequence_len=128)
    run = axolotl_train(cfg, tmp_path / "spin.yml", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert run.returncode == 0, run.output[-5000:]
    assert "vLLM engine (colocated) started" in run.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    theta_1 = AutoModelForCausalLM.from_pretrained(str(run.output_dir / "checkpoint-4"), dtype=torch.float32)
    rows = read_jsonl(run.output_dir / "selfplay" / "iter_1.jsonl")[:8]
    eos = end_of_turn_ids(tokenizer, theta_1.generation_config)
    prompts = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in rows]
    hf = generate_responses(theta_1, prompts, spec=SamplingSpec.greedy(12), pad_token_id=tokenizer.pad_token_id,
                            eos_token_ids=eos, batch_size=8, seed=0)
    assert [tokens for tokens, _ in hf] == [row["generated_ids"] for row in rows]


def test_lsp_plays_with_a_colocated_engine(tmp_path, vllm_model_dir):
    out = with_reward_module(tmp_path)
    cfg = lsp_config(vllm_model_dir, out, sequence_len=128)
    cfg["selfplay"]["generation"].update({"backend": "vllm", "vllm_mode": "colocate"})
    cfg["selfplay"]["lsp"]["self_reward"] = False
    run = axolotl_train(cfg, out / "lsp.yml", env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert run.returncode == 0, run.output[-5000:]
    assert "vLLM engine (colocated) started" in run.output
    logs = run.logs()
    assert len(logs) == 3 and "lsp/solver_reward" in logs[0]
    assert all(row["lsp/degenerate_query_frac"] < 0.5 for row in logs), logs  # queries end their turn
