"""LSPTrainer: Language Self-Play (`rl: lsp`, Kuba et al., arXiv 2509.07414).

One model plays two roles. Every row of a micro-batch is one game:
1. Challenger: N queries q_i ~ π_θ(· | challenger prompt) (sampled).
2. Solver: G answers a_ij ~ π_θ(· | q_i) per query (sampled).
3. Rewards: task reward R_ij (Python reward functions and/or a reward model,
   weighted) and, for LSP (not LSP-Zero), the quality self-reward R_Q_ij: the
   reference model θ_0 judges (q_i, a_ij) with `judge_prompt`.
4. Group-relative advantages for both roles (losses.lsp_advantages).
5. One forward over [challenger rows; solver rows] and the token-level policy
   gradient with a k3 KL to θ_0: L = L_Sol + α_Ch·L_Ch (losses.lsp_policy_loss).

Steps 1–4 are the rollout (rollout.py, no grad), played in
`training_step` before HF's own training step calls `compute_loss` on the
prepared batch: generation never happens in `compute_loss`. With
`generation.backend: vllm` steps 1–2 run on a vLLM server that receives the
policy's weights once per optimizer step.

Where this departs from (or fills gaps in) the paper, which has no public code:
- One gradient step per rollout (on-policy, so the PPO ratio is 1 and no
  clipping is needed); per-sequence token means, then a mean over sequences
  (GRPO's normalisation) for each role.
- Rewards are not divided by their std (the paper's "reward minus the average").
- A degenerate query (empty, or no end-of-turn within `max_query_tokens`) gets
  the game's lowest challenger reward minus 1; its answers are generated (so all
  ranks run the same batches) but not rewarded or trained on.
- The judge decodes greedily; a reply without a valid `Score: <k>` scores 0
  and is counted in `lsp/judge_parse_fail_frac`.
- Defaults the paper does not state (N = 8, G = 4, β = 0.04, α_Ch = 1) are
  our choices, documented in docs/algorithms.md.
- Dropout is off for the whole run (`disable_dropout`): the ratio-1 on-policy
  form and the KL assume the policy forward is the function that sampled.
"""

from __future__ import annotations

import json
import os

import torch

from .. import get_logger
from ..checkpoints import trainer_state as read_trainer_state
from ..config import task_weights
from ..data.columns import GAME_SEED_COLUMN, INDEX_COLUMN
from ..guard import check_finite
from ..losses import lsp_policy_loss
from ..scoring.logprobs import model_token_logps
from ..scoring.starting_model import ReferenceModel
from ..trainer_base import SelfPlayTrainerBase
from .rewards import RewardModel, load_reward_funcs
from .rollout import LSPRollout

LOG = get_logger(__name__)

SAMPLES_PER_LOG = 8  # queries (with their answers and rewards) written to lsp_samples.jsonl per logging step


