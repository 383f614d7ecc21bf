"""How the policy is sampled: one explicit specification, used by both backends.

SPIN's opponent y' and LSP's queries and answers must be samples of π_θ exactly as
configured. Left alone, HF `generate` fills every setting we do not pass from the
checkpoint's `generation_config.json` and then from its own defaults: top_k 50 for
every model, and whatever the checkpoint ships (Qwen2.5: top_k 20, repetition
penalty 1.05; Llama-3: temperature 0.6, top_p 0.9; others min_p, typical_p,
no_repeat_ngram_size, ...). vLLM's server applies the same file by default. A
checkpoint saying top_k 1 would silently turn "sampling at temperature 1" into
greedy decoding.

`SamplingSpec` therefore names every knob, is built from `selfplay.generation`
only (as TRL builds GRPO's sampling parameters from its own config), and both
backends receive all of it:

- `hf` (`sampling/hf.py`): `generate` runs with a complete
  GenerationConfig built from the spec while the model's own generation config is
  swapped for a neutral one (`neutral_generation_config`), so no setting can fall
  back to the checkpoint.
- `vllm` (`sampling/vllm.py`): every sampling parameter is sent with each
  request, with the end-of-turn tokens as `stop_token_ids`.

`Sampler.sample(model, prompts, spec, n=..., seed=...)` (`sampling/sampler.py`) is
the one call the rollouts make; it hides which backend draws the samples.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from transformers import GenerationConfig

from ..modeling import transformers_model


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that decides a sample. Neutral values switch a knob off."""

    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off

    @classmethod
    def from_config(cls, generation, max_new_tokens: int | None = None) -> SamplingSpec:
        """The spec of `selfplay.generation` (`max_new_tokens` overrides its length limit)."""
        return cls(
            max_new_tokens=max_new_tokens or generation.max_new_tokens,
            do_sample=generation.do_sample,
            temperature=generation.temperature,
            top_p=generation.top_p,
            top_k=generation.top_k,
            min_p=generation.min_p,
            repetition_penalty=generation.repetition_penalty,
        )

    @classmethod
    def greedy(cls, max_new_tokens: int) -> SamplingSpec:
        return cls(max_new_tokens=max_new_tokens, do_sample=False)

    def hf_generation_config(self, eos_token_ids: set[int], pad_token_id: int):
        """A complete GenerationConfig: every field a logits processor reads is set here
        (None switches a processor off once the model's own config is neutralised)."""
        sampling = self.do_sample
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=sampling,
            num_beams=1,
            temperature=self.temperature if sampling else 1.0,
            top_p=self.top_p if sampling else 1.0,
            top_k=self.top_k if sampling else 0,
            min_p=self.min_p if sampling and self.min_p > 0 else None,
            typical_p=1.0,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=0,
            eos_token_id=sorted(eos_token_ids),
            pad_token_id=pad_token_id,
            use_cache=True,
        )

    def vllm_request(self) -> dict:
        """The sampling arguments of TRL's `VLLMClient.generate` (top_k 0 = off, TRL's default).
        All are sent: the server would fill the others from the checkpoint's generation config."""
        sampling = self.do_sample
        return {
            "temperature": self.temperature if sampling else 0.0,
            "top_p": self.top_p if sampling else 1.0,
            "top_k": self.top_k if sampling else 0,
            "min_p": self.min_p if sampling else 0.0,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_new_tokens,
        }


@contextmanager
def neutral_generation_config(model, generation_config):
    """Within the block the model's own generation config is `generation_config`, so
    `generate` cannot fill unset fields from the checkpoint's file. Restored after, so
    the saved model keeps the generation config it shipped with."""
    inner = transformers_model(model)  # a PEFT model reads its base model's generation config
    shipped = inner.generation_config
    inner.generation_config = generation_config
    try:
        yield
    finally:
        inner.generation_config = shipped


def cut_at_eos(tokens: list[int], eos_token_ids: set[int]) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS.

    Returns (tokens, truncated): truncated is True when no EOS was generated,
    i.e. the response used all of max_new_tokens (generate pads only rows that
    finished, so an unfinished row has no padding to strip).
    """
    for position, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: position + 1], False
    return tokens, True
