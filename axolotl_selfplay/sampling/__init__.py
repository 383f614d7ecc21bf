"""How the policy is sampled: one explicit specification (spec.py), two backends (hf.py,
vllm.py) and the one call the rollouts make (sampler.py)."""
