"""Axolotl's own dataset loading, entry by entry, for the self-play checks and data.

Self-play must see `datasets:` exactly as `axolotl train` does for plain SFT: the
same file formats, the same split choice (a local directory, a `save_to_disk`
dataset or a hub dataset given without `split:` loads as a DatasetDict, of which
Axolotl takes `train`), `shards`, `weight` (0.21), chat template and
tokenization. Re-implementing any of that drifts from Axolotl, so we run
Axolotl's code and look at each entry as it passes through.

Axolotl has no per-entry plugin hook. Its SFT loader
(`axolotl.utils.data.sft._load_and_process_single_dataset`, the same in 0.19
and 0.21) loads one entry, picks its split, and hands the raw rows to the
module-level name `get_dataset_wrapper(dataset_config=..., dataset=..., ...)`,
which tokenizes them. `watch_entries` swaps that one name for the length of a
`with` block, so the caller sees each entry's raw and tokenized rows in source
order, before Axolotl merges, shuffles, filters and caches them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from axolotl.utils.data import sft
from axolotl.utils.data.shared import datasets_with_name_generator
from axolotl.utils.dict import DictDefault


@contextlib.contextmanager
def watch_entries(on_entry: Callable, tokenize: bool = True, on_error: Callable | None = None) -> Iterator[None]:
    """Within the block, Axolotl's SFT loader calls `on_entry(dataset_config, raw, tokenized,
    tokenizer)` for every entry it loads. With `tokenize=False` the raw rows are passed on
    untokenized (for data that is not SFT data, e.g. LSP seed prompts). When Axolotl's
    tokenization of an entry fails, `on_error(dataset_config, raw, tokenizer)` may raise a
    clearer error before the original one propagates."""
    original = sft.get_dataset_wrapper

    def wrapper(**kwargs):  # Axolotl calls it with keyword arguments only
        if tokenize:
            try:
                tokenized, prompter = original(**kwargs)
            except Exception:
                if on_error is not None:
                    on_error(kwargs["dataset_config"], kwargs["dataset"], kwargs["tokenizer"])
                raise
        else:
            tokenized, prompter = kwargs["dataset"], None
        on_entry(kwargs["dataset_config"], kwargs["dataset"], tokenized, kwargs["tokenizer"])
        return tokenized, prompter

    sft.get_dataset_wrapper = wrapper
    try:
        yield
    finally:
        sft.get_dataset_wrapper = original


def load_each_entry(cfg, dataset_configs, on_entry: Callable, tokenizer=None, tokenize: bool = True) -> None:
    """Load every entry of `dataset_configs` the way Axolotl loads training data, one at a
    time (no merging, shuffling or cache), and pass each to `on_entry` (see `watch_entries`)."""
    configs = [d if isinstance(d, DictDefault) else DictDefault(dict(d)) for d in dataset_configs]
    with watch_entries(on_entry, tokenize=tokenize):
        for dataset_config in datasets_with_name_generator(configs):
            sft._load_and_process_single_dataset(
                dataset_config=dataset_config, cfg=cfg, tokenizer=tokenizer, split="train", seed=cfg.seed
            )


def entry_label(cfg, dataset_config) -> str:
    """How messages name a `datasets:` (or `test_datasets:`) entry, e.g. `datasets[1]` (data/chat.jsonl)."""
    for key in ("datasets", "test_datasets"):
        entries = list(cfg.get(key) or [])
        index = next((i for i, d in enumerate(entries) if d is dataset_config), None)
        if index is not None:
            return f"`{key}[{index}]` ({dataset_config.get('path')})"
    entries = list(cfg.get("datasets") or [])
    # Axolotl expands `name: [a, b]` / `preprocess_shards` into copies
    index = next((i for i, d in enumerate(entries) if d.get("path") == dataset_config.get("path")), None)
    where = f"`datasets[{index}]`" if index is not None else "dataset"
    return f"{where} ({dataset_config.get('path')})"
