"""The one prompt/response split: Axolotl's tokenized chat SFT rows as (prompt x, real response y).

Axolotl's `chat_template` pipeline hands the trainer rows of `input_ids` and
`labels` with everything but the trained assistant turns masked to -100. The
real response y is the LAST contiguous labelled span (the final assistant turn,
including its end-of-turn token with `train_on_eos: turn`); everything before it
is the prompt x. Earlier assistant turns of a multi-turn conversation thus stay
in the prompt, and x ends exactly where the chat template's generation prompt
ends, so generation and training see the same template.

y must end exactly as a generated y' does: at the first end-of-turn token
(generation stops there). Which tokens Axolotl labels around the end of a turn
depends on the family's template and on `train_on_eos` / `eot_tokens`, so
`response_span` aligns y to the end-of-turn tokens:
- Gemma ends a turn with `<end_of_turn>`, not its EOS token `<eos>`: without
  `eot_tokens` Axolotl leaves `<end_of_turn>` unlabelled, and y must still end with it.
- Phi-3's template puts its EOS token after the turn's `<|end|>` and a newline; with
  `train_on_eos: turn` that lone EOS is the last labelled span, and taken alone it
  would make the whole answer part of the prompt.

Every split of a tokenized row goes through `response_span` with the same end-of-turn
tokens, so the row checks (rows.py), `opponents_from`'s prompt matching, `check`'s
summary and the trainer's OpponentStore all see the same prompt and the same y. Before
the model loads they come from the checkpoint's files (`generation_end_ids`), in the
trainer from the loaded model (`end_of_turn_ids` of its `generation_config`): the same
set, as transformers builds the model's generation config from those files.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from transformers import GenerationConfig

from ..batching import IGNORE_INDEX


class NoAssistantTurnError(ValueError):
    """A dataset row has no trainable (assistant) tokens to use as the real response."""


def end_of_turn_ids(tokenizer, generation_config) -> set[int]:
    """Tokens that end a response: the tokenizer's EOS and the generation config's EOS ids
    (the loaded model's `generation_config`, or `checkpoint_generation_config` before it loads)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    ids.discard(None)
    return ids


def checkpoint_generation_config(cfg) -> GenerationConfig | None:
    """The generation config transformers gives `base_model` when it loads it, without loading
    it: its generation_config.json, else one made from its config.json (transformers' own
    fallback, `GenerationMixin.adjust_generation_fn`; Llama-3's config.json lists three EOS
    ids). None when neither is readable."""
    path = str(cfg.get("base_model"))
    revision = {"revision": cfg["revision_of_model"]} if cfg.get("revision_of_model") else {}
    try:
        return GenerationConfig.from_pretrained(path, **revision)
    except OSError:  # no generation_config.json
        pass
    except ValueError:
        return None
    try:
        return GenerationConfig.from_pretrained(
            path, config_file_name="config.json", _from_model_config=True, **revision
        )
    except (OSError, ValueError):  # not reachable (offline), or not a checkpoint
        return None


def generation_end_ids(cfg, tokenizer) -> set[int]:
    """`end_of_turn_ids` before the model loads: the set the trainer will find on the loaded model."""
    return end_of_turn_ids(tokenizer, checkpoint_generation_config(cfg))


# Axolotl labels an end-of-turn/EOS token found up to this many tokens after a turn's
# content (template padding, e.g. "\n"); the same tolerance links y to its end token.
END_OF_TURN_GAP = 3


def labelled_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of labelled positions, in order."""
    spans, start = [], None
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, position))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans


def response_span(input_ids: Sequence[int], labels: Sequence[int], end_ids: Collection[int]) -> tuple[int, int] | None:
    """[start, end) of the real response y: the last labelled span, aligned to `end_ids`
    (the tokens generation stops at; empty: not aligned). A last span made only of end tokens a
    few tokens after the content (Phi-3's conversation-final EOS) joins the content
    before it, and y ends right after its first end token, even an unlabelled one right
    after the span (Gemma's `<end_of_turn>` without `eot_tokens`). None when no token
    is labelled."""
    spans = labelled_spans(labels)
    if not spans:
        return None
    start, end = spans[-1]
    if end_ids:
        only_end_tokens = all(t in end_ids for t in input_ids[start:end])
        if only_end_tokens and len(spans) > 1 and start - spans[-2][1] <= END_OF_TURN_GAP:
            start = spans[-2][0]
        for position in range(start, min(end + END_OF_TURN_GAP, len(input_ids))):
            if input_ids[position] in end_ids:
                end = position + 1
                break
    return start, end


def split_prompt_response(
    input_ids: Sequence[int], labels: Sequence[int], end_ids: Collection[int]
) -> tuple[list[int], list[int]]:
    """Split one tokenized row at its real response (`response_span`).

    Returns (prompt_ids, response_ids). An unlabelled tail after the span (e.g.
    the newline a template puts after the end-of-turn token) is dropped.
    Raises NoAssistantTurnError when no token is labelled.
    """
    span = response_span(input_ids, labels, end_ids)
    if span is None:
        raise NoAssistantTurnError("row has no labelled tokens")
    start, end = span
    return list(input_ids[:start]), list(input_ids[start:end])


def build_examples(dataset, end_ids: Collection[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and real responses of every row of a tokenized training dataset
    (anything with `input_ids` and `labels` columns: a `datasets.Dataset` or a dict),
    responses aligned to the end-of-turn tokens `end_ids` (see response_span).

    Raises NoAssistantTurnError naming the first row without an assistant turn
    and the fix, so the user learns it before any training step.
    """
    prompts, reals = [], []
    for _, prompt, real in iter_examples(dataset, end_ids):
        prompts.append(prompt)
        reals.append(real)
    return prompts, reals


def iter_examples(dataset, end_ids: Collection[int], block: int = 1024):
    """(row index, prompt, real response) of every row, read `block` rows at a time (an
    Arrow dataset is never turned into Python lists all at once); errors as `build_examples`."""
    total = len(dataset["input_ids"]) if isinstance(dataset, dict) else len(dataset)
    for start in range(0, total, block):
        rows = dataset[start : start + block] if not isinstance(dataset, dict) else {
            key: dataset[key][start : start + block] for key in ("input_ids", "labels")
        }
        for offset, (input_ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
            yield (start + offset, *_split_row(start + offset, input_ids, labels, end_ids))


def _split_row(index: int, input_ids, labels, end_ids: Collection[int]) -> tuple[list[int], list[int]]:
    try:
        prompt, real = split_prompt_response(input_ids, labels, end_ids)
    except NoAssistantTurnError:
        raise NoAssistantTurnError(
            f"training row {index} has no assistant response to learn from (all of "
            "its labels are masked). Self-play needs every conversation to END with "
            "an assistant turn, and that turn must be trained: check `field_messages`, "
            "`message_property_mappings` and `roles_to_train: [assistant]` in "
            "`datasets:`, and drop conversations without an assistant reply."
        ) from None
    if not prompt:
        raise NoAssistantTurnError(
            f"training row {index} has no prompt before its assistant response. "
            "Self-play generates the opponent response from the prompt: every "
            "conversation needs at least one user turn before the last assistant turn."
        )
    return prompt, real


def missing_end_of_turn_warning(store, eos_token_ids: set[int], sequence_len: int | None) -> str | None:
    """Why real responses lack the end-of-turn token y' ends with, if any do (from the
    OpponentStore's per-example lengths and last tokens, which every rank holds).

    A row filling `sequence_len` exactly was cut there (`excess_length_strategy:
    truncate`); any other reply lacks it because its end of turn is not trained."""
    last_tokens = store.real_last_tokens
    missing = [i for i, last in enumerate(last_tokens) if last not in eos_token_ids]
    if not missing:
        return None
    cut = [i for i in missing if sequence_len and store.prompt_lengths[i] + store.real_lengths[i] >= sequence_len]
    untrained = sorted(set(missing) - set(cut))
    parts = []
    if cut:
        parts.append(
            f"{len(cut)} real responses were cut at sequence_len {sequence_len} by `excess_length_strategy: "
            "truncate` and end mid-reply while the opponent's replies end their turn: raise `sequence_len`, "
            "or set `excess_length_strategy: drop` to skip such rows"
        )
    if untrained:
        seen = sorted({last_tokens[i] for i in untrained})[:5]
        parts.append(
            f"{len(untrained)} real responses do not end with an end-of-turn token {sorted(eos_token_ids)} "
            f"(last tokens seen: {seen}): set `train_on_eos: turn` in `datasets:` so that y and y' "
            "both end the turn the same way"
        )
    return "; ".join(parts) + "."
