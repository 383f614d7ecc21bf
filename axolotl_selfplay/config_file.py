"""An Axolotl YAML read as a file: what can be checked with neither torch nor Axolotl.

`axolotl-selfplay check` runs this first. Importing Axolotl (and with it torch) takes
10-20 s; a typo in `rl:` or in the `selfplay:` block, a model folder that does not
exist from the working directory, or a missing `plugins:` line on Axolotl 0.19 is
reported in about a second instead. Imports yaml, pydantic (through `config`) and
`huggingface_hub.constants` only.

The model paths: Axolotl hands `base_model` to transformers, which takes anything that
is not a local folder for a Hub id. A relative path written for another working
directory (`outputs/tiny-model` run from elsewhere) then fails far later as a Hub
connection error; say instead that the folder does not exist from here, and where it is.
"""

from __future__ import annotations

import copy
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from huggingface_hub import constants as hub_constants

from .config import SELFPLAY_RL_TYPES, validate_selfplay_yaml

# Keys whose value is a model folder or a Hub id.
MODEL_KEYS = ("base_model", "base_model_config", "tokenizer_config", "lora_model_dir")
PLUGIN_CLASS = "axolotl_selfplay.plugin.SelfPlayPlugin"


def check_config_file(path: str | os.PathLike) -> dict:
    """The raw YAML, after the torch-free checks; ValueError naming the key and the fix."""
    raw = read_yaml(path)
    rl = raw.get("rl")
    selfplay = validate_selfplay_yaml(copy.deepcopy(raw))  # a copy: it remaps `rl` and fills defaults
    if selfplay is None and not raw.get("selfplay"):
        raise ValueError(
            f"this config does not ask for self-play (`rl: {rl}`; self-play is `rl: {' | '.join(SELFPLAY_RL_TYPES)}`): "
            "`axolotl-selfplay check` checks self-play configs."
        )
    _check_plugin_line(raw)
    config_dir = Path(path).resolve().parent
    models = [(key, raw.get(key)) for key in MODEL_KEYS]
    if selfplay is not None and selfplay.type == "lsp":
        models.append(("selfplay.lsp.reward_model", selfplay.lsp.reward_model))
    for key, value in models:
        if isinstance(value, str) and value:
            check_model_path(key, value, config_dir)
    return raw


def read_yaml(path: str | os.PathLike) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"no such file: {path} (looked for from {Path.cwd()})")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"an Axolotl config is a mapping of keys (`base_model: ...`), not a {type(raw).__name__}")
    return raw


def _check_plugin_line(raw: dict) -> None:
    """Axolotl 0.19 loads plugins from `plugins:` only (0.20+ loads installed ones by itself);
    without the line its `rl` enum rejects `rl: spin` with a message that never names us."""
    try:
        major_minor = tuple(int(x) for x in version("axolotl").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return
    rl = raw.get("rl")
    if major_minor < (0, 20) and rl in SELFPLAY_RL_TYPES and PLUGIN_CLASS not in (raw.get("plugins") or []):
        raise ValueError(
            f"`rl: {rl}` on Axolotl {version('axolotl')} needs the plugin named in the YAML (Axolotl < 0.20 "
            f"loads plugins from `plugins:` only): add\n  plugins:\n    - {PLUGIN_CLASS}"
        )


def check_model_path(key: str, value: str, config_dir: Path) -> None:
    """A model key's value is a local folder, or a Hub id that can be reached; else ValueError."""
    if Path(value).expanduser().exists():
        return
    where = Path.cwd()
    # Hub ids are `name` or `org/name`; anything else can only be a path.
    path_only = value.startswith(("./", "../", "/", "~")) or value.count("/") > 1 or "\\" in value
    relative = not Path(value).expanduser().is_absolute()
    near = next((d for d in (config_dir, *config_dir.parents) if (d / value).exists()), None) if relative else None
    if near is not None:
        raise ValueError(
            f"`{key}: {value}` is not a folder from here ({where}), so it would be taken for a Hugging Face "
            f"Hub id. Relative paths are resolved from the working directory, not from the YAML's folder; "
            f"the folder is {near / value}. Run the command from {near}, or write that absolute path."
        )
    if path_only:
        raise ValueError(f"`{key}: {value}`: no such folder (looked for from {where}).")
    if hub_constants.HF_HUB_OFFLINE and not _in_hub_cache(value):
        raise ValueError(
            f"`{key}: {value}` is neither a folder from here ({where}) nor in the local Hub cache "
            f"({hub_constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: nothing can be downloaded. "
            "Give the model's local folder, or download it first (`hf download " + value + "`)."
        )


def _in_hub_cache(repo_id: str) -> bool:
    return (Path(hub_constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()
