"""Scoring: log-probabilities of responses under the policy (logprobs.py, with the chunked
lm_head of head.py) and the starting model θ_0 (starting_model.py)."""
