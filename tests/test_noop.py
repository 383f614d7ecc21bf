"""With `selfplay` unset the plugin must change nothing: ordinary SFT and DPO runs log
the same losses and write the same weights with the package active as without it."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import (
    DEMO_DATA,
    NEEDS_PLUGINS_LINE,
    PLUGIN,
    Run,
    base_config,
    train_in_process_all,
)

pytestmark = pytest.mark.e2e


def _dpo_data(path):
    rows = []
    for line in DEMO_DATA.read_text().splitlines()[:32]:
        messages = json.loads(line)["messages"]
        rows.append(
            {
                "messages": messages[:-1],
                "chosen": messages[-1],
                "rejected": {"role": "assistant", "content": "I do not know."},
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(kind, tiny_model_dir, out):
    cfg = base_config(tiny_model_dir, out, rl=None, selfplay=None, plugins=None, num_epochs=1, micro_batch_size=8)
    cfg["dataset_prepared_path"] = str(out.parent / f"prepared-{out.name}")  # the two runs go side by side
    if kind == "dpo":
        cfg["rl"] = "dpo"
        cfg["datasets"] = [
            {
                "path": str(_dpo_data(out.parent / f"{out.name}-pairs.jsonl")),
                "type": "chat_template.default",
                "field_messages": "messages",
                "field_chosen": "chosen",
                "field_rejected": "rejected",
            }
        ]
    return cfg


def _train_with_and_without(cfg_with, path_with, cfg_without, path_without) -> list[tuple[Run, list[str]]]:
    """The same run with the package active and hidden, side by side (two processes)."""
    probe_without = ()
    if NEEDS_PLUGINS_LINE:
        cfg_with["plugins"] = [PLUGIN]
    else:
        probe_without = ("--hide-selfplay",)
    runs = train_in_process_all([(cfg_with, path_with, ()), (cfg_without, path_without, probe_without)])
    results = []
    for run in runs:
        assert run.returncode == 0, run.output[-5000:]
        results.append((run, json.loads(run.output.split("PLUGINS=")[-1].splitlines()[0])))
    return results


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_non_selfplay_run_is_unchanged(kind, tmp_path, tiny_model_dir):
    (with_run, with_plugins), (without_run, without_plugins) = _train_with_and_without(
        _config(kind, tiny_model_dir, tmp_path / "with"), tmp_path / "with.yml",
        _config(kind, tiny_model_dir, tmp_path / "without"), tmp_path / "without.yml",
    )
    assert PLUGIN in with_plugins and PLUGIN not in without_plugins
    losses_with = [row["loss"] for row in with_run.logs()]
    losses_without = [row["loss"] for row in without_run.logs()]
    assert losses_with and losses_with == losses_without
    assert dict(with_run.scalars("train/loss")) == dict(without_run.scalars("train/loss"))
    assert _sha(with_run.output_dir / "model.safetensors") == _sha(without_run.output_dir / "model.safetensors")
    assert not (with_run.output_dir / "selfplay").exists()
