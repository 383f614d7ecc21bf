"""SelfPlayTrainer: SPIN and χ² self-play (`spin`, `spin_chi2`) on Axolotl's causal trainer.

Flow, top to bottom:
1. `__init__`: split every tokenized training row into prompt x and real
   response y (data.py), keep them in an OpponentStore, and give each row an
   index column the collator passes through.
2. At the first epoch of each iteration the OpponentGenerationCallback makes the
   current policy θ_t the opponent: it generates y', scores lp_θt(y|x) and
   lp_θt(y'|x), and installs them in the store (callbacks.py).
3. `compute_loss`: joins the batch's examples with their opponents (all pooled
   ones, or one drawn uniformly for fictitious play), runs ONE forward over
   [real; generated], mixes the reference toward θ_0 when `kl_to_base` > 0, and
   applies the SPIN or χ² loss (losses.py). Generation never happens here.
4. `_save_checkpoint` saves the store beside the checkpoint; `train` loads it
   when resuming, so a resumed run keeps its opponents.

Where this departs from the paper's released code (uclaml/SPIN):
- Opponents are generated inside the training run with the chat template used
  for training (the official `generate.py` used a different "### Instruction:"
  prompt), and iterations run in one process instead of generate/convert/train
  scripts per iteration.
- `history: h` pairs every example with its y' from the last h iterations in
  the same step (the real response's forward is shared) instead of
  concatenating h copies of the dataset; each pair's loss weight is the same.
- y' identical to y, or empty, is dropped (zero gradient / no content) and
  counted; the official code trains on them. Dropped pairs still count in the
  batch mean at their constant loss, so the loss value and the gradient equal
  the official ones for identical pairs (`losses.mean_over_candidates`).
"""

from __future__ import annotations

import math
import os
import random

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from .. import get_logger
from ..collator import INDEX_COLUMN, pair_batch
from ..data import build_examples
from ..generation import end_of_turn_ids
from ..logprobs import sequence_logps
from ..losses import mean_over_candidates, mix_reference, spin_chi2_loss, spin_loss
from ..opponent import OpponentStore
from ..reference import StartingModel
from ..vllm_backend import connect_vllm_server

LOG = get_logger(__name__)


