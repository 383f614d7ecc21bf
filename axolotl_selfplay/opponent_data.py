"""`selfplay.opponents_from`: iteration 0's opponents y' from released data or an earlier export.

Read and matched before any model loads (the plugin's `load_datasets` hook and
`axolotl-selfplay check` both call `attach_supplied_opponents`), so a missing
file, an unknown layout or prompts that match no training row stop the run at
once, naming the key and the fix.

Two layouts are recognised by their columns:
- `spin`: the SPIN authors' released data (UCLA-AGI/SPIN_iter{t} on the hub, the
  parquet files of their convert_data.py): `real` and `generated`, each a message
  list such as [{"role": "user", ...}, {"role": "assistant", ...}]. The prompt is
  `generated` without its last (assistant) message, rendered with this run's chat
  template and generation prompt; y' is that last message as the template renders
  an assistant turn.
- `export`: this plugin's `output_dir/selfplay/iter_{t}.jsonl` (`prompt` and
  `generated`, decoded text with special tokens), e.g. to rerun an ablation against
  the same opponents without generating them again. Its `generated_ids` are used
  when they decode to `generated` with this run's tokenizer (a sample can end
  mid-character, and text does not always tokenize back into the sampled tokens).

A training row matches a source row whose prompt decodes to the same text (a
leading BOS and surrounding whitespace ignored). Duplicate prompts take the
source's rows with that prompt in order (cycling when the source has fewer).
Matched rows take the source's y' as their iteration-0 opponent; the rollout
still scores it under θ_0 and cuts it at its end-of-turn token like a sampled
one. Rows without a match are generated as usual. The y' tokens travel to the
trainer as a column of the training dataset (`SUPPLIED_COLUMN`), which the
trainer removes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import get_logger

LOG = get_logger(__name__)

SUPPLIED_COLUMN = "selfplay_supplied_opponent"
KEY = "`selfplay.opponents_from`"
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")
LAYOUTS = (
    "the SPIN authors' released data (`real` and `generated` message lists) or an "
    "`output_dir/selfplay/iter_{t}.jsonl` export of this plugin (`prompt` and `generated` text)"
)


@dataclass
class SuppliedOpponents:
    """What `opponents_from` gave: one y' (token ids) or None per training row."""

    source: str  # how messages name the source
    layout: str  # "spin" or "export"
    source_rows: int
    tokens: list[list[int] | None]

    @property
    def matched(self) -> int:
        return sum(t is not None for t in self.tokens)

    def summary(self) -> str:
        unmatched = len(self.tokens) - self.matched
        return (
            f"{self.matched} of {len(self.tokens)} training rows take iteration 0's opponent from {self.source} "
            f"({self.layout} layout, {self.source_rows} rows); {unmatched} without a match are generated"
        )


def attach_supplied_opponents(cfg, meta, tokenizer=None) -> SuppliedOpponents | None:
    """Match `opponents_from` to `meta.train_dataset` and add the y' column; None when unset."""
    source = cfg.selfplay.get("opponents_from")
    if not source:
        return None
    if tokenizer is None:
        from axolotl.loaders import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    entry = dict(source) if isinstance(source, dict) else {"path": str(source)}
    label = f"{KEY} ({entry.get('path')})"
    raw = _load(cfg, entry, label)
    layout, sources = read_source(raw, tokenizer, label)
    from .data import build_examples

    prompts, _ = build_examples(meta.train_dataset)
    supplied = SuppliedOpponents(label, layout, len(raw), match(prompts, sources, tokenizer))
    if supplied.matched == 0:
        first = _key(tokenizer.decode(prompts[0], skip_special_tokens=False), tokenizer) if prompts else ""
        raise ValueError(
            f"{label}: none of its {len(raw)} prompts matches a training prompt. Rows match when the "
            "prompt is the same conversation rendered with this run's chat template; e.g. the first training "
            f"prompt is {first[-80:]!r} and the first of {KEY} is {sources[0][0][-80:]!r}. Use the same "
            "prompts (and `chat_template`) as `datasets:`, or remove `selfplay.opponents_from`."
        )
    LOG.info("self-play: %s", supplied.summary())
    meta.train_dataset = meta.train_dataset.add_column(SUPPLIED_COLUMN, supplied.tokens)
    return supplied


