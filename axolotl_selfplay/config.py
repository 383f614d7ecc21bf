"""The `selfplay:` block of an Axolotl YAML: pydantic models, defaults, validators.

Imports pydantic only, so Axolotl can merge `SelfPlayArgs` into its config schema
without pulling torch in (a plugin import failure is only a warning in Axolotl,
followed by a confusing `rl` enum error; keep this module cheap and safe).

Every error raised here names the key and says how to fix it.
"""

from __future__ import annotations

import difflib
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
        "`vllm` = a vLLM server started with `axolotl vllm-serve <this config>` (address from "
        "Axolotl's `vllm.host` / `vllm.port`). The policy's weights are pushed to the server once "
        "per SPIN iteration and before every LSP step; scoring stays on the training GPUs.",
    )
    vllm_server_timeout: float = Field(
        default=240.0,
        gt=0.0,
        description="`backend: vllm`: seconds to wait for the server when training starts.",
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
        description="Task-reward functions `module.function`, called like Axolotl's GRPO "
        "`reward_funcs`: fn(prompts, completions, **kwargs) -> list[float], prompts and "
        "completions in conversational form. The module must be importable from the "
        "directory `axolotl train` runs in.",
    )
    reward_model: str | None = Field(
        default=None,
        description="Path of a sequence-classification reward model (logit 0 is the reward), "
        "applied to the (query, answer) conversation with its own tokenizer.",
    )
    reward_weights: list[float] | None = Field(
        default=None,
        description="Weights of the task rewards: one per `reward_funcs` entry, then one for "
        "`reward_model` if set. Default: all 1. R = Σ_k w_k·r_k.",
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

    def task_weights(self) -> list[float]:
        n = len(self.reward_funcs) + (self.reward_model is not None)
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * n


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


def _deepspeed_config(value) -> dict | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.endswith(".json"):
        import json
        import os

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
