"""SPIN loss and log-probs against hand-computed values and TRL's DPO loss."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from axolotl_selfplay.batching import IGNORE_INDEX, pad_sequences
from axolotl_selfplay.losses import (
    mean_over_candidates,
    mix_reference,
    sft_nll,
    spin_chi2_batch_loss,
    spin_chi2_identical_loss,
    spin_chi2_loss,
    spin_loss,
)
from axolotl_selfplay.scoring.logprobs import sequence_logps


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


def test_sft_nll_is_the_token_mean_over_the_batch():
    """Two real responses: lp_θ(y_1) = -6 over 3 tokens, lp_θ(y_2) = -2 over 2 tokens.
    The mean over the batch's tokens is (6 + 2) / (3 + 2) = 1.6 (TRL's rpo_alpha term), not
    the mean of the per-response means (6/3 + 2/2) / 2 = 1.5. Its gradient with respect to
    each lp_θ(y_b) is -1 / Σ|y| = -0.2."""
    logps = torch.tensor([-6.0, -2.0], requires_grad=True)
    nll = sft_nll(logps, torch.tensor([3, 2]))
    assert nll.item() == pytest.approx(1.6)
    nll.backward()
    assert logps.grad.tolist() == pytest.approx([-0.2, -0.2])
    # a batch without real tokens (cannot happen with checked data) does not divide by 0
    assert sft_nll(torch.zeros(1), torch.zeros(1, dtype=torch.long)).item() == 0.0


def test_mean_over_candidates_counts_dropped_pairs():
    """Kept pair losses 0.2 and 0.4, 2 dropped pairs at ℓ(0) = ln 2:
    (0.2 + 0.4 + 2·0.693147) / 4 = 1.986294 / 4 = 0.496574; each kept pair's gradient
    weight is 1/4 (not 1/2, the mean over kept pairs), as if the dropped pairs were trained
    on with their zero gradient. Nothing dropped: the plain mean 0.3. All dropped: ln 2."""
    kept = _t(0.2, 0.4).requires_grad_()
    loss = mean_over_candidates(kept, dropped=2, dropped_loss=math.log(2))
    assert loss.item() == pytest.approx(0.496574, abs=1e-6)
    loss.backward()
    assert torch.allclose(kept.grad, _t(0.25, 0.25))
    assert mean_over_candidates(_t(0.2, 0.4), dropped=0, dropped_loss=math.log(2)).item() == pytest.approx(0.3)
    assert mean_over_candidates(_t(), dropped=3, dropped_loss=math.log(2)).item() == pytest.approx(math.log(2))


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


def _trl_dpo_loss(model, batch, ref_chosen, ref_rejected, beta):
    """TRL DPOTrainer's own loss code on our tensors (sigmoid, precomputed reference)."""
    from accelerate import Accelerator
    from trl import DPOTrainer

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
        beta=beta,
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
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    try:
        return DPOTrainer._compute_loss(fake_trainer, model, inputs, return_outputs=False)
    except AttributeError as missing:  # TRL added a bookkeeping attribute we do not fake
        pytest.fail(f"TRL's DPO loss needs another attribute on the fake trainer: {missing}")


def _pair_batch_and_logps(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()
    prompts = [[1, 40, 41, 42], [1, 43, 44]]
    reals = [[50, 51, 2], [52, 2]]
    generated = [[60, 2], [61, 62, 63, 2]]
    batch = pad_sequences(prompts + prompts, reals + generated, pad_token_id=0)
    logps = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    return model, batch, logps


def test_spin_equals_trl_dpo_sigmoid_loss(tiny_model_dir):
    """Our log-probs + SPIN loss equal TRL DPOTrainer's loss (sigmoid, chosen = real,
    rejected = generated, precomputed reference log-probs) on the same model and tokens."""
    model, batch, logps = _pair_batch_and_logps(tiny_model_dir)
    ref = torch.tensor([-30.0, -20.0, -25.0, -40.0])
    ours, _, _ = spin_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.1)
    trl_loss = _trl_dpo_loss(model, batch, ref[:2], ref[2:], beta=0.1)
    assert ours.mean().item() == pytest.approx(trl_loss.item(), abs=1e-5)