class LSPTrainer(SelfPlayTrainerBase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.game_seeds = list(self.train_dataset[GAME_SEED_COLUMN])
        self._micro_step: int | None = None  # micro-steps played; set at the first one (see training_step)
        self._rollout_stats: dict[str, float] = {}  # this rank's rollout sums, by name (Games.statistics)
        self._samples: list[dict] = []
        self._warned_judge = False

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        sp = self.selfplay_config
        lsp = sp.lsp
        self.disable_dropout_if_configured()
        reward_model = None
        if lsp.reward_model:
            reward_model = RewardModel(
                lsp.reward_model,
                self.accelerator,
                dtype=next(self.model.parameters()).dtype,
                batch_size=sp.generation.batch_size,
                attn_implementation=getattr(self.model.config, "_attn_implementation", None),
            )
        reference = None
        if lsp.self_reward or lsp.kl_beta > 0:
            # θ_0: built before a resumed checkpoint is loaded, so it is the starting model
            reference = ReferenceModel(self.model, self.accelerator, self.axolotl_cfg)
        self.rollout = LSPRollout(
            tokenizer=self.processing_class,
            sampler=self.build_sampler(),
            lsp=lsp,
            generation=sp.generation,
            accelerator=self.accelerator,
            reference=reference,
            reward_funcs=load_reward_funcs(lsp.reward_funcs),
            reward_model=reward_model,
            reward_weights=task_weights(lsp),
            chat_template_kwargs=self.axolotl_cfg.get("chat_template_kwargs"),
        )
        checkpoint = self.complete_checkpoint(resume_from_checkpoint)  # trainer_base.py, checkpoints.py
        if checkpoint is not None and self.args.should_save:
            # the interrupted run may have logged steps after its checkpoint: they are played again
            self._keep_samples_until(read_trainer_state(checkpoint)["global_step"])
        self._micro_step = None
        return super().train(checkpoint, *args, **kwargs)

    # -- rollouts (no grad) ------------------------------------------------------

    def training_step(self, model, inputs, *args, **kwargs):
        games = inputs[INDEX_COLUMN].tolist()
        if self._micro_step is None:
            # HF loads a resumed checkpoint's step inside `train`, after our set-up: count from
            # it here, so a resumed run plays the games the interrupted one would have played.
            self._micro_step = self.state.global_step * self.args.gradient_accumulation_steps
        # Own RNG stream per (seed, micro-step, rank): reproducible, training RNG untouched.
        seed = hash((self.args.seed, self._micro_step, self.accelerator.process_index)) % (2**31)
        self._micro_step += 1
        played = self.rollout(
            self.model_wrapped,
            [self.game_seeds[game] for game in games],
            seed,
            weights_version=self.state.global_step,
            trainer_state=self.state,
        )
        self_reward = self.selfplay_config.lsp.self_reward
        self._rollout_stats = played.statistics(self_reward)
        if self.accelerator.is_main_process:
            self._samples = played.samples(SAMPLES_PER_LOG, self_reward)
        return super().training_step(model, played.training_batch(self.pad_token_id), *args, **kwargs)

    # -- loss ------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lsp = self.selfplay_config.lsp
        # log-probs of the sampled tokens; from the hidden states, lm_head in chunks, where the model allows
        logps, mask = model_token_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        ref = inputs.get("ref_logps")
        solver = inputs["is_solver"]
        losses, kls = {}, []
        for role, rows in (("challenger", ~solver), ("solver", solver)):
            if not rows.any():
                losses[role] = logps.sum() * 0.0  # keeps every parameter in the graph on every rank
                continue
            losses[role], kl = lsp_policy_loss(
                logps[rows],
                mask[rows],
                inputs["advantages"][rows].float(),
                None if ref is None else ref[rows].float(),
                lsp.kl_beta,
            )
            kls.append(kl)
        loss = losses["solver"] + lsp.challenger_weight * losses["challenger"]
        kl_sum = float(torch.cat(kls).sum()) if kls else 0.0
        self._store_lsp_metrics(losses, float(loss.detach()), kl_sum, int(inputs["labels"].shape[0]))
        return (loss, {"logps": logps}) if return_outputs else loss

    # -- metrics and samples ---------------------------------------------------

    def _store_lsp_metrics(self, losses, loss: float, kl_sum: float, rows: int) -> None:
        """This rank's rollout and loss sums, summed over ranks by name, then averaged. A
        non-finite loss, reward or KL on any rank stops training on every rank."""
        total = self.sum_over_ranks(
            {
                **self._rollout_stats,
                "solver_loss": losses["solver"].detach(),
                "challenger_loss": losses["challenger"].detach(),
                "kl": kl_sum,
                "rows": rows,
                "loss": loss,
            }
        )
        check_finite(
            {"loss": total["loss"], "lsp/solver_loss": total["solver_loss"], "lsp/challenger_loss": total["challenger_loss"],
             "lsp/kl": total["kl"], "lsp/solver_reward": total["reward"], "lsp/challenger_reward": total["challenger_reward"]},
            self.state.global_step + 1,
            "rl: lsp",
        )
        queries, answers = total["queries"], total["answers"]
        world = self.accelerator.num_processes
        lsp = self.selfplay_config.lsp
        metrics = {
            "lsp/solver_reward": total["reward"] / max(answers, 1.0),
            "lsp/challenger_reward": total["challenger_reward"] / max(queries, 1.0),
            "lsp/query_length": total["query_tokens"] / max(queries, 1.0),
            "lsp/answer_length": total["answer_tokens"] / max(answers, 1.0),
            "lsp/answer_truncated_frac": total["answers_truncated"] / max(answers, 1.0),
            "lsp/zero_std_frac": total["zero_std"] / max(total["groups"], 1.0),
            "lsp/degenerate_query_frac": total["degenerate"] / max(queries, 1.0),
            "lsp/distinct_query_frac": total["distinct"] / max(queries, 1.0),
            "lsp/solver_loss": total["solver_loss"] / world,
            "lsp/challenger_loss": total["challenger_loss"] / world,
        }
        if lsp.self_reward:
            metrics["lsp/self_reward"] = total["quality"] / max(answers, 1.0)
            metrics["lsp/judge_parse_fail_frac"] = total["parse_fail"] / max(answers, 1.0)
            if answers and total["parse_fail"] == answers and not self._warned_judge:
                # LSP then silently runs as LSP-Zero at the cost of N·G judge generations.
                LOG.warning(
                    "rl: lsp: none of the judge's %d replies contained a valid `Score: <0-%d>`, so the "
                    "self-reward is 0. Check `selfplay.lsp.judge_prompt` with this model, or set "
                    "`self_reward: false` (LSP-Zero) to skip the judge's generations.",
                    int(answers),
                    lsp.judge_max_score,
                )
                self._warned_judge = True
        if lsp.kl_beta > 0:
            metrics["lsp/kl"] = total["kl"] / max(total["rows"], 1.0)
        self.store_metrics(metrics)

    def _samples_path(self) -> str:
        return os.path.join(self.args.output_dir, "selfplay", "lsp_samples.jsonl")

    def _keep_samples_until(self, step: int) -> None:
        path = self._samples_path()
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as handle:
            kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= step]
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(path + ".tmp", path)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._samples and self.args.should_save:
            path = self._samples_path()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as handle:
                handle.writelines(json.dumps({"step": self.state.global_step, **sample}) + "\n" for sample in self._samples)
        return super().log(logs, *args, **kwargs)
