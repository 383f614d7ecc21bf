"""axolotl-selfplay: self-play fine-tuning (SPIN) for Axolotl.

Kept import-light on purpose: Axolotl imports `axolotl_selfplay.plugin` for every
config once the package is installed.
"""

__version__ = "0.1.0"