def test_kl_to_base_one_is_dpo_against_the_starting_model(tiny_model_dir):
    """a = 1: the reference is θ_0 alone, so SPIN's loss equals TRL's DPO loss with
    the starting model's log-probs as reference, whatever θ_t's log-probs are."""
    model, batch, logps = _pair_batch_and_logps(tiny_model_dir)
    lp_iterate = torch.tensor([-31.0, -22.0, -24.0, -41.0])
    lp_base = torch.tensor([-30.0, -20.0, -25.0, -40.0])
    ref = mix_reference(lp_iterate, lp_base, kl_to_base=1.0)
    ours, _, _ = spin_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.1)
    trl_loss = _trl_dpo_loss(model, batch, lp_base[:2], lp_base[2:], beta=0.1)
    assert ours.mean().item() == pytest.approx(trl_loss.item(), abs=1e-5)


def test_kl_to_base_zero_is_spin_exactly():
    lp_iterate, lp_base = _t(-31.0, -22.0), _t(-30.0, -20.0)
    assert mix_reference(lp_iterate, lp_base, 0.0) is lp_iterate
    assert torch.equal(mix_reference(lp_iterate, None, 0.0), lp_iterate)
    # a = 0.25: 0.75·(-31) + 0.25·(-30) = -30.75 ; 0.75·(-22) + 0.25·(-20) = -21.5
    assert mix_reference(lp_iterate, lp_base, 0.25).tolist() == [-30.75, -21.5]
    with pytest.raises(ValueError):
        mix_reference(lp_iterate, None, 0.5)


def test_spin_chi2_hand_value():
    """β = 0.1 and the numbers of the SPIN hand value: r⁺ = 0.1·(-100 + 105) = 0.5,
    r⁻ = 0.1·(-120 + 118) = -0.2; α = 0.5, c = 0.5:
    loss = -(0.5 + 0.2) + 0.5·(0.5·0.25 + 0.5·0.04) = -0.7 + 0.0725 = -0.6275."""
    losses, real, generated, penalty = spin_chi2_loss(_t(-100), _t(-120), _t(-105), _t(-118), beta=0.1)
    assert losses.item() == pytest.approx(-0.6275, abs=1e-6)
    assert (real.item(), generated.item()) == pytest.approx((0.5, -0.2))
    assert penalty.item() == pytest.approx(0.0725, abs=1e-6)


def test_spin_chi2_is_zero_at_init_with_twice_spins_gradient():
    """θ = θ_t: r⁺ = r⁻ = 0, loss 0, gradient -β on lp(y) and +β on lp(y'), i.e. twice SPIN's ±β/2."""
    lp_real = torch.tensor([-10.0], requires_grad=True)
    lp_gen = torch.tensor([-12.0], requires_grad=True)
    losses, _, _, _ = spin_chi2_loss(lp_real, lp_gen, _t(-10), _t(-12), beta=0.1)
    assert losses.item() == 0.0
    losses.sum().backward()
    assert lp_real.grad.item() == pytest.approx(-0.1) and lp_gen.grad.item() == pytest.approx(0.1)


