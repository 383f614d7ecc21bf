"""Turn Axolotl's tokenized chat SFT rows into SPIN examples (prompt x, real response y).

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
`split_prompt_response` aligns y to the end-of-turn tokens when it is given them:
- Gemma ends a turn with `<end_of_turn>`, not its EOS token `<eos>`: without
  `eot_tokens` Axolotl leaves `<end_of_turn>` unlabelled, and y must still end with it.
- Phi-3's template puts its EOS token after the turn's `<|end|>` and a newline; with
  `train_on_eos: turn` that lone EOS is the last labelled span, and taken alone it
  would make the whole answer part of the prompt.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from .logprobs import IGNORE_INDEX


class NoAssistantTurnError(ValueError):
    """A dataset row has no trainable (assistant) tokens to use as the real response."""


# Axolotl labels an end-of-turn/EOS token found up to this many tokens after a turn's
# content (template padding, e.g. "\n"); the same tolerance links y to its end token.
END_OF_TURN_GAP = 3


def split_prompt_response(
    input_ids: Sequence[int], labels: Sequence[int], end_ids: Collection[int] = ()
) -> tuple[list[int], list[int]]:
    """Split one tokenized row at its last labelled span.

    Returns (prompt_ids, response_ids). An unlabelled tail after the span (e.g.
    the newline a template puts after the end-of-turn token) is dropped.
    With `end_ids` (the tokens generation stops at) the response is aligned to
    them: a last span made only of end tokens a few tokens after the content
    (Phi-3's conversation-final EOS) joins the content before it, and the
    response ends right after its first end token, even an unlabelled one right
    after the span (Gemma's `<end_of_turn>` without `eot_tokens`).
    Raises NoAssistantTurnError when no token is labelled.
    """
    spans = _labelled_spans(labels)
    if not spans:
        raise NoAssistantTurnError("row has no labelled tokens")
    start, end = spans[-1]
    if end_ids:
        only_end_tokens = all(t in end_ids for t in input_ids[start:end])
        if only_end_tokens and len(spans) > 1 and start - spans[-2][1] <= END_OF_TURN_GAP:
            start = spans[-2][0]
        for position in range(start, min(end + END_OF_TURN_GAP, len(input_ids))):
            if input_ids[position] in end_ids:
                end = position + 1
                break
    return list(input_ids[:start]), list(input_ids[start:end])


def _labelled_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
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


def build_examples(dataset, end_ids: Collection[int] = ()) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and real responses of every row of a tokenized training dataset
    (anything with `input_ids` and `labels` columns: a `datasets.Dataset` or a dict),
    responses aligned to the end-of-turn tokens `end_ids` (see split_prompt_response).

    Raises NoAssistantTurnError naming the first row without an assistant turn
    and the fix, so the user learns it before any training step.
    """
    prompts, reals = [], []
    # Whole columns at once: much faster than row access on an Arrow dataset.
    for index, (input_ids, labels) in enumerate(zip(dataset["input_ids"], dataset["labels"])):
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
        prompts.append(prompt)
        reals.append(real)
    return prompts, reals


_DEFAULT_ROLES = {"human": "user", "user": "user", "assistant": "assistant", "gpt": "assistant", "system": "system", "tool": "tool"}


def _message_fields(dataset_cfg) -> tuple[str, str, str, dict]:
    """(messages column, role key, content key, source role -> template role), as Axolotl's
    `chat_template` options read them: `field_messages`, `message_property_mappings` /
    `message_field_role` / `message_field_content`, `roles`."""
    field = dataset_cfg.get("field_messages") or "messages"
    mappings = dataset_cfg.get("message_property_mappings") or {}
    role_key = mappings.get("role") or dataset_cfg.get("message_field_role") or "role"
    content_key = mappings.get("content") or dataset_cfg.get("message_field_content") or "content"
    roles = dataset_cfg.get("roles")
    role_map = {s: t for t, sources in roles.items() for s in sources} if roles else _DEFAULT_ROLES
    return field, role_key, content_key, role_map


def check_conversations(rows, dataset_cfg, name: str) -> None:
    """Raise if a conversation does not end with a trained assistant turn.

    Axolotl silently drops rows whose labels are all masked, and a row that ends
    with a user turn would train on an earlier assistant turn; for self-play
    both mean the user's data is not what they think, so say so up front.
    Mirrors Axolotl's `chat_template` field options: `field_messages`,
    `message_property_mappings` / `message_field_role`, `roles`, `roles_to_train`.
    `rows` is a `datasets.Dataset` or a dict of columns.
    """
    field, role_key, _, role_map = _message_fields(dataset_cfg)
    trained = {role_map.get(r, r) for r in (dataset_cfg.get("roles_to_train") or ["assistant"])}
    if field not in getattr(rows, "column_names", rows):
        raise ValueError(
            f"dataset `{name}` has no `{field}` column. Set `field_messages` in that "
            "`datasets:` entry to the column holding the conversation."
        )
    for index, messages in enumerate(rows[field]):  # one column: fast on Arrow datasets
        if not messages:
            raise ValueError(f"dataset `{name}` row {index} has an empty `{field}` list.")
        last = messages[-1]
        role = role_map.get(last.get(role_key), last.get(role_key)) if isinstance(last, dict) else None
        if role not in trained:
            raise ValueError(
                f"dataset `{name}` row {index} does not end with an assistant turn (its last "
                f"message has role {role!r}). Self-play learns from the LAST assistant reply of "
                "each conversation: drop or trim conversations that end with another role, or "
                "map your role names with `roles:` / `message_property_mappings` in that "
                "`datasets:` entry."
            )
        if len(messages) < 2:
            raise ValueError(
                f"dataset `{name}` row {index} has only an assistant message and no prompt. "
                "Every conversation needs a user turn before the last assistant turn."
            )


def check_template_accepts(rows, dataset_cfg, name: str, render) -> None:
    """Raise, naming the row, if the chat template rejects a conversation.

    Templates raise on conversations they do not support (Mistral's and Gemma-2's
    reject a system turn; many insist that user and assistant alternate), and
    Axolotl's tokenization then stops with the template's bare message. One row of
    each sequence of roles is rendered with `render(messages)`.
    """
    field, role_key, content_key, role_map = _message_fields(dataset_cfg)
    seen = set()
    for index, messages in enumerate(rows[field]):
        roles = tuple(role_map.get(m.get(role_key), m.get(role_key)) for m in messages)
        if roles in seen:
            continue
        seen.add(roles)
        try:
            render([{"role": role, "content": str(m.get(content_key, ""))} for role, m in zip(roles, messages)])
        except Exception as error:  # jinja2's TemplateError, raised by the template itself
            hint = (
                " This template has no system role: fold the system message into the first user "
                "turn, drop it, or set `chat_template` to one that supports it."
                if "system" in roles
                else ""
            )
            raise ValueError(
                f"dataset `{name}` row {index}: the chat template rejects this conversation "
                f"(roles {list(roles)}): {error}.{hint}"
            ) from None


def check_selfplay_datasets(cfg) -> None:
    """Check every chat dataset of a SPIN config before any model loads."""
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from axolotl.utils.data.shared import load_dataset_with_config

    tokenizer = None
    for dataset_cfg in cfg.get("datasets") or []:
        if not str(dataset_cfg.get("type") or "").startswith("chat_template"):
            # Other SFT formats (alpaca, ...) work too: the trainer splits their
            # tokenized rows at the labelled response. Only conversations can be
            # checked for their last turn here.
            continue
        dataset = load_dataset_with_config(dataset_cfg, cfg.get("hf_use_auth_token") or False)
        if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # DatasetDict
            dataset = dataset[dataset_cfg.get("split") or "train"]
        name = str(dataset_cfg.get("path"))
        check_conversations(dataset, dataset_cfg, name)
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg)  # the tokenizer only: no model loads
        template = get_chat_template_from_config(cfg, dataset_cfg, tokenizer)

        def render(messages, template=template):
            tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)

        check_template_accepts(dataset, dataset_cfg, name, render)


