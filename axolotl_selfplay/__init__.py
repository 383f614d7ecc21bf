"""axolotl-selfplay: self-play fine-tuning for Axolotl.

`rl: spin` (SPIN, arXiv 2401.01335), `rl: spin_chi2` (χ² self-play, arXiv 2602.01357) and
`rl: lsp` (Language Self-Play, arXiv 2509.07414) in an ordinary Axolotl YAML.

Kept import-light on purpose: Axolotl imports `axolotl_selfplay.plugin` for every
config once the package is installed.
"""

__version__ = "0.1.0"

import logging


def get_logger(module_name: str) -> logging.Logger:
    """A logger under Axolotl's `axolotl` namespace, so Axolotl's logging setup (level,
    console, output_dir/debug.log) shows our messages like those of its own integrations."""
    return logging.getLogger("axolotl.integrations.selfplay" + module_name.removeprefix("axolotl_selfplay"))
