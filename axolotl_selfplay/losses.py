"""Self-play losses as small pure tensor functions (no model, no trainer).

SPIN family (`spin_loss`, `spin_chi2_loss`, `spin_chi2_identical_loss`, `spin_chi2_batch_loss`,
`mix_reference`, `mean_over_candidates`, `sft_nll`): every argument is a float tensor of shape (P,) with one entry per
(real, generated) pair (or (B,), one per real row, where said); log-probs
are per-sequence SUMS over response tokens. LSP (`lsp_advantages`,
`lsp_policy_loss`, `k3_kl`) works on per-game reward grids and per-token
log-probs; each function states its shapes.
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


def spin_chi2_loss(
    policy_real_logps: torch.Tensor,
    policy_generated_logps: torch.Tensor,
    ref_real_logps: torch.Tensor,
    ref_generated_logps: torch.Tensor,
    beta: float,
    alpha: float = 0.5,
    coef: float = 0.5,
    reward_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """χ² self-play imitation loss, per pair (after Li, Zhang, Bansal, Zhang, arXiv 2602.01357).

    With the implicit rewards r⁺ = β·(lp_θ(y) − lp_ref(y)) and r⁻ = β·(lp_θ(y') − lp_ref(y')):

        loss = −(r⁺ − r⁻) + c·(α·(r⁺)² + (1 − α)·(r⁻)²)

    What is derived, not copied: the paper frames self-play fine-tuning as a game
    max_r E_data[φ(r)] − E_θt[φ(r)] − ψ(r) between the policy and the reward
    player r_θ = β·log(π_θ/π_θt); the logistic φ with no ψ gives SPIN. Its public
    text does not show the algorithm box of the χ² variant, so this loss is OUR
    reconstruction from that framework: a linear φ(r) = r with the mixed
    Pearson-χ² regulariser ψ = c·(α·r² under the data + (1 − α)·r² under the
    opponent), evaluated on each (y, y') pair. Its pointwise optimum
    r* = (p − q) / (2c·(α·p + (1 − α)·q)) is bounded in
    [−1/(2c(1−α)), 1/(2cα)] ([−2, 2] at the defaults), which is the stability the
    paper is after. Every constant (α = `chi2_alpha`, c = `chi2_coef`, the bound
    `reward_clip`) is exposed; to match the paper's exact algorithm once you have
    it, change φ/ψ here.

    At initialisation (θ = θ_t) r⁺ = r⁻ = 0, so the loss is exactly 0 and its
    gradient is −β·(∇lp_θ(y) − ∇lp_θ(y')), twice SPIN's initial gradient
    (−β/2 times the same): halve a SPIN learning rate to start equally fast.

    reward_clip R (optional): r⁺ and r⁻ are clamped to [−R, R] before the loss,
    so pairs outside the bound contribute no gradient.

    Returns (losses, real_rewards, generated_rewards, penalties), each (P,);
    rewards and penalties are detached.
    """
    real_rewards = beta * (policy_real_logps - ref_real_logps)
    generated_rewards = beta * (policy_generated_logps - ref_generated_logps)
    if reward_clip is not None:
        real_rewards = real_rewards.clamp(-reward_clip, reward_clip)
        generated_rewards = generated_rewards.clamp(-reward_clip, reward_clip)
    penalties = coef * (alpha * real_rewards.pow(2) + (1 - alpha) * generated_rewards.pow(2))
    losses = -(real_rewards - generated_rewards) + penalties
    return losses, real_rewards.detach(), generated_rewards.detach(), penalties.detach()


def spin_chi2_identical_loss(
    policy_real_logps: torch.Tensor,
    ref_real_logps: torch.Tensor,
    beta: float,
    coef: float = 0.5,
    reward_clip: float | None = None,
) -> torch.Tensor:
    """χ² loss of a pair whose y' is y, from the real row alone (no forward of y'), per row.

    With y' = y, r⁻ = r⁺ = r = β·(lp_θ(y) − lp_ref(y)), so spin_chi2_loss becomes

        −(r − r) + c·(α·r² + (1 − α)·r²) = c·r²

    Unlike SPIN's margin, which is 0 for every θ on such a pair, this is not
    constant: as soon as θ ≠ θ_t its gradient 2c·r·∇r pulls lp_θ(y) back toward
    lp_ref(y). At an SFT plateau most pairs are identical, so dropping them would
    drop most of the χ² regulariser. Shape (B,), like the inputs.
    """
    rewards = beta * (policy_real_logps - ref_real_logps)
    if reward_clip is not None:
        rewards = rewards.clamp(-reward_clip, reward_clip)
    return coef * rewards.pow(2)


def spin_chi2_batch_loss(
    pair_losses: torch.Tensor,
    identical_losses: torch.Tensor,
    identical_counts: torch.Tensor,
    slots: int,
) -> torch.Tensor:
    """χ² batch loss: the mean over every slot of the batch, identical pairs included.

    pair_losses (P,): spin_chi2_loss of the pairs with a y' of their own;
    identical_losses (B,): spin_chi2_identical_loss of each real row;
    identical_counts (B,): how many of each example's slots hold a y' equal to y;
    slots: P + Σ identical_counts (the official recipe trains on every slot).
    """
    total = pair_losses.sum() + (identical_counts.to(identical_losses.dtype) * identical_losses).sum()
    return total / max(slots, 1)


def mean_over_candidates(pair_losses: torch.Tensor, dropped: int, dropped_loss: float) -> torch.Tensor:
    """Batch loss: the mean over every candidate pair, the `dropped` ones included.

    A dropped pair (SPIN: y' identical to y) has h = 0: its loss is the constant
    ℓ(0) (`dropped_loss`: ln 2 for SPIN's logistic loss, 1 for hinge) and its
    gradient is exactly zero. (χ² keeps such pairs, see spin_chi2_identical_loss.) The official recipe trains on such pairs,
    so they count in the mean: each kept pair weighs 1/B however many were
    dropped. Averaging over the kept pairs only would give a pair the weight
    1/kept instead: once the model reproduces most answers (the SFT plateau), a
    pair in a batch with one kept pair would weigh as much as a whole batch of
    them elsewhere (and with plain SGD the step would grow by B/kept).
    """
    total = pair_losses.numel() + dropped
    return (pair_losses.sum() + dropped * dropped_loss) / max(total, 1)


def sft_nll(real_logps: torch.Tensor, real_tokens: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the real responses, averaged over their tokens.

    real_logps (B,): lp_θ(y|x) of each real response, summed over its tokens;
    real_tokens (B,): its number of tokens. Returns −Σ_b lp_θ(y_b) / Σ_b |y_b|, the
    mean over every real token of the batch: the term TRL's DPO adds with
    `rpo_alpha` (RPO, arXiv 2404.19733). `sft_weight` λ adds λ times it to the
    self-play loss, pulling the real responses' likelihood up while the pairwise
    loss only ranks them above the opponent's.
    """
    return -real_logps.sum() / real_tokens.sum().clamp(min=1).to(real_logps.dtype)


def mix_reference(lp_iterate: torch.Tensor, lp_base: torch.Tensor | None, kl_to_base: float) -> torch.Tensor:
    """α-SPIN reference (Alami et al., arXiv 2404.04291): the geometric mixture
    log π_ref = (1 − a)·lp_θt + a·lp_θ0 of the current iterate and the starting model.

    a = 0 is SPIN (reference θ_t); a = 1 is DPO against the starting model θ_0.
    """
    if kl_to_base == 0.0:
        return lp_iterate
    if lp_base is None:
        raise ValueError("kl_to_base > 0 needs the starting model's log-probs")
    return (1.0 - kl_to_base) * lp_iterate + kl_to_base * lp_base


# -- LSP ----------------------------------------------------------------------


def lsp_advantages(
    rewards: torch.Tensor,
    quality: torch.Tensor,
    valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-relative advantages of one LSP game (no gradient flows through them).

    rewards: (N, G) task rewards R_ij of the G answers to each of the N queries;
    quality: (N, G) weighted self-rewards R_Q_ij (zeros for LSP-Zero);
    valid: (N,) bool, False for degenerate queries (their rows are ignored).

    Solver:     A_ij = R'_ij − mean_j R'_ij,  R' = R + R_Q.
    Challenger: c_i = −mean_j R_ij + mean_j R_Q_ij, A_i = c_i − mean_i c_i.
    A degenerate query's challenger reward is min_i c_i (over valid queries) − 1:
    strictly the worst of its game, so the Challenger learns to avoid it. A
    game without a valid query gives every query the same reward (A = 0).
    Returns (solver_advantages (N, G), challenger_advantages (N,), challenger_rewards (N,)).
    """
    solver_rewards = rewards + quality
    solver_adv = solver_rewards - solver_rewards.mean(dim=1, keepdim=True)
    solver_adv = torch.where(valid[:, None], solver_adv, torch.zeros_like(solver_adv))
    challenger_rewards = -rewards.mean(dim=1) + quality.mean(dim=1)
    if valid.any():
        worst = challenger_rewards[valid].min() - 1.0
        challenger_rewards = torch.where(valid, challenger_rewards, worst)
    else:
        challenger_rewards = torch.zeros_like(challenger_rewards)
    challenger_adv = challenger_rewards - challenger_rewards.mean()
    return solver_adv.detach(), challenger_adv.detach(), challenger_rewards.detach()


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): exp(r) − r − 1 with r = ref − logp (≥ 0)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1.0


def lsp_policy_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    ref_logps: torch.Tensor | None,
    kl_beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO-style token-level policy-gradient loss of one role, one gradient step per rollout.

    logps, mask, ref_logps: (S, T) per-token log-probs of the sampled tokens under
    π_θ / π_ref and the mask of generated tokens; advantages: (S,).
    Per token: −A·exp(logp − stopgrad(logp)) + β·k3 (the ratio is 1; its gradient
    is A·∇logp, TRL's on-policy GRPO form); each sequence's tokens are averaged,
    then sequences are averaged (GRPO's normalisation).
    Returns (loss, per-sequence mean k3 KL (S,), zeros without a reference).
    """
    mask = mask.to(logps.dtype)
    per_token = -advantages[:, None] * torch.exp(logps - logps.detach())
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + kl_beta * kl
        seq_kl = (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    else:
        seq_kl = torch.zeros_like(advantages)
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean(), seq_kl.detach()
