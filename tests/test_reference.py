"""The starting model θ_0 for kl_to_base: weight swap (full fine-tuning) and adapter off (LoRA)."""

import torch
from transformers import AutoModelForCausalLM

from axolotl_selfplay.reference import StartingModel


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 40, 41, 42]])).logits


def _perturb(model):
    with torch.no_grad():
        for param in model.parameters():
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
