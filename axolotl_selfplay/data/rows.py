"""Every SPIN training row checked before any model loads: what is wrong, where, and the fix.

Rows are checked as Axolotl prepares them (data/spin.py calls `inspect_entry` for
each `datasets:` entry while Axolotl's loader tokenizes it, in source order), so an
error names the entry and its source row, not a row of the shuffled set:

- `check_dataset_types`: a `type:` whose rows have no prompt/response split
  (`completion`, `pretrain`) is refused before anything is loaded.
- `inspect_entry` files each row in an `EntryReport`: usable, dropped by Axolotl
  (longer than `sequence_len`, shorter than `min_sample_len`), cut by
  `excess_length_strategy: truncate`, or unusable with its cause and fix.
- `explain_template_error`: a chat template that rejects a conversation is named
  with its entry and row instead of the template's bare message.
- `check_prepared_rows`: rows loaded from Axolotl's prepared-dataset cache are scanned
  (cheap); only if one is unusable are the entries read again to name its source row.
- `dropped_rows_warning`, `cut_replies_warning`: one WARNING each.

A row is usable when its real response (data/split.py's `response_span`: the last
trained span, aligned to the end-of-turn tokens generation stops at) is the reply
to a non-empty prompt, is the conversation's last turn, is not empty, and survives
`sequence_len`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from axolotl.loaders import load_tokenizer
from axolotl.prompt_strategies import load as load_prompt_strategy

from .axolotl_loading import entry_label, load_each_entry
from .split import generation_end_ids, response_span

NO_SPLIT_TYPES = ("completion", "pretrain")  # Axolotl types that train on every token
SHOWN_ROWS = 5  # unusable or dropped rows an error or warning lists by number


class SelfPlayDataError(ValueError):
    """A `datasets:` row self-play cannot learn from; the message names the entry, row and fix."""


# -- what can be wrong with a row: (cause in plain words, the fix) -----------------------------

EMPTY_REPLY = (
    "empty assistant reply",
    "Self-play learns from the last assistant reply of each conversation: write that reply or drop the row.",
)


def _not_trained(dataset_config) -> tuple[str, str]:
    if str(dataset_config.get("type") or "").startswith("chat_template"):
        return (
            "none of its tokens is trained (all labels are masked)",
            (
                "Check `field_messages`, `message_property_mappings` and `roles_to_train: [assistant]` in "
                "that `datasets:` entry."
            ),
        )
    return (
        "empty reply: none of its tokens is trained (all labels are masked)",
        "Give the row a non-empty reply (`type: alpaca`: the `output` column) or drop it.",
    )


def _not_ending_with_reply(role) -> tuple[str, str]:
    return (
        f"the conversation does not end with an assistant turn (its last message has role {role!r})",
        (
            "Self-play learns from the LAST assistant reply of each conversation: drop or trim conversations "
            "that end with another role, or map your role names with `roles:` / `message_property_mappings` "
            "in that `datasets:` entry."
        ),
    )


def _no_split(dataset_config, cfg) -> tuple[str, str]:
    ds_type = str(dataset_config.get("type") or "")
    base = ds_type.split(":")[0]
    if base in NO_SPLIT_TYPES:
        return (
            f"`type: {base}` has no prompt/response split — use chat_template or alpaca",
            (
                "Self-play generates its own reply to each prompt and learns from the real one: give it "
                "conversations (`type: chat_template`) or instruction/output pairs (`type: alpaca`)."
            ),
        )
    if dataset_config.get("train_on_inputs") or cfg.get("train_on_inputs"):
        return (
            "every token is trained (`train_on_inputs: true`), so there is no prompt/response split",
            "Set `train_on_inputs: false`.",
        )
    return (
        (
            f"every token of the row is trained, so `type: {ds_type}` gives no prompt/response split — use "
            "chat_template or alpaca"
        ),
        "Self-play needs rows whose reply alone is trained.",
    )


def _truncated_away(sequence_len: int) -> tuple[str, str]:
    return (
        f"the response was truncated away at sequence_len {sequence_len} (the prompt alone is longer)",
        "Raise `sequence_len`, shorten the prompt, or set `excess_length_strategy: drop` to skip such rows.",
    )


def _too_long(sequence_len: int) -> tuple[str, str]:
    return (
        f"it is longer than sequence_len {sequence_len} (`excess_length_strategy: raise`)",
        "Raise `sequence_len`, or set `excess_length_strategy: drop` (skip such rows) or `truncate`.",
    )


def check_dataset_types(cfg) -> None:
    """Refuse, before loading anything, a `type:` that trains on every token."""
    for dataset_config in cfg.get("datasets") or []:
        ds_type = dataset_config.get("type")
        if isinstance(ds_type, str) and ds_type.split(":")[0] in NO_SPLIT_TYPES:
            cause, fix = _no_split(dataset_config, cfg)
            raise SelfPlayDataError(f"{entry_label(cfg, dataset_config)}: {cause}. {fix}")


# -- one entry's rows, in source order -------------------------------------------------------


@dataclass
class EntryReport:
    """What Axolotl's preparation will make of one `datasets:` entry."""

    label: str
    rows: int = 0
    prompt_lengths: list[int] = field(default_factory=list)  # usable rows, tokens after truncation
    response_lengths: list[int] = field(default_factory=list)
    dropped: dict[str, list[int]] = field(default_factory=dict)  # why Axolotl drops it -> source rows
    cut: list[int] = field(default_factory=list)  # rows whose reply `truncate` shortens
    problems: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # cause -> (fix, source rows)
    first_problem: str = ""  # the first unusable row, as "row 3 (line 4 of chat.jsonl)"

    @property
    def usable(self) -> int:
        return len(self.prompt_lengths)

    def problem(self, row: int, row_name: str, cause_and_fix: tuple[str, str]) -> None:
        cause, fix = cause_and_fix
        if not self.problems:
            self.first_problem = row_name
        self.problems.setdefault(cause, (fix, []))[1].append(row)

    def raise_if_unusable(self) -> None:
        """One error: the first unusable row with its cause and fix, then how many more."""
        if not self.problems:
            return
        (cause, (fix, rows)), *others = self.problems.items()
        message = f"{self.label} {self.first_problem}: {cause}. {fix}"
        if len(rows) > 1:
            message += f"\n{len(rows) - 1} more rows of this entry have the same problem: {_numbers(rows[1:])}."
        for cause, (_, rows) in others:
            message += f"\nAlso unusable, {cause}: {_numbers(rows)}."
        raise SelfPlayDataError(message)


