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
`response_span` aligns y to the end-of-turn tokens when it is given them:
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


def response_span(
    input_ids: Sequence[int], labels: Sequence[int], end_ids: Collection[int] = ()
) -> tuple[int, int] | None:
    """[start, end) of the real response y: the last labelled span, aligned to `end_ids`
    (the tokens generation stops at) when given. A last span made only of end tokens a
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
    input_ids: Sequence[int], labels: Sequence[int], end_ids: Collection[int] = ()
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


def build_examples(dataset, end_ids: Collection[int] = ()) -> tuple[list[list[int]], list[list[int]]]:
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


def iter_examples(dataset, end_ids: Collection[int] = (), block: int = 1024):
    """(row index, prompt, real response) of every row, read `block` rows at a time (an
    Arrow dataset is never turned into Python lists all at once); errors as `build_examples`."""
    total = len(dataset["input_ids"]) if isinstance(dataset, dict) else len(dataset)
    for start in range(0, total, block):
        rows = dataset[start : start + block] if not isinstance(dataset, dict) else {
            key: dataset[key][start : start + block] for key in ("input_ids", "labels")
        }
        for offset, (input_ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
            yield (start + offset, *_split_row(start + offset, input_ids, labels, end_ids))


def _split_row(index: int, input_ids, labels, end_ids: Collection[int] = ()) -> tuple[list[int], list[int]]:
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
    """Seed texts of every `datasets:` entry (`field` column, default `prompt`), in order.

    Each entry is loaded by Axolotl's own loader (same formats and split choice
    as SFT data), untokenized."""
    from .axolotl_data import entry_label, load_each_entry

    entries = [d for d in cfg.get("datasets") or [] if str(d.get("path")) != LSP_NO_DATA]
    seeds: list[str] = []

    def on_entry(dataset_config, raw, _tokenized, _tokenizer):
        field = dataset_config.get("field") or "prompt"
        name = entry_label(cfg, dataset_config)
        if field not in raw.column_names:
            raise ValueError(
                f"`rl: lsp` seed dataset {name} has no `{field}` column (columns: "
                f"{', '.join(raw.column_names)}). Set `field:` in that `datasets:` entry to "
                "the column holding the seed text."
            )
        for index, text in enumerate(raw[field]):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"`rl: lsp` seed dataset {name} row {index}: `{field}` is not a non-empty string.")
            seeds.append(text)

    if entries:
        load_each_entry(cfg, entries, on_entry, tokenize=False)
    return seeds


def check_lsp_prompts(cfg, tokenizer, seed: str) -> None:
    """Render the Challenger prompt with the chat template now: the trainer does it only
    after the model has loaded."""
    prompt = cfg.selfplay["lsp"]["challenger_prompt"].replace(SEED_SLOT, seed)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    except Exception as error:  # noqa: BLE001 - any template failure is the user's to fix
        raise ValueError(
            f"`rl: lsp` renders the Challenger and judge prompts with the tokenizer's chat template, "
            f"which failed: {error}. Set `chat_template:` (e.g. `chat_template: chatml`) or use a "
            "tokenizer that has one."
        ) from None


def check_reward_model(cfg) -> None:
    """`selfplay.lsp.reward_model` must at least have a readable config (no weights are loaded)."""
    path = cfg.selfplay["lsp"].get("reward_model")
    if not path:
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=bool(cfg.get("trust_remote_code")))
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"`selfplay.lsp.reward_model` = `{path}`: cannot read its config ({error}). Give the local "
            "directory or hub id of a sequence-classification model."
        ) from None


def build_lsp_games(cfg, seeds: list[str]):
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
    seeds = seeds or [""]
    return Dataset.from_dict(
        {INDEX_COLUMN: list(range(games)), GAME_SEED_COLUMN: [seeds[i % len(seeds)] for i in range(games)]}
    )


def prepare_lsp_games(cfg):
    """What the plugin's `load_datasets` hook and `axolotl-selfplay check` run for `rl: lsp`:
    the seed prompts, the chat template and the reward model checked, then the games."""
    from axolotl.common.datasets import TrainDatasetMeta
    from axolotl.loaders import load_tokenizer

    seeds = load_lsp_seeds(cfg)
    check_lsp_prompts(cfg, load_tokenizer(cfg), seeds[0] if seeds else "")
    check_reward_model(cfg)
    return TrainDatasetMeta(train_dataset=build_lsp_games(cfg, seeds), total_num_steps=cfg.max_steps)
