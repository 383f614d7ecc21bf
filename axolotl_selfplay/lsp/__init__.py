"""Language Self-Play (`rl: lsp`): the trainer (trainer.py), one micro-step's games as
plain data (rollout.py) and the reward sources (rewards.py)."""
