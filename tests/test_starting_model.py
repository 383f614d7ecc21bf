"""The starting model θ_0 (scoring/starting_model.py): SPIN's kl_to_base (StartingModel: weight
swap for full fine-tuning, adapter off for LoRA) and LSP's ReferenceModel."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from axolotl_selfplay.scoring.starting_model import StartingModel


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 40, 41, 42]])).logits


def _perturb(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05)


def _train(model):
    """What training does to a LoRA run: only the trainable (adapter) weights move."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05)


def test_snapshot_swaps_theta0_in_and_back(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    start = _logits(model)
    theta0 = StartingModel({"base_model": str(tiny_model_dir)})
    theta0.snapshot(model)
    _perturb(model)
    trained = _logits(model)
    assert not torch.allclose(trained, start)
    with theta0.active(model):
        assert torch.equal(_logits(model), start)
    assert torch.equal(_logits(model), trained)  # swapped back
    with theta0.active(model):  # and again: the copy is θ_0 once more
        assert torch.equal(_logits(model), start)


def test_resumed_run_loads_theta0_from_base_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    start = _logits(model)
    _perturb(model)
    with StartingModel({"base_model": str(tiny_model_dir)}).active(model):
        assert torch.allclose(_logits(model), start, atol=1e-6)


def test_lora_starting_model_is_the_adapter_disabled(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    start = _logits(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert not torch.allclose(_logits(model), start)
    theta0 = StartingModel({"base_model": str(tiny_model_dir)})
    theta0.snapshot(model)  # a no-op for adapters: nothing is copied
    with theta0.active(model):
        assert torch.allclose(_logits(model), start, atol=1e-6)


def test_starting_model_of_a_run_from_an_existing_adapter_is_base_plus_adapter(tiny_model_dir, tmp_path):
    """`lora_model_dir` + `kl_to_base`: θ_0 is the model the run starts from, base + the
    loaded adapter. Both sides — the real responses (scored once, at the start) and each
    later iteration's new opponents (scored after training moved the adapter) — get
    lp_θ0 equal to an independent scoring under base + adapter."""
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model

    from axolotl_selfplay.sampling.sampler import Sampler
    from axolotl_selfplay.sampling.spec import SamplingSpec
    from axolotl_selfplay.scoring.logprobs import score_responses
    from axolotl_selfplay.spin.rollout import OpponentRollout
    from axolotl_selfplay.spin.store import USABLE, OpponentStore

    adapter = tmp_path / "sft-adapter"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), lora).save_pretrained(str(adapter))
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter), is_trainable=True)
    cfg = {"base_model": str(tiny_model_dir), "lora_model_dir": str(adapter)}

    prompts = [[1, 40, 41], [1, 42], [1, 43, 44, 45]]
    reals = [[50, 51, 2], [52, 2], [53, 54, 55, 2]]
    store = OpponentStore(prompts, reals)
    rollout = OpponentRollout(
        store,
        Sampler(eos_token_ids={2}, pad_token_id=0, batch_size=2),
        SamplingSpec(max_new_tokens=5),
        Accelerator(cpu=True),
        StartingModel(cfg, policy),  # built when training starts
        kl_to_base=0.5,
        batch_size=2,
        gather_deepspeed3_params=True,
        seed=0,
    )
    first = rollout(policy, 0, at_start=True)
    store.set_iteration(0, first.ref_logp_real, first.pools, first.base_logp_real)
    _train(policy)
    trained = _logits(policy)
    second = rollout(policy, 1, at_start=False)
    assert torch.equal(_logits(policy), trained)  # θ_0 swapped out again

    theta0 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter))
    expected_real = score_responses(theta0, prompts, reals, pad_token_id=0, batch_size=1)
    assert first.base_logp_real == pytest.approx(expected_real, abs=1e-4)
    assert second.base_logp_real == pytest.approx(expected_real, abs=1e-4)
    for i, pool in enumerate(second.pools):
        for opponent in pool:
            if opponent.status == USABLE:
                expected = score_responses(theta0, [prompts[i]], [opponent.tokens], pad_token_id=0, batch_size=1)[0]
                assert opponent.base_logp == pytest.approx(expected, abs=1e-4), (opponent.iteration, i)
                assert opponent.ref_logp != pytest.approx(expected, abs=1e-3)  # θ_t really moved


def test_lsp_reference_of_a_run_from_an_existing_adapter_is_base_plus_adapter(tiny_model_dir, tmp_path):
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model

    from axolotl_selfplay.scoring.starting_model import ReferenceModel

    adapter = tmp_path / "sft-adapter"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), lora).save_pretrained(str(adapter))
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter), is_trainable=True)
    start = _logits(policy)
    reference = ReferenceModel(policy, Accelerator(cpu=True), {"lora_model_dir": str(adapter)})
    _train(policy)
    with reference.active(policy) as ref:
        assert torch.allclose(_logits(ref), start, atol=1e-6)
    assert not torch.allclose(_logits(policy), start)


def test_adapter_of_lora_model_dir_swaps_into_an_fsdp2_sharded_policy(tiny_model_dir, tmp_path, one_process_group):
    """The `lora_model_dir` adapter is copied when training starts, before accelerate shards the
    model; FSDP2 then makes every adapter weight a DTensor, and θ_0's copy is laid out as those
    shards at the first swap (copying a plain tensor into a DTensor fails)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from conftest import fully_sharded

    adapter = tmp_path / "sft-adapter"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), lora).save_pretrained(str(adapter))
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter), is_trainable=True)
    start = _logits(policy)
    theta0 = StartingModel({"base_model": str(tiny_model_dir), "lora_model_dir": str(adapter)}, policy)
    policy = fully_sharded(policy)
    assert any(hasattr(p, "full_tensor") for p in policy.parameters() if p.requires_grad)
    _train(policy)
    trained = _logits(policy)
    assert not torch.allclose(trained, start)
    for _ in range(2):
        with theta0.active(policy):
            assert torch.allclose(_logits(policy), start, atol=1e-6)
        assert torch.equal(_logits(policy), trained)  # swapped back