@pytest.mark.parametrize("alpha, coef", [(0.5, 0.5), (0.25, 1.0), (0.8, 0.3)])
def test_spin_chi2_optimal_reward_is_bounded(alpha, coef):
    """Minimising the expected loss over a free reward r for a response that is only
    real (p = 1, q = 0) reaches 1/(2cα); only generated (p = 0, q = 1): -1/(2c(1-α));
    mixed p = q: 0. (Pointwise optimum r* = (p - q)/(2c(αp + (1-α)q)).)"""
    def optimum(p, q):
        r = torch.zeros(1, requires_grad=True)
        optimiser = torch.optim.SGD([r], lr=0.2)
        for _ in range(3000):
            optimiser.zero_grad()
            # r as a reward on the real side with weight p and on the generated side with weight q
            real_loss, _, _, _ = spin_chi2_loss(r, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0, alpha=alpha, coef=coef)
            gen_loss, _, _, _ = spin_chi2_loss(torch.zeros(1), r, torch.zeros(1), torch.zeros(1), beta=1.0, alpha=alpha, coef=coef)
            (p * real_loss + q * gen_loss).sum().backward()
            optimiser.step()
        return r.item()

    assert optimum(1.0, 0.0) == pytest.approx(1 / (2 * coef * alpha), rel=1e-3)
    assert optimum(0.0, 1.0) == pytest.approx(-1 / (2 * coef * (1 - alpha)), rel=1e-3)
    assert optimum(0.5, 0.5) == pytest.approx(0.0, abs=1e-4)


def test_reward_clip_bounds_rewards_and_stops_their_gradient():
    lp_real = torch.tensor([0.0, 0.0], requires_grad=True)
    ref_real = _t(-30.0, -3.0)  # r⁺ = 0.1·30 = 3 (clipped to 1), 0.1·3 = 0.3
    losses, real, _, _ = spin_chi2_loss(lp_real, _t(0.0, 0.0), ref_real, _t(0.0, 0.0), beta=0.1, reward_clip=1.0)
    assert real.tolist() == pytest.approx([1.0, 0.3])
    losses.sum().backward()
    assert lp_real.grad[0].item() == 0.0 and lp_real.grad[1].item() != 0.0


def test_spin_chi2_identical_pair_keeps_its_real_side_terms():
    """y' = y: r⁻ = r⁺ = r, so −(r⁺ − r⁻) + c·(α·r⁺² + (1 − α)·r⁻²) = c·r² whatever α.
    β = 0.1, lp_θ(y) = −10, lp_ref(y) = −12: r = 0.2; c = 0.5: 0.5·0.04 = 0.02 — the same as
    spin_chi2_loss on the pair (y, y), and its gradient 2c·r·β = 0.02 is not zero (SPIN's is)."""
    lp = _t(-10.0).requires_grad_()
    loss = spin_chi2_identical_loss(lp, _t(-12.0), beta=0.1, coef=0.5)
    assert loss.item() == pytest.approx(0.02, abs=1e-7)
    as_pair, _, _, _ = spin_chi2_loss(lp, lp, _t(-12.0), _t(-12.0), beta=0.1, alpha=0.3, coef=0.5)
    assert as_pair.item() == pytest.approx(loss.item(), abs=1e-7)
    loss.backward()
    assert lp.grad.item() == pytest.approx(0.02, abs=1e-7)
    spin_losses, _, _ = spin_loss(_t(-10.0), _t(-10.0), _t(-12.0), _t(-12.0), beta=0.1)
    assert spin_losses.item() == pytest.approx(math.log(2))  # SPIN: constant on such a pair
    # clipped like the pair loss: r = 0.2 clamped to 0.1 -> 0.5·0.01, no gradient beyond the clip
    clipped = spin_chi2_identical_loss(_t(-10.0), _t(-12.0), beta=0.1, coef=0.5, reward_clip=0.1)
    assert clipped.item() == pytest.approx(0.005, abs=1e-7)


def test_spin_chi2_batch_loss_averages_over_every_slot():
    """2 pairs with losses 0.3 and −0.1; real rows with identical losses 0.02 and 0.5 held
    in 1 and 0 identical slots: (0.3 − 0.1 + 1·0.02 + 0·0.5) / 3 = 0.22 / 3 = 0.073333."""
    pairs = _t(0.3, -0.1)
    identical_losses = _t(0.02, 0.5).requires_grad_()
    loss = spin_chi2_batch_loss(pairs, identical_losses, torch.tensor([1, 0]), slots=3)
    assert loss.item() == pytest.approx(0.073333, abs=1e-6)
    loss.backward()
    assert torch.allclose(identical_losses.grad, _t(1 / 3, 0.0))