def _numbers(rows: list[int]) -> str:
    """Row numbers as messages list them: rows 1, 5, 9, 12, 20 and 7 more."""
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


class _Conversations:
    """Reads raw chat rows with Axolotl's own `chat_template` strategy (its `field_messages`,
    `message_property_mappings`, `roles`, `roles_to_train`), to say what is wrong with a
    conversation in the user's terms."""

    def __init__(self, cfg, dataset_config, tokenizer):
        self.strategy = load_prompt_strategy(dataset_config.get("type"), tokenizer, cfg, dataset_config)
        self.trained_roles = set(getattr(self.strategy, "roles_to_train", None) or [])

    @staticmethod
    def applies(dataset_config, raw, tokenized) -> bool:
        # Row i of the tokenized set must be row i of the raw one (no strategy filters rows).
        return str(dataset_config.get("type") or "").startswith("chat_template") and len(raw) == len(tokenized)

    def problem(self, row: dict) -> tuple[str, str] | None:
        """Why the conversation does not end with a trained assistant reply to a prompt."""
        turns = self.strategy.get_conversation_thread(row)
        if not turns:
            return ("empty conversation", "Drop the row.")
        last = turns[-1]
        if self.trained_roles and last.get("role") not in self.trained_roles:
            return _not_ending_with_reply(last.get("role"))
        if _is_empty(last.get("content")):
            return EMPTY_REPLY
        if last.get("training") is False:
            return (
                "its last assistant turn is marked not to be trained (`training: false`)",
                "Self-play learns from the last reply of each conversation: drop the flag or the row.",
            )
        if all(turn.get("role") == "system" for turn in turns[:-1]):
            return (
                "no prompt before the assistant reply",
                (
                    "Self-play generates its own reply to each prompt: every conversation needs a user turn "
                    "before its last assistant turn."
                ),
            )
        return None


def _is_empty(content) -> bool:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return all(_is_empty(part.get("text") if isinstance(part, dict) else part) for part in content)
    return content is None or (isinstance(content, str) and not content.strip())


def _row_name(dataset_config, row: int) -> str:
    """A row as the user finds it in their data, e.g. row 3 (line 4 of chat.jsonl)."""
    weight = dataset_config.get("weight")
    if dataset_config.get("shards") or (weight is not None and weight < 1):
        return f"row {row} of the entry's `shards`/`weight` sample"
    path = Path(str(dataset_config.get("path")))
    if path.suffix == ".jsonl" and path.is_file():
        return f"row {row} (line {row + 1} of {path.name})"
    return f"row {row} (0-based)"


