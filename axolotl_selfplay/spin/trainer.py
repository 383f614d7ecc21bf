"""SpinTrainer: SPIN and χ² self-play (`spin`, `spin_chi2`) on Axolotl's causal trainer.

Flow, top to bottom:
1. `__init__`: split every tokenized training row into prompt x and real
   response y (data/split.py), keep them in an OpponentStore (store.py; each rank the
   tokens of its own examples), and give each row an index column the collator passes through.
2. `begin_iteration` (at the first epoch of each iteration): the current policy
   θ_t becomes the opponent. The rollout (rollout.py) samples y', scores
   lp_θt(y|x) and lp_θt(y'|x), and the result is installed in the store; the
   evaluation rows (`val_set_size` / `test_datasets`) get their own opponents the
   same way. The learning-rate schedule restarts and the optimizer state is
   reset (schedule.py, `begin_iteration_schedule`).
3. `compute_loss`: joins the batch's examples with their opponents (all pooled
   ones, or one drawn uniformly for fictitious play; batch.py), fetching their tokens
   from the ranks holding them, runs ONE forward over [real; generated] (log-probs of
   the response tokens, scoring/logprobs.py), mixes the reference toward θ_0
   when `kl_to_base` > 0, and applies the SPIN or χ² loss (losses.py), plus
   `sft_weight` × the real responses' NLL. Generation never happens here.
   `prediction_step` computes the same on the evaluation rows. Metrics are summed by
   name over the pairs since the last log and divided once (`_pair_means`).
4. `_save_checkpoint` saves the stores into the checkpoint before HF marks it complete;
   `train` resumes from the newest complete checkpoint and loads them, so a run killed at
   any moment resumes against the opponents it had (checkpoints.py).

Where this departs from the paper's released code (uclaml/SPIN):
- Opponents are generated inside the training run with the chat template used
  for training (the official `generate.py` used a different "### Instruction:"
  prompt), and iterations run in one process instead of generate/convert/train
  scripts per iteration.
- `history: h` pairs every example with its y' from the last h iterations in
  the same step (the real response's forward is shared) instead of
  concatenating h copies of the dataset; each pair's loss weight is the same.
- SPIN skips the forward of a y' identical to y (its margin is 0 for every θ)
  but counts the pair in the batch mean at its constant loss, so the loss value
  and the gradient equal the official ones (`losses.mean_over_candidates`). The
  χ² loss of such a pair is not constant: it is computed from the real row
  (`losses.spin_chi2_identical_loss`).
- Dropout is off for the whole run (`disable_dropout`, as TRL's DPO): the
  reference log-probs are computed without it.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import get_logger
from ..checkpoints import IncompleteCheckpointError, is_selfplay_checkpoint, unmark_complete
from ..data.columns import INDEX_COLUMN
from ..data.opponents_from import take_supplied_opponents
from ..data.split import iter_examples, missing_end_of_turn_warning
from ..guard import check_finite
from ..losses import (
    mean_over_candidates,
    mix_reference,
    sft_nll,
    spin_chi2_batch_loss,
    spin_chi2_identical_loss,
    spin_chi2_loss,
    spin_loss,
)
from ..sampling.spec import SamplingSpec
from ..schedule import (
    IterationSchedule,
    at_iteration_start,
    find_iteration_schedule,
    iteration_warmup_steps,
    reset_optimizer_state,
)
from ..scoring.logprobs import model_token_logps
from ..scoring.starting_model import StartingModel
from ..trainer_base import SelfPlayTrainerBase
from .batch import pair_batch
from .rollout import OpponentRollout
from .store import EVAL_STATE_FILE, STATE_FILE, OpponentStore, pairing_rng

LOG = get_logger(__name__)
EVAL_SEED_OFFSET = 7919  # the evaluation rows' opponents are sampled with their own seed


class SpinTrainer(SelfPlayTrainerBase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # iteration 0's y' given by `selfplay.opponents_from` (data/opponents_from.py)
        self.train_dataset, self.supplied_opponents = take_supplied_opponents(self.train_dataset)
        # Each rank keeps the tokens of its own examples (store.py); `history` is set in
        # train(): Axolotl attaches the config after construction.
        self.opponents = self._store_of(self.train_dataset)
        self.train_dataset = self.train_dataset.add_column(INDEX_COLUMN, list(range(len(self.train_dataset))))
        # Evaluation rows get opponents of their own at every iteration (`prediction_step`).
        self.eval_opponents = None
        if self.eval_dataset is not None:
            self.eval_opponents = self._store_of(self.eval_dataset)
            self.eval_dataset = self.eval_dataset.add_column(INDEX_COLUMN, list(range(len(self.eval_dataset))))
        self._schedule_iteration = None  # the iteration whose schedule and optimizer were started
        warning = missing_end_of_turn_warning(
            self.opponents, self.eos_token_ids, getattr(self.args, "max_seq_length", None)
        )
        if warning:
            LOG.warning(warning)
        self._pair_sums: dict[str, dict[str, float]] = {}  # "train" / "eval": sums since the last log
        self.add_callback(_IterationBoundary(self))

    # -- set-up and resume -------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        sp = self.selfplay_config
        self.disable_dropout_if_configured()
        self.opponents.history = sp.history
        # θ_0, used with kl_to_base; built before a resumed checkpoint is loaded
        self.starting_model = StartingModel(self.axolotl_cfg, self.model)
        sampler = self.build_sampler()

        def rollout(store, seed):
            return OpponentRollout(
                store,
                sampler,
                SamplingSpec.from_config(sp.generation),
                self.accelerator,
                self.starting_model,
                kl_to_base=sp.kl_to_base,
                batch_size=sp.generation.batch_size,
                gather_deepspeed3_params=sp.generation.ds3_gather_for_generation,
                seed=seed,
            )

        self.opponent_rollout = rollout(self.opponents, self.args.seed)
        if self.eval_opponents is not None:
            self.eval_opponents.history = sp.history  # the same objective as training
            self.eval_rollout = rollout(self.eval_opponents, self.args.seed + EVAL_SEED_OFFSET)
        checkpoint = self.complete_checkpoint(resume_from_checkpoint)  # trainer_base.py, checkpoints.py
        if checkpoint is not None:
            self._load_stores(checkpoint)
        return super().train(checkpoint, *args, **kwargs)

    def _load_stores(self, checkpoint: str) -> None:
        """The opponents the interrupted run trained against, from a complete checkpoint."""
        if self.opponents.load(checkpoint):
            LOG.info("self-play: resumed iteration %d opponents from %s", self.opponents.iteration, checkpoint)
        elif is_selfplay_checkpoint(checkpoint):
            # Never regenerate them silently: the resumed model is not the θ_t that made them.
            raise IncompleteCheckpointError(
                f"{checkpoint} was written by a self-play run but holds no opponent store ({STATE_FILE}), "
                "so its opponents cannot be restored. Resume from an older checkpoint of the run that has one, "
                "or start the run again."
            )
        else:
            LOG.warning(
                "self-play: %s is a checkpoint of a run without self-play; the model it holds generates the "
                "opponents of the current iteration",
                checkpoint,
            )
        if self.eval_opponents is not None and not self.eval_opponents.load(checkpoint, EVAL_STATE_FILE):
            LOG.warning(
                "self-play: %s holds no evaluation opponents (it was written without evaluation rows); the "
                "resumed model generates those of the current iteration",
                checkpoint,
            )

    def _save_checkpoint(self, model, trial, **kwargs):
        # The stores go in before HF's files. HF marks a checkpoint complete last (its
        # trainer_state.json) and only then rotates older checkpoints away, so a kill at any
        # moment leaves either a complete checkpoint with its opponents or an incomplete one
        # that resume skips (checkpoints.py).
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            unmark_complete(folder)  # a folder an interrupted save left at this step
        # every rank takes part (the stores' tokens are sharded); the main process writes
        self.opponents.save(folder, STATE_FILE)
        if self.eval_opponents is not None:
            self.eval_opponents.save(folder, EVAL_STATE_FILE)
        return super()._save_checkpoint(model, trial, **kwargs)

    # -- the learning-rate schedule and the optimizer, per iteration (schedule.py) --

    def set_initial_training_values(self, args, dataloader, *rest):
        values = super().set_initial_training_values(args, dataloader, *rest)
        self._steps_per_epoch = values[1]  # HF's num_update_steps_per_epoch
        return values

    def create_scheduler(self, num_training_steps, optimizer=None):
        """Axolotl's scheduler, wrapped in an IterationSchedule: built for one iteration's
        steps (and warm-up) when `restart_schedule` is on, scaled by `learning_rates`."""
        sp = self.selfplay_config
        if self.lr_scheduler is not None or not (sp.restart_schedule or sp.learning_rates):
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        if sp.restart_schedule:
            per_epoch = getattr(self, "_steps_per_epoch", None) or num_training_steps // (sp.iterations * sp.epochs_per_iteration)
            steps = max(1, per_epoch * sp.epochs_per_iteration)
            whole_run_warmup = self.args.warmup_steps
            self.args.warmup_steps = iteration_warmup_steps(self.axolotl_cfg, steps)
            try:
                inner = super().create_scheduler(steps, optimizer)
            finally:
                self.args.warmup_steps = whole_run_warmup
        else:
            inner = super().create_scheduler(num_training_steps, optimizer)
        scales = [lr / self.args.learning_rate for lr in sp.learning_rates] if sp.learning_rates else None
        self.lr_scheduler = IterationSchedule(inner, optimizer, restart=sp.restart_schedule, scales=scales)
        return self.lr_scheduler

    def begin_iteration_schedule(self, iteration: int, fresh: bool) -> None:
        """Enter `iteration` on the schedule; `fresh`: none of its optimizer steps has been
        taken yet (a run resumed mid-iteration continues with the checkpoint's schedule
        position and optimizer state instead)."""
        if self._schedule_iteration == iteration:
            return
        self._schedule_iteration = iteration
        schedule = find_iteration_schedule(self.lr_scheduler)
        if schedule is not None:
            schedule.begin_iteration(iteration, restart=fresh)
        if fresh and iteration > 0 and self.selfplay_config.reset_optimizer:
            count = reset_optimizer_state(self.optimizer)
            LOG.info("self-play iteration %d: optimizer state of %d parameters reset", iteration, count)

    def training_weights(self) -> None:
        """Put the weights training continues from into the model. A schedule-free optimizer
        (`schedule_free_adamw`, ...) keeps two points there: the one its steps are taken at
        (train mode, which HF sets before every training step) and the averaged weights HF
        evaluates with (eval mode, left in place after an evaluation). θ_t must be the point the
        next step is taken at, or the iteration would not start at ln 2. Other optimizers have
        no modes."""
        train_mode = getattr(self.optimizer, "train", None)
        if callable(train_mode):
            train_mode()

    # -- iterations ----------------------------------------------------------------

    def begin_iteration(self, iteration: int) -> None:
        """Make the current policy θ_t the opponent: sample and score y' on every rank,
        install the result in the store, export the pairs."""
        at_start = self.state.global_step == 0 and self.opponents.iteration == -1
        supplied = self.supplied_opponents if iteration == 0 else None
        result = self.opponent_rollout(self.model_wrapped, iteration, at_start, supplied)
        self.opponents.set_iteration(result.iteration, result.ref_logp_real, result.pools, result.base_logp_real)
        self._export(self.opponents, f"iter_{iteration}.jsonl")
        self.log_refresh_summary()
        if supplied:
            LOG.info(
                "self-play iteration 0: %d opponents from `selfplay.opponents_from`, %d generated (this rank)",
                self.opponent_rollout.supplied,
                self.opponent_rollout.sampled,
            )
        if self.eval_opponents is not None:
            self.begin_eval_iteration(iteration, at_start)

    def begin_eval_iteration(self, iteration: int, at_start: bool = False) -> None:
        """The evaluation rows' opponents for `iteration`: one more generation pass, over
        the evaluation split, with the same θ_t (and sampler) as the training rows'."""
        result = self.eval_rollout(self.model_wrapped, iteration, at_start)
        self.eval_opponents.set_iteration(result.iteration, result.ref_logp_real, result.pools, result.base_logp_real)
        self._export(self.eval_opponents, f"eval_iter_{iteration}.jsonl")

    def _export(self, store: OpponentStore, name: str) -> None:
        # every rank takes part (the store's tokens are sharded); the main process writes
        tokenizer = self.processing_class
        path = os.path.join(self.args.output_dir, "selfplay", name)
        store.export_jsonl(path, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    def _store_of(self, dataset) -> OpponentStore:
        """An OpponentStore of `dataset`'s rows (each y ending at its end-of-turn token), each
        rank holding the tokens of its shard."""
        accelerator = self.accelerator
        return OpponentStore.from_examples(
            iter_examples(dataset, self.eos_token_ids), len(dataset), rank=accelerator.process_index,
            world=accelerator.num_processes,
        )

    # -- loss ------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self._selfplay_loss(model, self.opponents, inputs[INDEX_COLUMN].tolist(), "train")
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the training objective on the held-out rows, against the opponents
        θ_t generated for them at the start of the iteration; `eval_*` metrics."""
        if self.eval_opponents is None or self.eval_opponents.iteration < 0:
            raise RuntimeError(
                "self-play evaluation runs inside `train()`: the evaluation rows get their opponents when an "
                "iteration starts"
            )
        with torch.no_grad():
            loss, _ = self._selfplay_loss(model, self.eval_opponents, inputs[INDEX_COLUMN].tolist(), "eval")
        return loss.detach(), None, None

    def _selfplay_loss(self, model, store: OpponentStore, examples: list[int], train_eval: str):
        """The batch loss of `examples` (rows of `store`) and the model outputs; stores the metrics."""
        sp = self.selfplay_config
        # Fictitious play draws opponents with an RNG keyed by (seed, step, batch),
        # so a resumed run draws the same ones.
        rng = pairing_rng(self.args.seed, self.state.global_step, examples, evaluation=train_eval == "eval")
        selection = store.pairs(examples, sp.opponent_mixture, rng)
        pairs = selection.pairs
        batch = pair_batch(store, examples, pairs, self.pad_token_id)
        device = self.accelerator.device
        batch = {k: v.to(device) for k, v in batch.items()}
        if train_eval == "train" and hasattr(self, "_accumulate_token_counts") and self.args.include_tkps:
            self._accumulate_token_counts({"labels": batch["labels"]})

        # log-probs of the response tokens; from the hidden states, lm_head in chunks, where the model allows
        per_token, mask = model_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        logps = per_token.sum(-1)  # (B + P,): sums over each response's tokens
        all_real_logps = logps[: len(examples)]  # (B,): one per example
        real_tokens = mask[: len(examples)].sum(-1)  # (B,)
        ref_real = mix_reference(batch["ref_real_logps"], batch.get("base_real_logps"), sp.kl_to_base)  # (B,)
        real_logps = all_real_logps[batch["real_row"]]  # (P,): the real side of each pair
        generated_logps = logps[len(examples) :]
        ref_generated = mix_reference(batch["ref_generated_logps"], batch.get("base_generated_logps"), sp.kl_to_base)
        penalties = None
        if sp.type == "spin_chi2":
            losses, real_rewards, generated_rewards, penalties = spin_chi2_loss(
                real_logps,
                generated_logps,
                ref_real[batch["real_row"]],
                ref_generated,
                beta=sp.beta,
                alpha=sp.chi2_alpha,
                coef=sp.chi2_coef,
                reward_clip=sp.reward_clip,
            )
            # y' = y: the pair's loss c·(r⁺)², from its real row, once per identical slot
            identical_losses = spin_chi2_identical_loss(
                all_real_logps, ref_real, beta=sp.beta, coef=sp.chi2_coef, reward_clip=sp.reward_clip
            )
            identical = torch.tensor(selection.identical, device=device)
            loss = spin_chi2_batch_loss(losses, identical_losses, identical, selection.slots)
        else:
            losses, real_rewards, generated_rewards = spin_loss(
                real_logps, generated_logps, ref_real[batch["real_row"]], ref_generated, beta=sp.beta, loss_type=sp.loss_type
            )
            # Identical pairs still count in the batch mean, at their constant loss ℓ(0) and
            # zero gradient, as in the official recipe (see mean_over_candidates).
            constant = {"sigmoid": math.log(2), "hinge": 1.0}[sp.loss_type]
            loss = mean_over_candidates(losses, selection.slots - len(pairs), constant)
        if sp.sft_weight > 0:
            loss = loss + sp.sft_weight * sft_nll(all_real_logps, real_tokens)
        if not pairs:
            # Every opponent of this batch is identical to its y: keep every parameter in
            # the graph (a zero-gradient term), so all ranks run the same backward.
            loss = loss + logps.sum() * 0.0
        # the pair metrics over the rows that count (evaluation: not accelerate's repeated rows)
        counted = self._counted_rows(len(examples), train_eval)
        paired = counted[torch.tensor(selection.rows, dtype=torch.long, device=device)]
        self._store_pair_metrics(
            selection.counts_over(counted.tolist()), loss, real_rewards[paired], generated_rewards[paired],
            real_logps[paired], generated_logps[paired], None if penalties is None else penalties[paired],
            all_real_logps[counted], real_tokens[counted], examples, train_eval,
        )
        return loss, {"logps": logps}

    def _counted_rows(self, rows: int, train_eval: str) -> torch.Tensor:
        """(rows,) bool: which rows of this rank's batch count in the pair metrics. In training all;
        in evaluation not the copies of the first rows that accelerate appends to even out the
        last batch across ranks (`even_batches`), which HF leaves out of `eval_loss` with
        `gather_for_metrics`. Every rank asks it which positions of the gathered batch (rank r's
        rows are r·rows … r·rows + rows − 1 there) it keeps: one small collective per batch."""
        accelerator = self.accelerator
        if train_eval == "train" or accelerator.num_processes == 1:
            return torch.ones(rows, dtype=torch.bool, device=accelerator.device)
        start = accelerator.process_index * rows
        positions = torch.arange(start, start + rows, device=accelerator.device)
        return torch.isin(positions, accelerator.gather_for_metrics(positions))

    # -- metrics ---------------------------------------------------------------

    def _store_pair_metrics(
        self, counts, loss, real_rewards, generated_rewards, real_logps, generated_logps, penalties,
        all_real_logps, real_tokens, examples, train_eval="train",
    ):
        """Sums over this rank's pairs, by name, summed over ranks and accumulated until the next log.

        `log` divides them once, so a logged value is the mean over every pair since the
        last log, however gradient accumulation split the step into micro-batches (a mean
        of micro-batch means would weigh a micro-batch of 3 kept pairs like one of 32).
        Most sums are named after the metric they become. A non-finite loss, log-prob or reward
        on any rank stops training on every rank.
        """
        real_rewards = real_rewards.detach().float()
        generated_rewards = generated_rewards.detach().float()
        sums = self.sum_over_ranks(
            {
                "loss": loss.detach(),
                "chi2/penalty": 0.0 if penalties is None else penalties.float().sum(),
                "rewards/real": real_rewards.sum(),
                "rewards/generated": generated_rewards.sum(),
                "rewards/margins": (real_rewards - generated_rewards).sum(),
                "rewards/accuracies": (real_rewards > generated_rewards).float().sum(),
                "logps/real": real_logps.detach().float().sum(),
                "logps/generated": generated_logps.detach().float().sum(),
                "opponent/length": counts["generated_tokens"],
                "opponent/truncated_frac": counts["truncated"],
                "opponent/age": counts["age"],
                "pairs": counts["pairs"],
                "opponent/identical_frac": counts["identical"],  # over candidates, not pairs
                "opponent/empty_frac": counts["empty"],
                "candidates": counts["candidates"],
                # every real response of the batch, for nll/real: Σ lp_θ(y) and Σ |y|
                "real_token_logps": all_real_logps.detach().sum(),
                "real_tokens": real_tokens.sum(),
            }
        )
        if train_eval == "train":
            check_finite(
                {name: sums[name] for name in ("loss", "logps/real", "logps/generated", "rewards/real", "rewards/generated", "chi2/penalty")},
                self.state.global_step + 1,
                f"self-play iteration {self.opponents.iteration}; this rank's examples {examples}",
            )
        previous = self._pair_sums.get(train_eval)
        self._pair_sums[train_eval] = sums if previous is None else {k: previous[k] + v for k, v in sums.items()}

    def log(self, logs, *args, **kwargs):
        # the pair metrics since the last log, with the training loss or the evaluation's
        if "loss" in logs and "train" in self._pair_sums:
            logs.update(self._pair_means(self._pair_sums.pop("train")))
            logs["selfplay/iteration"] = float(self.opponents.iteration)
        if "eval_loss" in logs and "eval" in self._pair_sums:
            means = self._pair_means(self._pair_sums.pop("eval"))
            logs.update({f"eval_{name}": value for name, value in means.items()})
        return super().log(logs, *args, **kwargs)

    def _pair_means(self, sums: dict[str, float]) -> dict[str, float]:
        per_pair = max(sums["pairs"], 1.0)
        metrics = {
            name: sums[name] / per_pair
            for name in ("rewards/real", "rewards/generated", "rewards/margins", "rewards/accuracies", "logps/real", "logps/generated")
        }
        metrics["nll/real"] = -sums["real_token_logps"] / max(sums["real_tokens"], 1.0)
        metrics["opponent/length"] = sums["opponent/length"] / per_pair
        metrics["opponent/truncated_frac"] = sums["opponent/truncated_frac"] / per_pair
        metrics["opponent/identical_frac"] = sums["opponent/identical_frac"] / max(sums["candidates"], 1.0)
        metrics["opponent/empty_frac"] = sums["opponent/empty_frac"] / per_pair
        metrics["opponent/age"] = sums["opponent/age"] / per_pair
        if self.selfplay_config.type == "spin_chi2":
            metrics["chi2/penalty"] = sums["chi2/penalty"] / per_pair
        return metrics

    def log_refresh_summary(self) -> None:
        summary = self.opponents.summary(self.opponents.iteration)
        LOG.info(
            "self-play iteration %d: %d opponents, mean length %.1f, truncated %.1f%%, "
            "identical %.1f%%, empty %.1f%%",
            self.opponents.iteration,
            summary["opponents"],
            summary["length"],
            100 * summary["truncated"],
            100 * summary["identical"],
            100 * summary["empty"],
        )


class _IterationBoundary(TrainerCallback):
    """Starts iteration t at the first epoch of its E epochs (epochs are grouped E
    per iteration): opponents, then the schedule and the optimizer. On resume the
    store of the checkpoint already holds the current iteration, so nothing is
    regenerated (that would make the half-trained model the opponent), and the
    schedule and optimizer state are the checkpoint's.

    Also at `on_train_begin`, so that `eval_on_start` finds the evaluation rows'
    opponents (both calls do the same; the second finds the work done)."""

    def __init__(self, trainer: SpinTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        sp = trainer.selfplay_config
        epoch = state.epoch or 0.0
        iteration = iteration_of_epoch(epoch, sp.epochs_per_iteration)
        if iteration >= sp.iterations:
            return
        trainer.training_weights()  # an evaluation may have left a schedule-free optimizer's averaged ones
        if trainer.opponents.iteration != iteration:
            trainer.begin_iteration(iteration)
        elif trainer.eval_opponents is not None and trainer.eval_opponents.iteration != iteration:
            trainer.begin_eval_iteration(iteration)  # resumed from a checkpoint without them
        trainer.begin_iteration_schedule(iteration, at_iteration_start(epoch, iteration, sp.epochs_per_iteration))

    on_train_begin = on_epoch_begin


def iteration_of_epoch(epoch: float, epochs_per_iteration: int) -> int:
    # state.epoch is a float (1.5 when resuming mid-epoch); the tiny offset
    # absorbs float error in values like 2.9999999.
    return int(math.floor(epoch + 1e-6)) // epochs_per_iteration
