"""The data job: Axolotl's own loading (axolotl_loading.py), the one prompt/response split
(split.py), every row checked (rows.py), SPIN's and LSP's preparation (spin.py, lsp.py),
released opponents (opponents_from.py), the columns the plugin adds (columns.py) and the
index collator (collator.py)."""