def explain_template_error(cfg, dataset_config, raw, tokenizer) -> None:
    """Axolotl's tokenization of an entry failed. If the chat template rejects one of its
    conversations (Mistral's and Gemma-2's refuse a system turn; many insist that user and
    assistant alternate), raise naming the entry, the row and the fix, instead of the
    template's bare message from deep inside tokenization. One row of each sequence of
    roles is rendered; returns when no conversation is to blame."""
    if not str(dataset_config.get("type") or "").startswith("chat_template"):
        return
    try:
        strategy = _Conversations(cfg, dataset_config, tokenizer).strategy
    except Exception:  # the failure lies elsewhere: let Axolotl's own error through
        return
    seen = set()
    for row, record in enumerate(raw):
        try:
            turns = strategy.get_conversation_thread(record)
        except Exception:  # a row Axolotl cannot read at all: its own error says more
            return
        roles = tuple(turn.get("role") for turn in turns)
        if roles in seen:
            continue
        seen.add(roles)
        try:
            strategy.prompter.build_prompt(turns)
        except Exception as rejection:  # jinja2's TemplateError, raised by the template itself
            hint = (
                " This template has no system role: fold the system message into the first user turn, drop it, "
                "or set `chat_template` to one that supports it."
                if "system" in roles
                else " Make user and assistant turns alternate, or set `chat_template` to one that accepts them."
            )
            raise SelfPlayDataError(
                f"{entry_label(cfg, dataset_config)} {_row_name(dataset_config, row)}: the chat template rejects "
                f"this conversation (roles {list(roles)}): {rejection}.{hint}"
            ) from None


def _has_text(tokenizer, token_ids) -> bool:
    return bool(tokenizer.decode(list(token_ids), skip_special_tokens=True).strip())


def inspect_entry(cfg, dataset_config, raw, tokenized, tokenizer) -> EntryReport:
    """Classify every row of one entry as Axolotl will prepare it for training."""
    label = entry_label(cfg, dataset_config)
    if "input_ids" not in tokenized.column_names or "labels" not in tokenized.column_names:
        raise SelfPlayDataError(
            f"{label}: Axolotl did not tokenize it into `input_ids` and `labels` "
            f"(columns: {', '.join(tokenized.column_names)}). Self-play needs SFT rows: use "
            "`type: chat_template` or `alpaca`."
        )
    inspector = _RowInspector(cfg, dataset_config, tokenizer, EntryReport(label))
    chats = (
        _Conversations(cfg, dataset_config, tokenizer)
        if _Conversations.applies(dataset_config, raw, tokenized)
        else None
    )
    raw_batches = raw.iter(batch_size=1000) if chats else None
    row = 0
    for batch in tokenized.iter(batch_size=1000):  # bounded memory on large datasets
        raw_rows = _rows_of(next(raw_batches)) if chats else None
        for i, (input_ids, labels) in enumerate(zip(batch["input_ids"], batch["labels"])):
            problem = chats.problem(raw_rows[i]) if chats else None
            inspector.inspect(row, input_ids, labels, problem)
            row += 1
    inspector.report.rows = row
    return inspector.report


def _rows_of(batch: dict) -> list[dict]:
    columns = list(batch)
    return [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]


class _RowInspector:
    """Files each row of one entry in its EntryReport: usable, dropped by Axolotl, or unusable."""

    def __init__(self, cfg, dataset_config, tokenizer, report: EntryReport):
        self.cfg, self.dataset_config, self.tokenizer, self.report = cfg, dataset_config, tokenizer, report
        # Axolotl's handle_long_seq_in_dataset (utils/data/utils.py) with its defaults
        self.sequence_len = int(cfg.get("sequence_len") or 2048)
        self.excess = (cfg.get("excess_length_strategy") or "drop").lower()
        self.min_len = cfg.get("min_sample_len") or 2
        self.end_ids = generation_end_ids(cfg, tokenizer)

    def inspect(self, row: int, input_ids, labels, conversation_problem=None) -> None:
        problem = conversation_problem or self._problem(row, input_ids, labels)
        if problem:
            self.report.problem(row, _row_name(self.dataset_config, row), problem)

    def _problem(self, row: int, input_ids, labels) -> tuple[str, str] | None:
        span = response_span(input_ids, labels, self.end_ids)
        if span is None:
            return _not_trained(self.dataset_config)
        start, end = span
        if start == 0:
            return _no_split(self.dataset_config, self.cfg)
        if end - start <= 8 and not _has_text(self.tokenizer, input_ids[start:end]):
            return EMPTY_REPLY  # only an end-of-turn token (`type: alpaca` with an empty `output`)
        return self._length_problem(row, len(input_ids), start, end)

    def _length_problem(self, row: int, length: int, start: int, end: int) -> tuple[str, str] | None:
        """What Axolotl's handle_long_seq_in_dataset will do with the row."""
        report, limit = self.report, self.sequence_len
        if length < self.min_len:
            report.dropped.setdefault(f"shorter than min_sample_len {self.min_len}", []).append(row)
            return None
        if length > limit:
            if self.excess == "raise":
                return _too_long(limit)
            if self.excess != "truncate":
                report.dropped.setdefault(f"longer than sequence_len {limit}", []).append(row)
                return None
            if start >= limit:
                return _truncated_away(limit)
            if end > limit:
                report.cut.append(row)
                end = limit
        report.prompt_lengths.append(start)
        report.response_lengths.append(end - start)
        return None


