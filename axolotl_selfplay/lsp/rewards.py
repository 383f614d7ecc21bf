"""LSP reward sources: Python reward functions, a reward model, the self-judge.

- Reward functions are named `module.function`, like Axolotl's GRPO
  `reward_funcs`, and called the way TRL's GRPOTrainer calls them: by keyword
  only, `fn(prompts=[[{"role": "user", "content": q}]], completions=[[{"role":
  "assistant", "content": a}]], completion_ids=[answer token ids],
  queries=[q], answers=[a], trainer_state=state) -> list[float | None]`
  (`OFFERED`). A function without `**kwargs` gets only the keywords it names.
  `None` for a row means "no reward from this function" (TRL's rule).
- A reward model is a local sequence-classification checkpoint; its logit 0 for
  the (q, a) conversation, formatted with the reward model's own chat template,
  is the reward.
- The quality self-reward R_Q: the reference model answers `judge_prompt` and
  the last `Score: <k>` of its reply is parsed (`parse_judge_score`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable

import torch

from .. import get_logger

LOG = get_logger(__name__)

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)

# The keywords a reward function receives. TRL's GRPOTrainer also passes the dataset's other
# columns, `log_extra`, `log_metric` and `environments`; LSP has no dataset and no such hooks.
OFFERED = ("prompts", "completions", "completion_ids", "queries", "answers", "trainer_state")
_warned_unscored = False  # one warning per process: the rows recur every step for a domain-limited function


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
        problem = _signature_problem(fn)
        if problem:
            raise ValueError(f"{where} {problem}")
        funcs.append(fn)
    return funcs


def _signature_problem(fn: Callable) -> str | None:
    """Why TRL's keyword call cannot reach `fn` (None if it can): it must take `completions` by
    keyword (a parameter or **kwargs), and every parameter without a default must be one LSP
    passes by keyword."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None  # a builtin or C callable without a signature: let the call decide
    fix = (
        "Reward functions are called by keyword, as TRL's GRPOTrainer calls them: write "
        "`def reward(completions, **kwargs)` (completions = [[{\"role\": \"assistant\", \"content\": ...}]]); "
        f"the keywords are {', '.join(OFFERED)}."
    )
    by_keyword = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "completions" not in by_keyword and not any(p.kind == p.VAR_KEYWORD for p in params):
        return f"cannot receive `completions` by keyword. {fix}"
    for p in params:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.POSITIONAL_ONLY:
            return f"has the positional-only parameter `{p.name}`, which a keyword call cannot fill. {fix}"
        if p.name not in OFFERED:
            return (
                f"requires `{p.name}`, which `rl: lsp` does not pass: LSP has no dataset, so no dataset "
                f"columns (nor TRL's `log_extra`, `log_metric`, `environments`). Give `{p.name}` a default "
                f"or derive it from the prompt. {fix}"
            )
    return None


def call_reward_func(
    fn: Callable,
    queries: list[str],
    answers: list[str],
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state=None,
) -> list[float | None]:
    """`fn`'s reward per (query, answer): a float, or None where it gives none (TRL's rule).
    A NaN or inf is kept as it is: a broken reward stops training (guard.py) instead of being
    read as "no reward"."""
    kwargs = {
        "prompts": [[{"role": "user", "content": q}] for q in queries],
        "completions": [[{"role": "assistant", "content": a}] for a in answers],
        "completion_ids": completion_ids,
        "queries": queries,
        "answers": answers,
        "trainer_state": trainer_state,
    }
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind == p.VAR_KEYWORD for p in params):
        # TRL would fail on keywords a function does not name; LSP passes only the named ones.
        kwargs = {k: v for k, v in kwargs.items() if k in {p.name for p in params}}
    values = fn(**kwargs)
    if inspect.iscoroutine(values):
        # TRL accepts async reward functions (e.g. an LLM judge); the rollout has no event loop.
        values = asyncio.run(values)
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    if values is None or isinstance(values, str) or not hasattr(values, "__len__") or len(values) != len(queries):
        raise ValueError(
            f"reward function `{name}` returned {values!r}; expected a list of {len(queries)} numbers "
            "(or None for a row it does not score), one per completion."
        )
    rewards: list[float | None] = []
    for value in values:
        if value is None:
            rewards.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"reward function `{name}` returned non-numbers: {list(values)[:5]!r}; return a float per "
                "completion, or None where it gives no reward."
            ) from None
        rewards.append(number)
    return rewards


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
    funcs,
    reward_model,
    weights: list[float],
    queries: list[str],
    answers: list[str],
    keep: list[bool],
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state=None,
) -> list[float]:
    """R = Σ_k w_k·r_k over the reward functions, then the reward model; 0 where not `keep`.

    As in TRL (a nansum of the weighted rewards), a source that returns None for a row is
    left out of that row's sum. A kept row no source scores gets R = 0 and one warning:
    TRL marks such a row NaN and masks it out of its group; LSP's game has no such mask.
    Reward functions only see the kept pairs. The reward model scores every pair,
    so a sharded (ZeRO-3) reward model runs the same batches on every rank.
    """
    global _warned_unscored
    kept = [i for i, k in enumerate(keep) if k]
    columns: list[list[float | None]] = []
    for fn in funcs:
        column: list[float | None] = [None] * len(queries)
        if kept:
            values = call_reward_func(
                fn,
                [queries[i] for i in kept],
                [answers[i] for i in kept],
                completion_ids=[list(completion_ids[i]) for i in kept] if completion_ids is not None else None,
                trainer_state=trainer_state,
            )
            for i, value in zip(kept, values):
                column[i] = value
        columns.append(column)
    if reward_model is not None:
        columns.append(reward_model(queries, answers))
    totals: list[float] = []
    unscored = []
    for i in range(len(queries)):
        scored = [weight * column[i] for weight, column in zip(weights, columns) if column[i] is not None]
        if keep[i] and not scored:
            unscored.append(i)
        totals.append(sum(scored) if keep[i] else 0.0)
    if unscored and not _warned_unscored:
        _warned_unscored = True
        first = unscored[0]
        LOG.warning(
            "axolotl-selfplay: every reward function returned None for %d of %d answers this step; they "
            "get reward 0 (e.g. query %r, answer %r). Return a number for such answers if 0 is not what "
            "they deserve. Reported once.",
            len(unscored),
            len(kept),
            queries[first][:200],
            answers[first][:200],
        )
    return totals
