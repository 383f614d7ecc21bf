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

Steps 1–4 run in `training_step` under no_grad (`_play`), before HF's own
training step calls `compute_loss` on the prepared batch: generation never
happens in `compute_loss`. With `generation.backend: vllm` steps 1–2 run on a
vLLM server that receives the policy's weights before every step.

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
  our choices, documented in the README.
"""

from __future__ import annotations

import json
import os

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from .. import get_logger
from ..collator import INDEX_COLUMN
from ..data import GAME_SEED_COLUMN, SEED_SLOT
from ..generation import end_of_turn_ids, generate_responses, score_response_tokens
from ..logprobs import pad_sequences, token_logps
from ..losses import lsp_advantages, lsp_policy_loss
from ..reference import ReferenceModel
from ..rewards import RewardModel, judge_request, load_reward_funcs, parse_judge_score, task_rewards
from ..vllm_backend import connect_vllm_server

LOG = get_logger(__name__)

SAMPLES_PER_LOG = 8  # queries (with their answers and rewards) written to lsp_samples.jsonl per logging step


class LSPTrainer(AxolotlTrainer):
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs):
        kwargs["args"].remove_unused_columns = False  # keep the game index column
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.game_seeds = list(self.train_dataset[GAME_SEED_COLUMN])
        tokenizer = self.processing_class
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = end_of_turn_ids(tokenizer, self.accelerator.unwrap_model(self.model))
        self.reference = None
        self.vllm_server = None
        self._micro_step = 0
        self._rollout_stats: torch.Tensor | None = None
        self._samples: list[dict] = []
        self._warned_judge = False

    @classmethod
    def requires_all_columns(cls, cfg) -> bool:  # Axolotl >= 0.21 asks before building args
        return True

    @property
    def selfplay_config(self):
        return self.axolotl_cfg.selfplay  # set by Axolotl after construction

    def train(self, *args, **kwargs):
        lsp = self.selfplay_config.lsp
        self.reward_funcs = load_reward_funcs(lsp.reward_funcs)
        self.reward_weights = list(lsp.reward_weights) if lsp.reward_weights else [1.0] * (
            len(lsp.reward_funcs) + (lsp.reward_model is not None)
        )
        self.reward_model = None
        if lsp.reward_model:
            self.reward_model = RewardModel(
                lsp.reward_model,
                self.accelerator,
                dtype=next(self.model.parameters()).dtype,
                batch_size=self.selfplay_config.generation.batch_size,
                attn_implementation=getattr(self.model.config, "_attn_implementation", None),
            )
        if lsp.self_reward or lsp.kl_beta > 0:
            self.reference = ReferenceModel(self.model, self.accelerator, self.axolotl_cfg)
        self.vllm_server = connect_vllm_server(self)
        self._micro_step = self.state.global_step * self.args.gradient_accumulation_steps
        return super().train(*args, **kwargs)

    # -- rollouts (no grad) ------------------------------------------------------

    def training_step(self, model, inputs, *args, **kwargs):
        rollout = self._play(inputs[INDEX_COLUMN].tolist())
        return super().training_step(model, rollout, *args, **kwargs)

    def _chat_prompt(self, text: str) -> list[int]:
        tokenizer = self.processing_class
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def _decode(self, tokens: list[int]) -> str:
        return self.processing_class.decode(tokens, skip_special_tokens=True).strip()

    def _generation_kwargs(self, lockstep: bool) -> dict:
        gen = self.selfplay_config.generation
        return {
            "pad_token_id": self.pad_token_id,
            "eos_token_ids": self.eos_token_ids,
            "batch_size": gen.batch_size,
            "synced_gpus": lockstep,
        }

    @torch.no_grad()
    def _play(self, games: list[int]) -> dict[str, torch.Tensor]:
        """Play one game per index: queries, answers, rewards, advantages, reference log-probs."""
        from trl.models import unwrap_model_for_generation

        sp = self.selfplay_config
        lsp, gen = sp.lsp, sp.generation
        n, g = lsp.num_queries, lsp.num_answers
        accelerator = self.accelerator
        ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        # ZeRO-3 with sharded weights: every generate is a collective (same counts on all ranks).
        lockstep = not gen.ds3_gather_for_generation and getattr(ds_plugin, "zero_stage", 0) == 3
        common = self._generation_kwargs(lockstep)
        # Own RNG stream per (seed, micro-step, rank): reproducible, training RNG untouched.
        seed = hash((self.args.seed, self._micro_step, accelerator.process_index)) % (2**31)
        self._micro_step += 1

        game_prompts = [
            self._chat_prompt(lsp.challenger_prompt.replace(SEED_SLOT, self.game_seeds[game])) for game in games
        ]
        challenger_prompts = [prompt for prompt in game_prompts for _ in range(n)]
        sampling = {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p}
        with unwrap_model_for_generation(
            self.model_wrapped,
            accelerator,
            gather_deepspeed3_params=gen.ds3_gather_for_generation or self.vllm_server is not None,
        ) as policy:
            if self.vllm_server is not None:
                # The server samples both roles with this step's weights.
                self.vllm_server.push_weights(policy)
                queries = self.vllm_server.generate(
                    game_prompts, n=n, eos_token_ids=self.eos_token_ids, max_new_tokens=lsp.max_query_tokens,
                    seed=seed, **sampling,
                )
            else:
                queries = generate_responses(
                    policy, challenger_prompts, max_new_tokens=lsp.max_query_tokens, seed=seed, **sampling, **common
                )
            query_texts = [self._decode(tokens) for tokens, _ in queries]
            valid = [not truncated and bool(text) for (_, truncated), text in zip(queries, query_texts)]
            query_prompts = [self._chat_prompt(text) for text in query_texts]
            solver_prompts = [prompt for prompt in query_prompts for _ in range(g)]
            if self.vllm_server is not None:
                answers = self.vllm_server.generate(
                    query_prompts, n=g, eos_token_ids=self.eos_token_ids, max_new_tokens=gen.max_new_tokens,
                    seed=seed + 1, **sampling,
                )
            else:
                answers = generate_responses(
                    policy, solver_prompts, max_new_tokens=gen.max_new_tokens, seed=seed + 1, **sampling, **common
                )
        answer_texts = [self._decode(tokens) for tokens, _ in answers]
        answer_valid = [valid[i // g] for i in range(len(answers))]

        # Reference model: the judge's verdicts and per-token log-probs for the KL.
        scores: list[int | None] = [None] * len(answers)
        ref_tokens = None
        if self.reference is not None:
            with self.reference.active(self.model_wrapped, gen.ds3_gather_for_generation) as reference:
                if lsp.self_reward:
                    judge_prompts = [
                        self._chat_prompt(judge_request(lsp.judge_prompt, query_texts[i // g], answer))
                        for i, answer in enumerate(answer_texts)
                    ]
                    verdicts = generate_responses(
                        reference,
                        judge_prompts,
                        max_new_tokens=lsp.judge_max_new_tokens,
                        do_sample=False,
                        temperature=1.0,
                        top_p=1.0,
                        seed=seed + 2,
                        **common,
                    )
                    scores = [parse_judge_score(self._decode(tokens), lsp.judge_max_score) for tokens, _ in verdicts]
                if lsp.kl_beta > 0:
                    ref_tokens = score_response_tokens(
                        reference,
                        challenger_prompts + solver_prompts,
                        [t for t, _ in queries] + [t for t, _ in answers],
                        pad_token_id=self.pad_token_id,
                        batch_size=gen.batch_size,
                    )

        # Rewards of the answers to valid queries only.
        rewarded = [i for i, ok in enumerate(answer_valid) if ok]
        rewards = torch.tensor(
            task_rewards(
                self.reward_funcs,
                self.reward_model,
                self.reward_weights,
                [query_texts[i // g] for i in range(len(answers))],
                answer_texts,
                answer_valid,
            )
        )
        quality = torch.tensor([float(s or 0) for s in scores]) * lsp.self_reward_weight
        if not lsp.self_reward:
            quality.zero_()
        valid_t = torch.tensor(valid)

        # Advantages, game by game.
        solver_adv, challenger_adv, challenger_rewards, zero_std = [], [], [], 0
        for k in range(len(games)):
            r = rewards[k * n * g : (k + 1) * n * g].view(n, g)
            q = quality[k * n * g : (k + 1) * n * g].view(n, g)
            v = valid_t[k * n : (k + 1) * n]
            a_sol, a_ch, c = lsp_advantages(r, q, v)
            solver_adv.append(a_sol.flatten())
            challenger_adv.append(a_ch)
            challenger_rewards.append(c)
            zero_std += int(((r + q)[v].std(dim=1, unbiased=False) == 0).sum())
        solver_adv = torch.cat(solver_adv)
        challenger_adv = torch.cat(challenger_adv)
        challenger_rewards = torch.cat(challenger_rewards)

        # The training batch: every challenger row, then the solver rows of valid queries.
        rows = list(range(len(queries))) + [len(queries) + i for i in rewarded]
        prompts = challenger_prompts + solver_prompts
        responses = [t for t, _ in queries] + [t for t, _ in answers]
        batch = pad_sequences([prompts[i] for i in rows], [responses[i] for i in rows], self.pad_token_id)
        batch["advantages"] = torch.cat([challenger_adv, solver_adv[rewarded]])
        batch["is_solver"] = torch.tensor([i >= len(queries) for i in rows])
        if ref_tokens is not None:
            ref = torch.zeros(batch["labels"].shape[0], batch["labels"].shape[1] - 1)
            mask = batch["labels"][:, 1:] != -100
            for row, i in enumerate(rows):
                ref[row][mask[row]] = ref_tokens[i]
            batch["ref_logps"] = ref

        parsed = [s for s, ok in zip(scores, answer_valid) if ok]
        n_valid = len(rewarded)
        self._rollout_stats = torch.tensor(
            [
                len(queries),  # queries
                n_valid,  # rewarded answers
                float(rewards[rewarded].sum()),
                float(challenger_rewards.sum()),
                float(sum(s or 0 for s in parsed)) if lsp.self_reward else 0.0,
                float(sum(s is None for s in parsed)) if lsp.self_reward else 0.0,
                float(sum(len(t) for t, _ in queries)),
                float(sum(len(answers[i][0]) for i in rewarded)),
                float(sum(answers[i][1] for i in rewarded)),
                float(zero_std),
                float(sum(valid)),  # valid queries = solver groups
                float(len(queries) - sum(valid)),
                float(sum(len(set(query_texts[k * n : (k + 1) * n])) for k in range(len(games)))),
            ],
            dtype=torch.float64,
        )
        if self.accelerator.is_main_process:
            self._samples = [
                {
                    "seed": self.game_seeds[games[q // n]] or None,
                    "query": query_texts[q],
                    "degenerate": not valid[q],
                    "challenger_reward": float(challenger_rewards[q]),
                    "answers": [
                        {
                            "answer": answer_texts[i],
                            "reward": float(rewards[i]),
                            "self_reward": scores[i] if lsp.self_reward else None,
                        }
                        for i in range(q * g, (q + 1) * g)
                    ]
                    if valid[q]
                    else [],
                }
                for q in range(min(len(queries), SAMPLES_PER_LOG))
            ]
        return batch

    # -- loss ------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lsp = self.selfplay_config.lsp
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        logps, mask = token_logps(outputs.logits, inputs["labels"])
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
        self._store_lsp_metrics(losses, kl_sum, int(inputs["labels"].shape[0]))
        return (loss, outputs) if return_outputs else loss

    # -- metrics and samples ---------------------------------------------------

    def _store_lsp_metrics(self, losses, kl_sum: float, rows: int) -> None:
        """Sums over this rank's rollout, reduced over ranks, then averaged."""
        stats = self._rollout_stats
        extra = torch.tensor(
            [float(losses["solver"].detach()), float(losses["challenger"].detach()), kl_sum, rows], dtype=torch.float64
        )
        sums = torch.cat([stats, extra]).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        (queries, answers, reward, ch_reward, quality, parse_fail, q_len, a_len, a_trunc, zero_std, groups,
         degenerate, distinct, solver_loss, challenger_loss, kl, rows_total) = sums.tolist()
        world = self.accelerator.num_processes
        lsp = self.selfplay_config.lsp
        metrics = {
            "lsp/solver_reward": reward / max(answers, 1.0),
            "lsp/challenger_reward": ch_reward / max(queries, 1.0),
            "lsp/query_length": q_len / max(queries, 1.0),
            "lsp/answer_length": a_len / max(answers, 1.0),
            "lsp/answer_truncated_frac": a_trunc / max(answers, 1.0),
            "lsp/zero_std_frac": zero_std / max(groups, 1.0),
            "lsp/degenerate_query_frac": degenerate / max(queries, 1.0),
            "lsp/distinct_query_frac": distinct / max(queries, 1.0),
            "lsp/solver_loss": solver_loss / world,
            "lsp/challenger_loss": challenger_loss / world,
        }
        if lsp.self_reward:
            metrics["lsp/self_reward"] = quality / max(answers, 1.0)
            metrics["lsp/judge_parse_fail_frac"] = parse_fail / max(answers, 1.0)
            if answers and parse_fail == answers and not self._warned_judge:
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
            metrics["lsp/kl"] = kl / max(rows_total, 1.0)
        self.store_metrics(metrics)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._samples and self.args.should_save:
            path = os.path.join(self.args.output_dir, "selfplay", "lsp_samples.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as handle:
                handle.writelines(json.dumps({"step": self.state.global_step, **sample}) + "\n" for sample in self._samples)
        return super().log(logs, *args, **kwargs)
