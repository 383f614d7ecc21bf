"""Sampler: the one call the rollouts make to sample the policy, whichever backend samples.

`hf`: `generate` on the model being trained (sampling/hf.py; the caller holds it
unwrapped through TRL's `unwrap_model_for_generation`). `vllm`: a vLLM engine, in this
process or a server (sampling/vllm_backend.py), which first receives the policy's weights
through `sync_weights`.
"""

from __future__ import annotations

from .hf import generate_responses
from .spec import SamplingSpec


class Sampler:
    """Draws samples of the current policy on the configured backend.

    `hf`: `generate` on the model being trained (the caller holds it unwrapped:
    TRL's `unwrap_model_for_generation`). `vllm`: the engine (colocated or a server),
    which first receives the policy's weights through `sync_weights`.
    """

    def __init__(self, *, eos_token_ids: set[int], pad_token_id: int, batch_size: int, server=None):
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.server = server
        self._synced_version = None

    @property
    def on_server(self) -> bool:
        return self.server is not None

    def sync_weights(self, model, version) -> None:
        """Load the policy's weights into the vLLM engine unless `version` (SPIN: the
        iteration, LSP: the optimizer step) was pushed already. Every rank calls it."""
        if self.server is None or version == self._synced_version:
            return
        self.server.push_weights(model)
        self._synced_version = version

    def sample(
        self,
        model,
        prompts: list[list[int]],
        spec: SamplingSpec,
        *,
        n: int = 1,
        seed: int,
        synced_gpus: bool = False,
        show_progress: bool = False,
        description: str = "self-play: sampling",
    ) -> list[tuple[list[int], bool]]:
        """`n` samples per prompt, prompt-major: [(tokens up to the first end-of-turn, truncated)]."""
        if self.server is not None:
            return self.server.generate(prompts, n=n, spec=spec, eos_token_ids=self.eos_token_ids, seed=seed)
        return generate_responses(
            model,
            [prompt for prompt in prompts for _ in range(n)],
            spec=spec,
            pad_token_id=self.pad_token_id,
            eos_token_ids=self.eos_token_ids,
            batch_size=self.batch_size,
            seed=seed,
            show_progress=show_progress,
            synced_gpus=synced_gpus,
            description=description,
        )
