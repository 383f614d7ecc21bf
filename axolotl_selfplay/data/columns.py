"""The dataset columns the plugin adds to Axolotl's datasets, in one place."""

INDEX_COLUMN = "selfplay_index"  # each training row's index (SPIN: example, LSP: game); the collator passes only this
SUPPLIED_COLUMN = "selfplay_supplied_opponent"  # `selfplay.opponents_from`: iteration 0's y' tokens, or None
GAME_SEED_COLUMN = "selfplay_seed"  # `rl: lsp`: the game's seed text ("" without seed data)