def inspect_sources(cfg, tokenizer=None) -> list[EntryReport]:
    """Read every training entry again with Axolotl's per-entry loader and inspect it
    (raises SelfPlayDataError on the first entry with an unusable row)."""
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg)
    reports: list[EntryReport] = []

    def on_entry(dataset_config, raw, tokenized, tokenizer):
        report = inspect_entry(cfg, dataset_config, raw, tokenized, tokenizer)
        report.raise_if_unusable()
        reports.append(report)

    load_each_entry(cfg, cfg.get("datasets") or [], on_entry, tokenizer=tokenizer)
    return reports


def check_prepared_rows(cfg, dataset) -> None:
    """Rows Axolotl loaded from its prepared-dataset cache (perhaps prepared by a plain SFT
    config): a quick scan, then the source entries only if a row looks unusable."""
    tokenizer = load_tokenizer(cfg)
    end_ids = generation_end_ids(cfg, tokenizer)
    unusable = suspicious = None
    index = 0
    for batch in dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1000):
        for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
            span = response_span(input_ids, labels, end_ids)
            if span is None or span[0] == 0:
                unusable = index
            elif suspicious is None and span[1] < len(input_ids) and _has_text(tokenizer, input_ids[span[1] :]):
                suspicious = index  # text after the reply: a trailing turn, or the template's own suffix
            index += 1
            if unusable is not None:
                break
        if unusable is not None:
            break
    if unusable is None and suspicious is None:
        return
    inspect_sources(cfg, tokenizer)  # raises, naming the source row
    if unusable is not None:
        raise SelfPlayDataError(
            f"row {unusable} of Axolotl's prepared dataset (in `dataset_prepared_path`) has no "
            "prompt/response split, but the `datasets:` entries it was prepared from look fine now: "
            "delete the prepared dataset and rerun."
        )


# -- warnings --------------------------------------------------------------------------------


def _where(entries_rows: list[tuple[str, list[int]]]) -> str:
    return "; ".join(f"{label} {_numbers(rows)}" for label, rows in entries_rows)


def dropped_rows_warning(entries: list[EntryReport]) -> str | None:
    reasons: dict[str, list[tuple[str, list[int]]]] = {}
    for entry in entries:
        for reason, rows in entry.dropped.items():
            reasons.setdefault(reason, []).append((entry.label, rows))
    if not reasons:
        return None
    total = sum(entry.rows for entry in entries)
    dropped = sum(len(rows) for entry in entries for rows in entry.dropped.values())
    details = "; ".join(
        f"{sum(len(r) for _, r in where)} {reason} ({_where(where)})" for reason, where in reasons.items()
    )
    return (
        f"Axolotl drops {dropped} of {total} training rows before self-play sees them: {details}. "
        "Raise `sequence_len` to keep long rows."
    )


def cut_replies_warning(entries: list[EntryReport], cfg) -> str | None:
    cut = [(entry.label, entry.cut) for entry in entries if entry.cut]
    if not cut:
        return None
    count = sum(len(rows) for _, rows in cut)
    return (
        f"{count} real replies are cut at sequence_len {cfg.get('sequence_len')} by "
        f"`excess_length_strategy: truncate` ({_where(cut)}): they end mid-reply without their end of "
        "turn while the opponent's replies end theirs. Raise `sequence_len`, or set "
        "`excess_length_strategy: drop` to skip such rows."
    )
