"""SelfPlayTrainerBase: what the SPIN and LSP trainers share on top of Axolotl's causal trainer.

- The set-up: the index column kept (the collator passes only it), losses that are
  means already (HF scales them for gradient accumulation), the pad and end-of-turn
  ids every sample is cut at, the weights guard, dropout off, the Sampler.
- Resume from a complete checkpoint only (`complete_checkpoint`, checkpoints.py).
- Metrics by name: `sum_over_ranks` sums a dict of per-rank sums over the ranks in one
  collective; each trainer divides the sums into its logged means (TRL's named metrics).

Axolotl attaches its config (`axolotl_cfg`) after construction, so `selfplay_config`
is read lazily and everything that needs it is built in `train()`.
"""

from __future__ import annotations

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from . import get_logger
from .checkpoints import resume_checkpoint
from .data.split import end_of_turn_ids
from .guard import WeightsGuard
from .modeling import disable_dropout
from .sampling.sampler import Sampler
from .sampling.vllm_backend import connect_vllm

LOG = get_logger(__name__)


class SelfPlayTrainerBase(AxolotlTrainer):
    # exp(loss) is no perplexity for a pairwise or policy-gradient loss (Axolotl >= 0.21 honours this)
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs):
        # The collator needs the index column, which HF would strip as "unused".
        kwargs["args"].remove_unused_columns = False
        super().__init__(*args, **kwargs)
        # Our losses are means over pairs or sequences already; let HF scale them for
        # gradient accumulation instead of passing a token count.
        self.model_accepts_loss_kwargs = False
        tokenizer = self.processing_class
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Every sample is cut at the first of these, and SPIN's real y ends at one (data/split.py).
        generation_config = getattr(self.accelerator.unwrap_model(self.model), "generation_config", None)
        self.eos_token_ids = end_of_turn_ids(tokenizer, generation_config)
        self.add_callback(WeightsGuard(self))

    @classmethod
    def requires_all_columns(cls, cfg) -> bool:  # Axolotl >= 0.21 asks before building args
        return True

    @property
    def selfplay_config(self):
        return self.axolotl_cfg.selfplay  # set by Axolotl after construction

    def disable_dropout_if_configured(self) -> None:
        """`selfplay.disable_dropout` (on by default, as TRL's preference trainers): the
        reference log-probs and the on-policy ratio assume the forward that sampled."""
        if self.selfplay_config.disable_dropout:
            disable_dropout(self.model)

    def build_sampler(self) -> Sampler:
        """The Sampler of `selfplay.generation`: `hf` on this model, or a vLLM engine (colocated or a server)."""
        generation = self.selfplay_config.generation
        return Sampler(
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            batch_size=generation.batch_size,
            server=connect_vllm(self),
        )

    def complete_checkpoint(self, resume_from_checkpoint) -> str | None:
        """The complete checkpoint to resume from (checkpoints.py): an interrupted save is
        skipped when Axolotl chose the checkpoint (`auto_resume_from_checkpoints`), refused
        with the one to use when the user named it."""
        auto_resume = bool(self.axolotl_cfg.get("auto_resume_from_checkpoints"))
        return resume_checkpoint(resume_from_checkpoint, self.args.output_dir, auto_resume, LOG)

    def sum_over_ranks(self, sums: dict[str, float]) -> dict[str, float]:
        """`sums` (this rank's, by name) summed over every rank: one collective, float64."""
        names = list(sums)
        values = torch.tensor([float(sums[name]) for name in names], dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        return dict(zip(names, values.tolist()))
