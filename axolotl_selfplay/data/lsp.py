"""`rl: lsp`'s training data: no examples, one row per game.

LSP needs no data; `datasets:` entries, when given, are seed texts put into the
Challenger prompt's `{seed}` slot. `prepare_lsp_games(cfg)` is what the plugin's
`load_datasets` hook and `axolotl-selfplay check` run: the seed prompts (through
Axolotl's own loader), the chat template and the reward model's config are checked
before any model loads, then one row per game is built (`build_lsp_games`).
"""

from __future__ import annotations

from axolotl.common.datasets import TrainDatasetMeta
from axolotl.loaders import load_tokenizer
from datasets import Dataset
from transformers import AutoConfig

from ..config import LSP_NO_DATA, SEED_SLOT
from ..distributed import launched_world_size
from ..lsp.rollout import chat_prompt
from .axolotl_loading import entry_label, load_each_entry
from .columns import GAME_SEED_COLUMN, INDEX_COLUMN


def load_lsp_seeds(cfg) -> list[str]:
    """Seed texts of every `datasets:` entry (`field` column, default `prompt`), in order.

    Each entry is loaded by Axolotl's own loader (same formats and split choice
    as SFT data), untokenized."""
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
        chat_prompt(tokenizer, prompt, cfg.get("chat_template_kwargs"))
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
    world = launched_world_size()
    games = cfg.max_steps * cfg.micro_batch_size * (cfg.gradient_accumulation_steps or 1) * world
    seeds = seeds or [""]
    return Dataset.from_dict(
        {INDEX_COLUMN: list(range(games)), GAME_SEED_COLUMN: [seeds[i % len(seeds)] for i in range(games)]}
    )


def prepare_lsp_games(cfg):
    """What the plugin's `load_datasets` hook and `axolotl-selfplay check` run for `rl: lsp`:
    the seed prompts, the chat template and the reward model checked, then the games."""
    seeds = load_lsp_seeds(cfg)
    check_lsp_prompts(cfg, load_tokenizer(cfg), seeds[0] if seeds else "")
    check_reward_model(cfg)
    return TrainDatasetMeta(train_dataset=build_lsp_games(cfg, seeds), total_num_steps=cfg.max_steps)
