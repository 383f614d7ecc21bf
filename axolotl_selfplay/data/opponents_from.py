"""`selfplay.opponents_from`: iteration 0's opponents y' from released data or an earlier export.

Read and matched before any model loads (the plugin's `load_datasets` hook and
`axolotl-selfplay check` both call `attach_supplied_opponents`), so a missing
file, an unknown layout or prompts that match no training row stop the run at
once, naming the key and the fix.

y' is always the reply's tokens as they stand inside its whole conversation, never the
reply's text tokenized on its own: SentencePiece-style tokenizers (Llama-2, Mistral
v0.1, zephyr) prefix a piece of text with "▁", so "The" after the prompt is `▁The` alone.

Two layouts are recognised by their columns:
- `spin`: the SPIN authors' released data (UCLA-AGI/SPIN_iter{t} on the hub, the
  parquet files of their convert_data.py): `real` and `generated`, each a message
  list such as [{"role": "user", ...}, {"role": "assistant", ...}]. The `generated`
  conversation is tokenized by Axolotl's own `chat_template` strategy as the training
  rows are (the first chat_template `datasets:` entry's template, `train_on_eos`,
  ...), and split by the training rows' split (split.py): the prompt is the
  conversation before its last assistant turn with the generation prompt, y' that
  turn through its end-of-turn token. A `generated` equal to `real` thus gives y' = y,
  token for token.
- `export`: this plugin's `output_dir/selfplay/iter_{t}.jsonl` (`prompt` and
  `generated`, decoded text with special tokens), e.g. to rerun an ablation against
  the same opponents without generating them again. Its `generated_ids` are used
  when they decode to `generated` with this run's tokenizer (a sample can end
  mid-character, and text does not always tokenize back into the sampled tokens);
  otherwise prompt + generated is tokenized whole and y' cut at the prompt's length.

A training row matches a source row whose prompt decodes to the same text (a
leading BOS and surrounding whitespace ignored); both are split with the
end-of-turn tokens the trainer uses (`generation_end_ids`). Duplicate prompts take the
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

from axolotl.loaders import load_tokenizer
from axolotl.prompt_strategies import load as load_prompt_strategy
from axolotl.utils.dict import DictDefault

from .. import get_logger
from .axolotl_loading import load_each_entry
from .columns import SUPPLIED_COLUMN
from .split import NoAssistantTurnError, build_examples, generation_end_ids, split_prompt_response

LOG = get_logger(__name__)

KEY = "`selfplay.opponents_from`"
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv")
LAYOUTS = (
    "the SPIN authors' released data (`real` and `generated` message lists) or an "
    "`output_dir/selfplay/iter_{t}.jsonl` export of this plugin (`prompt` and `generated` text)"
)
# The keys of a `datasets:` entry that decide how Axolotl renders and labels a conversation;
# the rest (path, field names, role names) describe the training file, not the SPIN layout.
RENDERING_KEYS = (
    "chat_template",
    "chat_template_jinja",
    "drop_system_message",
    "train_on_eos",
    "train_on_eot",
    "split_thinking",
    "template_thinking_key",
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
        tokenizer = load_tokenizer(cfg)
    entry = dict(source) if isinstance(source, dict) else {"path": str(source)}
    label = f"{KEY} ({entry.get('path')})"
    raw = _load(cfg, entry, label)
    end_ids = generation_end_ids(cfg, tokenizer)  # the trainer's split (split.py)
    layout, sources = read_source(cfg, raw, tokenizer, end_ids, label)
    prompts, _ = build_examples(meta.train_dataset, end_ids)
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
    loaded = []
    try:
        load_each_entry(cfg, [entry], lambda _c, raw, _t, _tok: loaded.append(raw), tokenize=False)
    except Exception as error:  # noqa: BLE001 - Axolotl's loader raises many kinds
        raise ValueError(
            f"{label}: cannot load it ({error}). Give a jsonl / json / parquet file, a directory, or a "
            "`datasets:`-style entry (`path`, and `split` / `data_files` where needed)."
        ) from None
    return loaded[0]


def read_source(cfg, raw, tokenizer, end_ids, label: str) -> tuple[str, list[tuple[str, list[int]]]]:
    """(layout, [(prompt key, y' token ids)] in source order) of a loaded source."""
    columns = set(raw.column_names)
    first = raw[0]["generated"] if "generated" in columns and len(raw) else None
    if {"real", "generated"} <= columns and isinstance(first, list):  # message lists
        return "spin", _SpinLayout(cfg, tokenizer, end_ids, label).rows(raw)
    if {"prompt", "generated"} <= columns:  # text (our exports have `real` text too)
        ids = raw["generated_ids"] if "generated_ids" in columns else [None] * len(raw)
        rows = []
        for i, (prompt, generated, tokens) in enumerate(zip(raw["prompt"], raw["generated"], ids)):
            if not isinstance(prompt, str) or not isinstance(generated, str):
                raise ValueError(f"{label} row {i}: `prompt` and `generated` must be text, as in {LAYOUTS}.")
            # An export's exact tokens, if this tokenizer reads them as the same text: text
            # does not always tokenize back into the sampled tokens.
            if not tokens or tokenizer.decode(tokens, skip_special_tokens=False) != generated:
                tokens = _cut_from_whole(prompt, generated, tokenizer, label, i)
            rows.append((_key(prompt, tokenizer), list(tokens)))
        return "export", rows
    raise ValueError(
        f"{label} has columns {', '.join(sorted(columns))}: expected {LAYOUTS}. Point it at such a file, or "
        "remove `selfplay.opponents_from`."
    )


class _SpinLayout:
    """The SPIN layout's `generated` conversations, tokenized by Axolotl's `chat_template`
    strategy as it tokenized the training rows (the first chat_template `datasets:` entry's
    rendering and labelling keys) and split by the training rows' split."""

    def __init__(self, cfg, tokenizer, end_ids, label: str):
        entries = [d for d in cfg.get("datasets") or [] if str(d.get("type") or "").startswith("chat_template")]
        rendering = {key: entries[0].get(key) for key in RENDERING_KEYS if entries and entries[0].get(key) is not None}
        dataset_config = {
            **rendering,
            "type": "chat_template",
            "field_messages": "generated",
            "message_property_mappings": {"role": "role", "content": "content"},
            "roles_to_train": ["assistant"],
        }
        try:
            self.strategy = load_prompt_strategy("chat_template", tokenizer, cfg, DictDefault(dataset_config))
        except Exception as error:  # noqa: BLE001 - no usable chat template, in Axolotl's words
            raise ValueError(
                f"{label}: its conversations are rendered with the chat template, which Axolotl cannot load "
                f"({error}). Set `chat_template:` (e.g. `chat_template: tokenizer_default`)."
            ) from None
        self.tokenizer, self.end_ids, self.label = tokenizer, end_ids, label
        # Axolotl's `dataset_num_proc` (default: the CPU count); `dataset_processes` is its old name
        self.processes = int(cfg.get("dataset_num_proc") or cfg.get("dataset_processes") or 1)

    def rows(self, raw) -> list[tuple[str, list[int]]]:
        """(prompt key, y') of every row, in order: y' is the reply's tokens inside its whole conversation."""
        for index, messages in enumerate(raw["generated"]):
            self._check_form(messages, index)
        # Axolotl's strategy is slower than plain tokenization: in parallel, as Axolotl tokenizes
        # the training rows (`dataset_num_proc`), for sources such as SPIN_iter0's 50k rows.
        processes = min(self.processes, len(raw) // 2000)
        tokenized = raw.select_columns(["generated"]).map(
            self._tokenize,
            remove_columns=["generated"],
            num_proc=processes if processes > 1 else None,
            keep_in_memory=True,
            load_from_cache_file=False,
        )
        return [self._split(row, index) for index, row in enumerate(tokenized)]

    def _check_form(self, messages, index: int) -> None:
        well_formed = (
            isinstance(messages, list)
            and len(messages) >= 2
            and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
            and messages[-1]["role"] == "assistant"
        )
        if not well_formed:
            raise ValueError(
                f"{self.label} row {index}: `generated` must be a message list ending with the assistant's reply "
                "([{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}]), "
                f"got {messages!r:.200}."
            )

    def _tokenize(self, row: dict) -> dict:
        """Axolotl's input_ids and labels of one conversation; the template's error, if it rejects it,
        travels back as text so that the error names the row."""
        messages = [{"role": m["role"], "content": m["content"]} for m in row["generated"]]
        try:
            tokenized = self.strategy.tokenize_prompt({"generated": messages})
        except Exception as error:  # noqa: BLE001 - the chat template's own error (jinja2)
            return {"input_ids": [], "labels": [], "error": str(error)}
        return {"input_ids": list(tokenized["input_ids"]), "labels": list(tokenized["labels"]), "error": ""}

    def _split(self, row: dict, index: int) -> tuple[str, list[int]]:
        if row["error"]:
            raise ValueError(
                f"{self.label} row {index}: the chat template rejects this conversation ({row['error']}). Set "
                "`chat_template:` to the template of the data, or drop the row."
            )
        try:
            prompt, reply = split_prompt_response(row["input_ids"], row["labels"], self.end_ids)
        except NoAssistantTurnError:
            prompt = []
        if not prompt:
            raise ValueError(
                f"{self.label} row {index}: the chat template does not render the conversation as a prompt "
                "followed by the assistant's reply, so the reply cannot be cut out. Set `chat_template:` to the "
                "template of the data."
            )
        return _key(self.tokenizer.decode(prompt, skip_special_tokens=False), self.tokenizer), reply


def _cut_from_whole(prompt: str, generated: str, tokenizer, label: str, index: int) -> list[int]:
    """y' of an export row without usable `generated_ids`: prompt + generated tokenized as one
    text (as the sampled reply stood after its prompt), cut at the prompt's length."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + generated, add_special_tokens=False)["input_ids"]
    if whole[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            f"{label} row {index}: this tokenizer joins the end of `prompt` and the start of `generated` into "
            "other tokens, so the reply cannot be cut out of the conversation. Keep the row's `generated_ids` "
            "(every export of this plugin has them; they are used when they decode to `generated` with this "
            "run's tokenizer), or drop the row."
        )
    return whole[len(prompt_ids) :]


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