# -- LSP: games instead of examples ---------------------------------------------

LSP_NO_DATA = "axolotl-selfplay:lsp-no-data"  # the `datasets:` entry `rl: lsp` inserts when there is none
SEED_SLOT = "{seed}"
GAME_SEED_COLUMN = "selfplay_seed"


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


def load_lsp_seeds(cfg) -> list[str]:
    """Seed texts of every `datasets:` entry (`field` column, default `prompt`), in order."""
    from axolotl.utils.data.shared import load_dataset_with_config

    seeds: list[str] = []
    for dataset_cfg in cfg.get("datasets") or []:
        if str(dataset_cfg.get("path")) == LSP_NO_DATA:
            continue
        dataset = load_dataset_with_config(dataset_cfg, cfg.get("hf_use_auth_token") or False)
        if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # DatasetDict
            dataset = dataset[dataset_cfg.get("split") or "train"]
        field = dataset_cfg.get("field") or "prompt"
        name = str(dataset_cfg.get("path"))
        if field not in dataset.column_names:
            raise ValueError(
                f"`rl: lsp` seed dataset `{name}` has no `{field}` column (columns: "
                f"{', '.join(dataset.column_names)}). Set `field:` in that `datasets:` entry to "
                "the column holding the seed text."
            )
        for index, text in enumerate(dataset[field]):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"`rl: lsp` seed dataset `{name}` row {index}: `{field}` is not a non-empty string.")
            seeds.append(text)
    return seeds


def build_lsp_games(cfg):
    """The training dataset of `rl: lsp`: one row per game, exactly one epoch of `max_steps`.

    A row holds its index and its seed text ("" without seed data); the trainer
    turns it into a Challenger prompt. Seeds are cycled when there are fewer
    than games.
    """
    import os

    from datasets import Dataset

    from .collator import INDEX_COLUMN

    world = int(os.environ.get("WORLD_SIZE", "1"))
    games = cfg.max_steps * cfg.micro_batch_size * (cfg.gradient_accumulation_steps or 1) * world
    seeds = load_lsp_seeds(cfg) or [""]
    return Dataset.from_dict(
        {INDEX_COLUMN: list(range(games)), GAME_SEED_COLUMN: [seeds[i % len(seeds)] for i in range(games)]}
    )
