"""SPIN and χ² self-play (`rl: spin`, `rl: spin_chi2`): the trainer (trainer.py), the
rollout that makes θ_t the opponent (rollout.py), the opponent store (store.py) and the
[real; generated] batch of a training step (batch.py)."""
