"""LSP reward sources: Python reward functions, a reward model, the self-judge.

- Reward functions are named `module.function`, like Axolotl's GRPO
  `reward_funcs`, and called the TRL way:
  `fn(prompts=[[{"role": "user", "content": q}]], completions=[[{"role":
  "assistant", "content": a}]], queries=[q], answers=[a]) -> list[float]`.
- A reward model is a local sequence-classification checkpoint; its logit 0 for
  the (q, a) conversation, formatted with the reward model's own chat template,
  is the reward.
- The quality self-reward R_Q: the reference model answers `judge_prompt` and
  the last `Score: <k>` of its reply is parsed (`parse_judge_score`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable

import torch

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def load_reward_funcs(names: list[str]) -> list[Callable]:
    """Import each `module.function`; one clear error naming the entry and the fix."""
    if os.getcwd() not in sys.path:
        # `axolotl train` is a console script: unlike the `python -m` rank processes
        # it launches, its sys.path lacks the working directory users put rewards in.
        sys.path.insert(0, os.getcwd())
    funcs = []
    for index, name in enumerate(names):
        where = f"`selfplay.lsp.reward_funcs[{index}]` = `{name}`"
        module_name, _, attr = str(name).rpartition(".")
        if not module_name or not attr:
            raise ValueError(f"{where} is not `module.function` (e.g. `my_rewards.exact_match`).")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"{where}: cannot import module `{module_name}` ({error}). Put `{module_name}.py` in "
                "the directory you run `axolotl train` from, or install it."
            ) from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"{where}: module `{module_name}` has no function `{attr}`.")
        params = inspect.signature(fn).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
            raise ValueError(f"{where} must accept (prompts, completions, **kwargs).")
        funcs.append(fn)
    return funcs


def call_reward_func(fn: Callable, queries: list[str], answers: list[str]) -> list[float]:
    prompts = [[{"role": "user", "content": q}] for q in queries]
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    kwargs = {"queries": queries, "answers": answers}
    params = inspect.signature(fn).parameters.values()
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        kwargs = {k: v for k, v in kwargs.items() if k in {p.name for p in params}}
    values = fn(prompts, completions, **kwargs)
    name = f"{fn.__module__}.{fn.__name__}"
    if values is None or len(values) != len(queries):
        raise ValueError(f"reward function `{name}` returned {values!r}; expected a list of {len(queries)} numbers")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"reward function `{name}` returned non-numbers: {list(values)[:5]!r}") from None


def judge_request(template: str, query: str, answer: str) -> str:
    """`judge_prompt` with `{query}` and `{answer}` filled in one pass (a query that
    itself contains "{answer}" must not receive the answer)."""
    values = {"query": query, "answer": answer}
    return re.sub(r"\{(query|answer)\}", lambda match: values[match.group(1)], template)


def parse_judge_score(text: str, max_score: int) -> int | None:
    """The judge's last `Score: <k>`; None when absent, fractional or outside [0, max_score]."""
    matches = _SCORE.findall(text)
    if not matches:
        return None
    value = float(matches[-1])
    if not value.is_integer() or not 0 <= value <= max_score:
        return None
    return int(value)


class RewardModel:
    """A frozen sequence-classification reward model.

    Without DeepSpeed it sits on this rank's device. With DeepSpeed it is prepared
    the way TRL prepares reward models: sharded under ZeRO-3 (it was loaded
    partitioned; every forward is then a collective, so callers score the same
    number of pairs on every rank), replicated otherwise.
    """

    def __init__(self, path: str, accelerator, dtype: torch.dtype, batch_size: int, attn_implementation=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the policy's attention implementation (flash_attention_2 on GPUs) for this model too
        model = AutoModelForSequenceClassification.from_pretrained(
            path, torch_dtype=dtype, attn_implementation=attn_implementation
        )
        model.requires_grad_(False)
        model.eval()
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
            from trl.models.utils import prepare_deepspeed

            model = prepare_deepspeed(model, accelerator)
        else:
            model = model.to(accelerator.device)
        self.model = model
        self.device = accelerator.device
        self.batch_size = batch_size

    def _text(self, query: str, answer: str) -> str:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{query}\n\n{answer}"

    @torch.no_grad()
    def __call__(self, queries: list[str], answers: list[str]) -> list[float]:
        scores: list[float] = []
        texts = [self._text(q, a) for q, a in zip(queries, answers)]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                add_special_tokens=not self.tokenizer.chat_template,
            ).to(self.device)
            scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return scores


def task_rewards(
    funcs, reward_model, weights: list[float], queries: list[str], answers: list[str], keep: list[bool]
) -> list[float]:
    """R = Σ_k w_k·r_k over the reward functions, then the reward model; 0 where not `keep`.

    Reward functions only see the kept pairs. The reward model scores every pair,
    so a sharded (ZeRO-3) reward model runs the same batches on every rank.
    """
    kept = [i for i, k in enumerate(keep) if k]
    columns = []
    for fn in funcs:
        column = [0.0] * len(queries)
        if kept:
            for i, value in zip(kept, call_reward_func(fn, [queries[i] for i in kept], [answers[i] for i in kept])):
                column[i] = value
        columns.append(column)
    if reward_model is not None:
        columns.append(reward_model(queries, answers))
    totals = [0.0] * len(queries)
    for weight, column in zip(weights, columns):
        totals = [t + weight * v for t, v in zip(totals, column)]
    return [t if k else 0.0 for t, k in zip(totals, keep)]