def _load(cfg, entry: dict, label: str):
    """The source's raw rows, through Axolotl's own loader (files, directories, hub, splits)."""
    path = str(entry.get("path") or "")
    if not path:
        raise ValueError(f"{KEY} needs a `path` (a file, a directory or a hub dataset).")
    looks_local = path.startswith((".", "/", "~")) or path.endswith(FILE_SUFFIXES)
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(
            f"{label}: no such file or directory. Give the path of a jsonl / json / parquet file or a directory "
            "(relative paths are read from where `axolotl train` runs), or a hub dataset id."
        )
    from .axolotl_data import load_each_entry

    loaded = []
    try:
        load_each_entry(cfg, [entry], lambda _c, raw, _t, _tok: loaded.append(raw), tokenize=False)
    except Exception as error:  # noqa: BLE001 - Axolotl's loader raises many kinds
        raise ValueError(
            f"{label}: cannot load it ({error}). Give a jsonl / json / parquet file, a directory, or a "
            "`datasets:`-style entry (`path`, and `split` / `data_files` where needed)."
        ) from None
    return loaded[0]


def read_source(raw, tokenizer, label: str) -> tuple[str, list[tuple[str, list[int]]]]:
    """(layout, [(prompt key, y' token ids)] in source order) of a loaded source."""
    columns = set(raw.column_names)
    first = raw[0]["generated"] if "generated" in columns and len(raw) else None
    if {"real", "generated"} <= columns and isinstance(first, list):  # message lists
        rows = [_spin_row(messages, tokenizer, label, i) for i, messages in enumerate(raw["generated"])]
        return "spin", rows
    if {"prompt", "generated"} <= columns:  # text (our exports have `real` text too)
        ids = raw["generated_ids"] if "generated_ids" in columns else [None] * len(raw)
        rows = []
        for i, (prompt, generated, tokens) in enumerate(zip(raw["prompt"], raw["generated"], ids)):
            if not isinstance(prompt, str) or not isinstance(generated, str):
                raise ValueError(f"{label} row {i}: `prompt` and `generated` must be text, as in {LAYOUTS}.")
            # An export's exact tokens, if this tokenizer reads them as the same text: text
            # does not always tokenize back into the sampled tokens.
            if not tokens or tokenizer.decode(tokens, skip_special_tokens=False) != generated:
                tokens = _tokens(generated, tokenizer)
            rows.append((_key(prompt, tokenizer), list(tokens)))
        return "export", rows
    raise ValueError(
        f"{label} has columns {', '.join(sorted(columns))}: expected {LAYOUTS}. Point it at such a file, or "
        "remove `selfplay.opponents_from`."
    )


def _spin_row(messages, tokenizer, label: str, index: int) -> tuple[str, list[int]]:
    well_formed = (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
        and messages[-1]["role"] == "assistant"
    )
    if not well_formed:
        raise ValueError(
            f"{label} row {index}: `generated` must be a message list ending with the assistant's reply "
            f"([{{'role': 'user', 'content': ...}}, {{'role': 'assistant', 'content': ...}}]), got {messages!r:.200}."
        )
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    if not whole.startswith(prompt):
        raise ValueError(
            f"{label} row {index}: the chat template does not render the conversation as its prompt followed "
            "by the reply, so the reply cannot be cut out. Set `chat_template:` to the template of the data."
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return _key(tokenizer.decode(prompt_ids, skip_special_tokens=False), tokenizer), _tokens(whole[len(prompt) :], tokenizer)


def _tokens(text: str, tokenizer) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _key(text: str, tokenizer) -> str:
    bos = tokenizer.bos_token or ""
    text = text.strip()
    return text[len(bos) :].strip() if bos and text.startswith(bos) else text


def match(prompts: list[list[int]], sources: list[tuple[str, list[int]]], tokenizer) -> list[list[int] | None]:
    """Each training prompt's y' from `sources` [(prompt key, tokens)], or None without a match."""
    by_key: dict[str, list[list[int]]] = {}
    for key, tokens in sources:
        by_key.setdefault(key, []).append(tokens)
    seen: dict[str, int] = {}
    result: list[list[int] | None] = []
    for text in tokenizer.batch_decode(prompts, skip_special_tokens=False):
        key = _key(text, tokenizer)
        candidates = by_key.get(key)
        if not candidates:
            result.append(None)
            continue
        k = seen.get(key, 0)
        seen[key] = k + 1
        result.append(list(candidates[k % len(candidates)]))
    return result


def take_supplied_opponents(dataset) -> tuple[object, dict[int, list[int]]]:
    """The trainer's side: (the dataset without the column, {row: y' tokens})."""
    if SUPPLIED_COLUMN not in dataset.column_names:
        return dataset, {}
    column = dataset[SUPPLIED_COLUMN]
    return dataset.remove_columns(SUPPLIED_COLUMN), {i: t for i, t in enumerate(column) if t is not None}
