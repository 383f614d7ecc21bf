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

    @model_validator(mode="before")
    @classmethod
    def _no_typos(cls, data: Any) -> Any:
        _reject_unknown_keys(cls, data, "selfplay.generation")
        return data


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
    generation: SelfPlayGenerationConfig = Field(
        default_factory=SelfPlayGenerationConfig,
        description="Sampling settings for the opponent's responses.",
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
    def _chi2_keys_need_spin_chi2(self) -> "SelfPlayConfig":
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


def parse_selfplay_block(block: Any) -> SelfPlayConfig:
    """Validate a raw `selfplay:` block; one ValueError whose lines name each bad key."""
    try:
        return SelfPlayConfig.model_validate(block)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            key = ".".join(["selfplay", *(str(part) for part in item["loc"])])
            message = item["msg"].removeprefix("Value error, ")
            if message.startswith(("unknown key", "`selfplay")):
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
    def _check_compatible(self) -> "SelfPlayArgs":
        sp = self.selfplay
        if sp is None:
            return self
        fields = self.__dict__  # every field of the merged Axolotl config
        check_compatible(sp.type, fields.get)
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
        raise ValueError(
            f"`rl: {selfplay_type}` is not available in this release of axolotl-selfplay. "
            "Use `rl: spin`."
        )
    for key in ("sample_packing", "eval_sample_packing", "batch_flattening"):
        if get(key):
            raise ValueError(
                f"`{key}: true` cannot be used with `rl: {selfplay_type}`: self-play splits "
                "every example into prompt and response and generates from the prompt, "
                f"which packed rows do not allow. Set `{key}: false`."
            )
    if get("pretraining_dataset"):
        raise ValueError(
            f"`pretraining_dataset` cannot be used with `rl: {selfplay_type}`: self-play "
            "needs chat data with an assistant response. Use `datasets:` with "
            "`type: chat_template`."
        )
    if get("streaming"):
        raise ValueError(
            f"`streaming: true` cannot be used with `rl: {selfplay_type}`: every prompt is "
            "regenerated at each iteration. Set `streaming: false`."
        )


def check_num_epochs(num_epochs, iterations: int, epochs_per_iteration: int) -> None:
    total = iterations * epochs_per_iteration
    if num_epochs is not None and float(num_epochs) != float(total):
        raise ValueError(
            f"`num_epochs: {num_epochs}` disagrees with `selfplay.iterations` × "
            f"`selfplay.epochs_per_iteration` = {iterations} × {epochs_per_iteration} = "
            f"{total}. Remove `num_epochs` (the plugin sets it) or make them agree."
        )
