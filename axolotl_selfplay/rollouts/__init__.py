"""Rollouts: what the policy plays before it is trained on it (no gradients here).

- `spin.py`: at each iteration start, θ_t samples the opponent's responses y' and
  scores y and y' (SPIN, χ² self-play).
- `lsp.py`: every micro-step, one model plays Challenger and Solver, is judged and
  rewarded (Language Self-Play).

Both return plain data; the trainers turn it into training batches and metrics.
Sampling goes through `sampling.Sampler` (the `hf` or `vllm` backend).
"""