class SelfPlayTrainer(AxolotlTrainer):
    # exp(loss) is no perplexity for a pairwise loss (Axolotl >= 0.21 honours this)
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs):
        # The collator needs the index column, which HF would strip as "unused".
        kwargs["args"].remove_unused_columns = False
        super().__init__(*args, **kwargs)
        # We compute a per-pair mean; let HF scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        tokenizer = self.processing_class
        # y ends where generation stops (data.split_prompt_response), so the ids come first
        end_ids = end_of_turn_ids(tokenizer, self.accelerator.unwrap_model(self.model))
        prompts, reals = build_examples(self.train_dataset, end_ids)
        self.train_dataset = self.train_dataset.add_column(INDEX_COLUMN, list(range(len(prompts))))
        # `history` is set in train(): Axolotl attaches the config after construction.
        self.opponents = OpponentStore(prompts, reals)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = self._check_end_of_turn(end_ids)
        self._pair_sums = None  # metric sums since the last log (see _store_pair_metrics)

    @classmethod
    def requires_all_columns(cls, cfg) -> bool:  # Axolotl >= 0.21 asks before building args
        return True

    @property
    def selfplay_config(self):
        # Read lazily: Axolotl sets `axolotl_cfg` after construction.
        return self.axolotl_cfg.selfplay

    def _check_end_of_turn(self, ids: set[int]) -> set[int]:
        ends = {real[-1] for real in self.opponents.reals}
        if not ends <= ids:
            LOG.warning(
                "some real responses do not end with an EOS token %s (last tokens seen: %s); "
                "check `train_on_eos: turn` so that y and y' both end the turn the same way",
                sorted(ids),
                sorted(ends - ids)[:5],
            )
        return ids

    # -- resume ----------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self.opponents.history = self.selfplay_config.history
        self.starting_model = StartingModel(self.axolotl_cfg)  # θ_0, used with kl_to_base
        self.vllm_server = connect_vllm_server(self)
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            if self.opponents.load(checkpoint):
                LOG.info("self-play: resumed iteration %d opponents from %s", self.opponents.iteration, checkpoint)
            else:
                LOG.warning(
                    "self-play: %s holds no opponent store; the opponents of the current "
                    "iteration will be regenerated by the resumed model",
                    checkpoint,
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial, **kwargs):
        super()._save_checkpoint(model, trial, **kwargs)
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.opponents.save(os.path.join(self._get_output_dir(trial=trial), folder))

    # -- loss ------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if INDEX_COLUMN not in inputs:
            # Evaluation batches come from Axolotl's default collator: report the
            # SFT loss of the real responses.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        sp = self.selfplay_config
        examples = inputs[INDEX_COLUMN].tolist()
        # Fictitious play draws opponents with an RNG keyed by (seed, step, batch),
        # so a resumed run draws the same ones.
        rng = random.Random(hash((self.args.seed, self.state.global_step, tuple(examples))))
        pairs, counts = self.opponents.pairs(examples, sp.opponent_mixture, rng)
        batch = pair_batch(self.opponents, examples, pairs, self.pad_token_id)
        device = self.accelerator.device
        batch = {k: v.to(device) for k, v in batch.items()}
        if hasattr(self, "_accumulate_token_counts") and self.args.include_tkps:
            self._accumulate_token_counts({"labels": batch["labels"]})

        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logps = sequence_logps(outputs.logits, batch["labels"])
        real_logps = logps[batch["real_row"]]
        generated_logps = logps[len(examples) :]
        ref_real = mix_reference(batch["ref_real_logps"], batch.get("base_real_logps"), sp.kl_to_base)
        ref_generated = mix_reference(batch["ref_generated_logps"], batch.get("base_generated_logps"), sp.kl_to_base)
        penalties = None
        # Dropped pairs (y' identical to y, or empty) still count in the batch mean, at their
        # constant loss ℓ(0) and zero gradient, as in the official recipe (see mean_over_candidates).
        dropped = counts["slots"] - len(pairs)
        dropped_loss = 0.0 if sp.type == "spin_chi2" else {"sigmoid": math.log(2), "hinge": 1.0}[sp.loss_type]
        if not pairs:
            # Every opponent of this batch was dropped: a constant loss that still
            # touches every parameter, so all ranks run the same backward.
            loss = logps.sum() * 0.0 + dropped_loss
            real_rewards = generated_rewards = logps.new_zeros(0)
            penalties = logps.new_zeros(0) if sp.type == "spin_chi2" else None
        elif sp.type == "spin_chi2":
            losses, real_rewards, generated_rewards, penalties = spin_chi2_loss(
                real_logps,
                generated_logps,
                ref_real,
                ref_generated,
                beta=sp.beta,
                alpha=sp.chi2_alpha,
                coef=sp.chi2_coef,
                reward_clip=sp.reward_clip,
            )
            loss = mean_over_candidates(losses, dropped, dropped_loss)
        else:
            losses, real_rewards, generated_rewards = spin_loss(
                real_logps, generated_logps, ref_real, ref_generated, beta=sp.beta, loss_type=sp.loss_type
            )
            loss = mean_over_candidates(losses, dropped, dropped_loss)
        self._store_pair_metrics(counts, real_rewards, generated_rewards, real_logps, generated_logps, penalties)
        return (loss, outputs) if return_outputs else loss

    # -- metrics ---------------------------------------------------------------

    def _store_pair_metrics(self, counts, real_rewards, generated_rewards, real_logps, generated_logps, penalties):
        """Sums over this rank's pairs, reduced over ranks and accumulated until the next log.

        `log` divides them once, so a logged value is the mean over every pair since the
        last log, however gradient accumulation split the step into micro-batches (a mean
        of micro-batch means would weigh a micro-batch of 3 kept pairs like one of 32).
        """
        real_rewards = real_rewards.detach().float()
        generated_rewards = generated_rewards.detach().float()
        sums = torch.tensor(
            [
                0.0 if penalties is None else penalties.float().sum(),
                real_rewards.sum(),
                generated_rewards.sum(),
                (real_rewards - generated_rewards).sum(),
                (real_rewards > generated_rewards).float().sum(),
                real_logps.detach().float().sum(),
                generated_logps.detach().float().sum(),
                counts["generated_tokens"],
                counts["truncated"],
                counts["age"],
                counts["pairs"],
                counts["identical"],
                counts["empty"],
                counts["candidates"],
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        self._pair_sums = sums if self._pair_sums is None else self._pair_sums + sums

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._pair_sums is not None:
            logs.update(self._pair_means(self._pair_sums.tolist()))
            self._pair_sums = None
        return super().log(logs, *args, **kwargs)

    def _pair_means(self, sums: list[float]) -> dict[str, float]:
        (penalty, r_real, r_gen, margin, acc, lp_real, lp_gen, tokens, truncated, age, n, identical, empty, candidates) = sums
        per_pair = max(n, 1.0)
        metrics = {
            "rewards/real": r_real / per_pair,
            "rewards/generated": r_gen / per_pair,
            "rewards/margins": margin / per_pair,
            "rewards/accuracies": acc / per_pair,
            "logps/real": lp_real / per_pair,
            "logps/generated": lp_gen / per_pair,
            "opponent/length": tokens / per_pair,
            "opponent/truncated_frac": truncated / per_pair,
            "opponent/identical_frac": identical / max(candidates, 1.0),
            "opponent/empty_frac": empty / max(candidates, 1.0),
            "opponent/age": age / per_pair,
            "selfplay/iteration": float(self.opponents.iteration),
        }
        if self.selfplay_config.type == "spin_chi2":
            metrics["chi2/penalty"] = penalty / per_pair
        return metrics

    def log_refresh_summary(self) -> None:
        pool = [o for p in self.opponents.pool for o in p if o.iteration == self.opponents.iteration]
        n = max(len(pool), 1)
        LOG.info(
            "self-play iteration %d: %d opponents, mean length %.1f, truncated %.1f%%, "
            "identical %.1f%%, empty %.1f%%",
            self.opponents.iteration,
            len(pool),
            sum(len(o.tokens) for o in pool) / n,
            100 * sum(o.truncated for o in pool) / n,
            100 * sum(o.status == "identical" for o in pool) / n,
            100 * sum(o.status == "empty" for o in pool) / n,
        )
