"""SPIN loss and log-probs against hand-computed values and TRL's DPO loss."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from axolotl_selfplay.logprobs import IGNORE_INDEX, pad_sequences, sequence_logps
from axolotl_selfplay.losses import spin_loss


def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_spin_sigmoid_hand_value():
    """β = 0.1, lp_θ(y) = -100, lp_θ(y') = -120, lp_ref(y) = -105, lp_ref(y') = -118:
    h = (-100 + 105) - (-120 + 118) = 5 + 2 = 7, β·h = 0.7,
    loss = -log σ(0.7) = log(1 + e^-0.7) = log(1.496585) = 0.403186;
    rewards: real β·5 = 0.5, generated β·(-2) = -0.2."""
    losses, real, generated = spin_loss(_t(-100), _t(-120), _t(-105), _t(-118), beta=0.1)
    assert losses.item() == pytest.approx(0.403186, abs=1e-6)
    assert real.item() == pytest.approx(0.5)
    assert generated.item() == pytest.approx(-0.2)


def test_spin_hinge_hand_value():
    """Same numbers, hinge: relu(1 - 0.7) = 0.3; with β = 1: relu(1 - 7) = 0."""
    losses, _, _ = spin_loss(_t(-100), _t(-120), _t(-105), _t(-118), beta=0.1, loss_type="hinge")
    assert losses.item() == pytest.approx(0.3, abs=1e-6)
    losses, _, _ = spin_loss(_t(-100), _t(-120), _t(-105), _t(-118), beta=1.0, loss_type="hinge")
    assert losses.item() == 0.0


def test_spin_loss_is_ln2_when_policy_equals_reference():
    """θ = θ_t at the start of an iteration: h = 0 for every pair, loss = ln 2 = 0.693147."""
    lp_real, lp_gen = _t(-3.0, -50.0, -7.5), _t(-9.0, -1.0, -7.5)
    losses, real, generated = spin_loss(lp_real, lp_gen, lp_real.clone(), lp_gen.clone(), beta=0.1)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    assert torch.all(real == 0) and torch.all(generated == 0)


def test_spin_loss_rejects_unknown_type():
    with pytest.raises(ValueError, match="loss_type"):
        spin_loss(_t(0), _t(0), _t(0), _t(0), beta=0.1, loss_type="ipo")


def test_spin_gradient_pushes_real_up_and_generated_down():
    lp_real = torch.tensor([-10.0], requires_grad=True)
    lp_gen = torch.tensor([-10.0], requires_grad=True)
    losses, _, _ = spin_loss(lp_real, lp_gen, _t(-10), _t(-10), beta=0.1)
    losses.sum().backward()
    # d/dlp_real of -log σ(β h) at h = 0 is -β/2
    assert lp_real.grad.item() == pytest.approx(-0.05)
    assert lp_gen.grad.item() == pytest.approx(0.05)


def test_sequence_logps_hand_value():
    """Vocab 2, logits all zero -> every token has log p = ln(1/2); two labelled
    tokens -> -2 ln 2 = -1.386294; the prompt and padding contribute nothing."""
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0, IGNORE_INDEX]])
    assert sequence_logps(logits, labels).item() == pytest.approx(-2 * math.log(2))


def test_pad_sequences_literal_tokens():
    batch = pad_sequences([[5, 6], [7]], [[8, 2], [9, 9, 2]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2], [7, 9, 9, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 2], [-100, 9, 9, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    batch = pad_sequences([[5, 6, 7]], [[2]], pad_token_id=0)
    assert batch["labels"].tolist() == [[-100, -100, -100, 2]]


def test_spin_equals_trl_dpo_sigmoid_loss(tiny_model_dir):
    """Our log-probs + SPIN loss equal TRL DPOTrainer's loss (sigmoid, chosen = real,
    rejected = generated, precomputed reference log-probs) on the same model and tokens."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()
    prompts = [[1, 40, 41, 42], [1, 43, 44]]
    reals = [[50, 51, 2], [52, 2]]
    generated = [[60, 2], [61, 62, 63, 2]]
    batch = pad_sequences(prompts + prompts, reals + generated, pad_token_id=0)
    ref = torch.tensor([-30.0, -20.0, -25.0, -40.0])

    logps = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    ours, _, _ = spin_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.1)

    # A DPOTrainer without __init__: its own loss code, our tensors, no dataset or reference model.
    fake_trainer = DPOTrainer.__new__(DPOTrainer)
    fake_trainer.__dict__.update(
        model=model,
        ref_model=None,
        accelerator=Accelerator(cpu=True),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=1.0,
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=0.1,
        use_weighting=False,
        use_liger_kernel=False,
        label_smoothing=0.0,
        is_fsdp_enabled=False,
        _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != IGNORE_INDEX).long(),
        "ref_chosen_logps": ref[:2],
        "ref_rejected_logps": ref[2:],
    }
    try:
        trl_loss = DPOTrainer._compute_loss(fake_trainer, model, inputs, return_outputs=False)
    except AttributeError as missing:  # TRL added a bookkeeping attribute we do not fake
        pytest.fail(f"TRL's DPO loss needs another attribute on the fake trainer: {missing}")
    assert ours.mean().item() == pytest.approx(trl_loss.item(), abs=1e-5)
