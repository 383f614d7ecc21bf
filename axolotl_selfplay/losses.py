"""Self-play losses as small pure tensor functions (no model, no trainer).

Shapes: every argument is a float tensor of shape (P,) with one entry per
(real, generated) pair; log-probs are per-sequence SUMS over response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spin_loss(
    policy_real_logps: torch.Tensor,
    policy_generated_logps: torch.Tensor,
    ref_real_logps: torch.Tensor,
    ref_generated_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN objective (Chen et al. 2024, eq. 4.7), per pair.

    h = (lp_θ(y|x) − lp_ref(y|x)) − (lp_θ(y'|x) − lp_ref(y'|x)), with ref = θ_t:

        sigmoid: −log σ(β·h)      (the paper's logistic loss ℓ(t) = log(1 + e^{−t}))
        hinge:   relu(1 − β·h)

    This is DPO's sigmoid loss with chosen = y (real), rejected = y' (generated).

    Returns (losses, real_rewards, generated_rewards), all shaped (P,); rewards are
    β·log-ratios, detached, the quantities TRL logs as `rewards/*`.
    """
    real_logratios = policy_real_logps - ref_real_logps
    generated_logratios = policy_generated_logps - ref_generated_logps
    h = real_logratios - generated_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown SPIN loss_type {loss_type!r}; use 'sigmoid' or 'hinge'")
    return losses, beta * real_logratios.detach(), beta * generated_logratios.detach()
