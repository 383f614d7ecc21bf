"""SPIN's training data: Axolotl's own SFT preparation, every row checked before any model loads.

`prepare_spin_data(cfg)` is what the plugin's `load_datasets` hook and
`axolotl-selfplay check` run, so both stop on the same errors:

1. `rows.check_dataset_types`: a `type:` without a prompt/response split is refused
   before anything is loaded.
2. Axolotl's `load_datasets` prepares the data exactly as for plain SFT (loading,
   split choice, chat template, tokenization, `sequence_len`, the
   `dataset_prepared_path` cache, `val_set_size`). While it runs, each entry's rows
   are inspected in source order (`axolotl_loading.watch_entries`, `rows.inspect_entry`).
3. A run that finds Axolotl's prepared dataset in its cache tokenizes nothing and no
   entry passes by: the prepared rows are scanned instead (`rows.check_prepared_rows`).
4. `selfplay.opponents_from` is matched to the training rows (opponents_from.py).
5. Rows Axolotl drops, replies `truncate` shortens, and a `max_steps` that cuts the
   iteration schedule are reported in one WARNING each.

The trainer splits the prepared rows into prompt and real response with the same
function the checks use (split.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from axolotl.common.datasets import load_datasets

from .. import get_logger
from ..schedule import StepPlan
from .axolotl_loading import watch_entries
from .opponents_from import SuppliedOpponents, attach_supplied_opponents
from .rows import (
    EntryReport,
    check_dataset_types,
    check_prepared_rows,
    cut_replies_warning,
    dropped_rows_warning,
    explain_template_error,
    inspect_entry,
)

LOG = get_logger(__name__)


@dataclass
class SpinData:
    meta: object  # Axolotl's TrainDatasetMeta, handed back to Axolotl by the plugin hook
    entries: list[EntryReport]  # empty when Axolotl loaded its prepared dataset from the cache
    schedule: StepPlan  # the iterations in optimizer steps
    supplied: SuppliedOpponents | None = None  # `selfplay.opponents_from`, matched to the training rows


def prepare_spin_data(cfg) -> SpinData:
    """Axolotl's SFT preparation of `datasets:`, every row checked; see the module docstring."""
    check_dataset_types(cfg)
    test_configs = list(cfg.get("test_datasets") or [])
    entries: list[EntryReport] = []

    def on_entry(dataset_config, raw, tokenized, tokenizer):
        report = inspect_entry(cfg, dataset_config, raw, tokenized, tokenizer)
        report.raise_if_unusable()  # before Axolotl merges, shuffles and caches the rows
        if not any(dataset_config is t for t in test_configs):
            entries.append(report)  # evaluation rows (`test_datasets`) are checked, not counted

    def on_error(dataset_config, raw, tokenizer):
        explain_template_error(cfg, dataset_config, raw, tokenizer)

    with watch_entries(on_entry, on_error=on_error):
        meta = load_datasets(cfg=cfg)
    if not entries:
        check_prepared_rows(cfg, meta.train_dataset)
        if meta.eval_dataset is not None:  # self-play evaluation splits them too
            check_prepared_rows(cfg, meta.eval_dataset)
    supplied = attach_supplied_opponents(cfg, meta)
    for warning in (dropped_rows_warning(entries), cut_replies_warning(entries, cfg)):
        if warning:
            LOG.warning(warning)
    schedule = StepPlan.of(cfg, len(meta.train_dataset))
    if schedule.warning():
        LOG.warning(schedule.warning())
    return SpinData(meta, entries, schedule, supplied)
