"""LSP's rollout: one micro-step of Language Self-Play games, as plain data (no gradients).

`LSPRollout(model, seeds, seed, weights_version)` plays one game per seed text:
1. Challenger: N queries q_i ~ π_θ(· | challenger prompt);
2. Solver: G answers a_ij ~ π_θ(· | q_i) per query;
3. reference model θ_0: the judge's verdict on every (q_i, a_ij) (greedy) and the
   per-token log-probs of every query and answer (for the KL);
4. rewards: task rewards (reward functions, reward model) and the self-reward;
5. group-relative advantages for both roles (losses.lsp_advantages).

It returns `Games`; the trainer turns them into a training batch
(`Games.training_batch`) and metric sums by name (`Games.statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.models import unwrap_model_for_generation

from ..batching import IGNORE_INDEX, pad_sequences
from ..config import SEED_SLOT
from ..distributed import sharded_generation
from ..losses import lsp_advantages
from ..sampling.hf import generate_responses
from ..sampling.sampler import Sampler
from ..sampling.spec import SamplingSpec
from ..scoring.logprobs import score_response_tokens
from .rewards import judge_request, parse_judge_score, task_rewards


@dataclass
class Games:
    """One micro-step's games on this rank. Lists are game-major: N queries per game,
    G answers per query."""

    seeds: list[str]  # each game's seed text ("" without seed data)
    num_queries: int  # N
    num_answers: int  # G
    challenger_prompts: list[list[int]]  # one per query (its game's prompt)
    queries: list[tuple[list[int], bool]]  # (tokens, truncated)
    query_texts: list[str]
    valid: list[bool]  # False: degenerate query (empty, or no end of turn)
    solver_prompts: list[list[int]]  # one per answer (its query as a user turn)
    answers: list[tuple[list[int], bool]]
    answer_texts: list[str]
    judge_scores: list[int | None]  # per answer; None: not judged or no valid `Score: <k>`
    rewards: torch.Tensor  # (answers,) task reward R, 0 for answers to degenerate queries
    quality: torch.Tensor  # (answers,) weighted self-reward R_Q (zeros for LSP-Zero)
    solver_advantages: torch.Tensor  # (answers,)
    challenger_advantages: torch.Tensor  # (queries,)
    challenger_rewards: torch.Tensor  # (queries,)
    zero_std_groups: int  # valid queries whose G answers all got the same reward
    reference_logps: list[torch.Tensor] | None  # per query then per answer: θ_0's per-token log-probs

    @property
    def answer_valid(self) -> list[bool]:
        return [self.valid[i // self.num_answers] for i in range(len(self.answers))]

    def training_batch(self, pad_token_id: int) -> dict[str, torch.Tensor]:
        """Every challenger row, then the solver rows of valid queries, right-padded,
        with their advantages, role and (with a KL) θ_0's per-token log-probs."""
        rewarded = [i for i, ok in enumerate(self.answer_valid) if ok]
        rows = list(range(len(self.queries))) + [len(self.queries) + i for i in rewarded]
        prompts = self.challenger_prompts + self.solver_prompts
        responses = [t for t, _ in self.queries] + [t for t, _ in self.answers]
        batch = pad_sequences([prompts[i] for i in rows], [responses[i] for i in rows], pad_token_id)
        batch["advantages"] = torch.cat([self.challenger_advantages, self.solver_advantages[rewarded]])
        batch["is_solver"] = torch.tensor([i >= len(self.queries) for i in rows])
        if self.reference_logps is not None:
            ref = torch.zeros(batch["labels"].shape[0], batch["labels"].shape[1] - 1)
            mask = batch["labels"][:, 1:] != IGNORE_INDEX
            for row, i in enumerate(rows):
                ref[row][mask[row]] = self.reference_logps[i]
            batch["ref_logps"] = ref
        return batch

    def statistics(self, self_reward: bool) -> dict[str, float]:
        """Sums over this rank's games for the `lsp/*` metrics, by name (the trainer sums
        them over ranks)."""
        n = self.num_queries
        rewarded = [i for i, ok in enumerate(self.answer_valid) if ok]
        parsed = [self.judge_scores[i] for i in rewarded]
        games = len(self.queries) // n
        return {
            "queries": float(len(self.queries)),
            "answers": float(len(rewarded)),  # answers to valid queries: the rewarded ones
            "reward": float(self.rewards[rewarded].sum()),
            "challenger_reward": float(self.challenger_rewards.sum()),
            "quality": float(sum(s or 0 for s in parsed)) if self_reward else 0.0,
            "parse_fail": float(sum(s is None for s in parsed)) if self_reward else 0.0,
            "query_tokens": float(sum(len(t) for t, _ in self.queries)),
            "answer_tokens": float(sum(len(self.answers[i][0]) for i in rewarded)),
            "answers_truncated": float(sum(self.answers[i][1] for i in rewarded)),
            "zero_std": float(self.zero_std_groups),
            "groups": float(sum(self.valid)),
            "degenerate": float(len(self.queries) - sum(self.valid)),
            "distinct": float(sum(len(set(self.query_texts[k * n : (k + 1) * n])) for k in range(games))),
        }

    def samples(self, limit: int, self_reward: bool) -> list[dict]:
        """The first `limit` queries with their answers and rewards, for lsp_samples.jsonl."""
        g = self.num_answers
        return [
            {
                "seed": self.seeds[q // self.num_queries] or None,
                "query": self.query_texts[q],
                "degenerate": not self.valid[q],
                "challenger_reward": float(self.challenger_rewards[q]),
                "answers": [
                    {
                        "answer": self.answer_texts[i],
                        "reward": float(self.rewards[i]),
                        "self_reward": self.judge_scores[i] if self_reward else None,
                    }
                    for i in range(q * g, (q + 1) * g)
                ]
                if self.valid[q]
                else [],
            }
            for q in range(min(len(self.queries), limit))
        ]


def chat_prompt(tokenizer, text: str, template_kwargs: dict | None = None) -> list[int]:
    """`text` as a user turn followed by the generation prompt, tokenized as Axolotl's SFT rows
    are (apply_chat_template's tokenization: no special tokens added). A BOS stands where the
    template renders one, and only there: Llama-3's and Mistral's templates write it, zephyr's
    does not (and neither do its SFT rows), though each tokenizer adds one to plain text.
    `template_kwargs`: Axolotl's `chat_template_kwargs` (e.g. Qwen3's `enable_thinking: false`),
    which its SFT rows are rendered with too."""
    messages = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


class LSPRollout:
    def __init__(
        self,
        *,
        tokenizer,
        sampler: Sampler,
        lsp,
        generation,
        accelerator,
        reference=None,
        reward_funcs=(),
        reward_model=None,
        reward_weights=(),
        chat_template_kwargs=None,
    ):
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.sampler = sampler
        self.lsp = lsp
        self.gather = generation.ds3_gather_for_generation
        self.query_spec = SamplingSpec.from_config(generation, max_new_tokens=lsp.max_query_tokens)
        self.answer_spec = SamplingSpec.from_config(generation)
        self.judge_spec = SamplingSpec.greedy(lsp.judge_max_new_tokens)
        self.batch_size = generation.batch_size
        self.accelerator = accelerator
        self.reference = reference
        self.reward_funcs = list(reward_funcs)
        self.reward_model = reward_model
        self.reward_weights = list(reward_weights)

    def chat_prompt(self, text: str) -> list[int]:
        return chat_prompt(self.tokenizer, text, self.chat_template_kwargs)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @torch.no_grad()
    def __call__(self, model_wrapped, seeds: list[str], seed: int, weights_version, trainer_state=None) -> Games:
        """Play one game per seed text. `seed` seeds this call's sampling;
        `weights_version` (the optimizer step) decides when the vLLM server needs
        the policy's weights again; `trainer_state` is passed to the reward
        functions, as TRL's GRPOTrainer passes its `TrainerState`."""
        lsp = self.lsp
        n, g = lsp.num_queries, lsp.num_answers
        # ZeRO-3 with sharded weights: every generate is a collective (same counts on all ranks).
        lockstep = sharded_generation(self.accelerator, model_wrapped, self.gather)
        game_prompts = [self.chat_prompt(lsp.challenger_prompt.replace(SEED_SLOT, text)) for text in seeds]

        queries, query_texts, query_prompts, answers = self._sample(
            model_wrapped, game_prompts, seed, weights_version, lockstep
        )
        valid = [not truncated and bool(text) for (_, truncated), text in zip(queries, query_texts)]
        answer_texts = [self.decode(tokens) for tokens, _ in answers]
        challenger_prompts = [prompt for prompt in game_prompts for _ in range(n)]
        solver_prompts = [prompt for prompt in query_prompts for _ in range(g)]
        answer_valid = [valid[i // g] for i in range(len(answers))]

        judge_scores: list[int | None] = [None] * len(answers)
        reference_logps = None
        if self.reference is not None:
            with self.reference.active(model_wrapped, self.gather) as reference:
                if lsp.self_reward:
                    judge_scores = self._judge(reference, query_texts, answer_texts, seed + 2, lockstep)
                if lsp.kl_beta > 0:
                    reference_logps = score_response_tokens(
                        reference,
                        challenger_prompts + solver_prompts,
                        [t for t, _ in queries] + [t for t, _ in answers],
                        pad_token_id=self.sampler.pad_token_id,
                        batch_size=self.batch_size,
                    )

        # Task rewards of the answers to valid queries only.
        rewards = torch.tensor(
            task_rewards(
                self.reward_funcs,
                self.reward_model,
                self.reward_weights,
                [query_texts[i // g] for i in range(len(answers))],
                answer_texts,
                answer_valid,
                completion_ids=[tokens for tokens, _ in answers],
                trainer_state=trainer_state,
            )
        )
        quality = torch.tensor([float(s or 0) for s in judge_scores]) * lsp.self_reward_weight
        if not lsp.self_reward:
            quality.zero_()

        # Advantages, game by game.
        valid_t = torch.tensor(valid)
        solver_adv, challenger_adv, challenger_rewards, zero_std = [], [], [], 0
        for k in range(len(seeds)):
            r = rewards[k * n * g : (k + 1) * n * g].view(n, g)
            q = quality[k * n * g : (k + 1) * n * g].view(n, g)
            v = valid_t[k * n : (k + 1) * n]
            a_sol, a_ch, c = lsp_advantages(r, q, v)
            solver_adv.append(a_sol.flatten())
            challenger_adv.append(a_ch)
            challenger_rewards.append(c)
            zero_std += int(((r + q)[v].std(dim=1, unbiased=False) == 0).sum())

        return Games(
            seeds=list(seeds),
            num_queries=n,
            num_answers=g,
            challenger_prompts=challenger_prompts,
            queries=queries,
            query_texts=query_texts,
            valid=valid,
            solver_prompts=solver_prompts,
            answers=answers,
            answer_texts=answer_texts,
            judge_scores=judge_scores,
            rewards=rewards,
            quality=quality,
            solver_advantages=torch.cat(solver_adv),
            challenger_advantages=torch.cat(challenger_adv),
            challenger_rewards=torch.cat(challenger_rewards),
            zero_std_groups=zero_std,
            reference_logps=reference_logps,
        )

    def _sample(self, model_wrapped, game_prompts, seed, weights_version, lockstep):
        """N queries per game, then G answers per query, from the current policy."""
        n, g = self.lsp.num_queries, self.lsp.num_answers
        common = {"seed": seed, "synced_gpus": lockstep}
        if self.sampler.on_server:
            # The server samples both roles with this optimizer step's weights (pushed
            # once per step: the micro-steps of one accumulated step share them).
            with unwrap_model_for_generation(model_wrapped, self.accelerator) as policy:
                self.sampler.sync_weights(policy, version=weights_version)
        with unwrap_model_for_generation(
            model_wrapped, self.accelerator, gather_deepspeed3_params=self.gather
        ) as policy:
            queries = self.sampler.sample(policy, game_prompts, self.query_spec, n=n, **common)
            query_texts = [self.decode(tokens) for tokens, _ in queries]
            query_prompts = [self.chat_prompt(text) for text in query_texts]
            common["seed"] = seed + 1
            answers = self.sampler.sample(policy, query_prompts, self.answer_spec, n=g, **common)
        return queries, query_texts, query_prompts, answers

    def _judge(self, reference, query_texts, answer_texts, seed, lockstep) -> list[int | None]:
        """The reference model's greedy verdict on every (query, answer)."""
        g = self.lsp.num_answers
        prompts = [
            self.chat_prompt(judge_request(self.lsp.judge_prompt, query_texts[i // g], answer))
            for i, answer in enumerate(answer_texts)
        ]
        verdicts = generate_responses(
            reference,
            prompts,
            spec=self.judge_spec,
            pad_token_id=self.sampler.pad_token_id,
            eos_token_ids=self.sampler.eos_token_ids,
            batch_size=self.batch_size,
            seed=seed,
            synced_gpus=lockstep,
        )
        return [parse_judge_score(self.decode(tokens), self.lsp.judge_max_score) for tokens, _ in verdicts]
