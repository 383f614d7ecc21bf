"""`axolotl-selfplay check` (check.py): the verdict `axolotl train` would give, before any
model weights load, and what the run will do: data, tokens, schedule, opponents, LSP games."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from conftest import (
    DEMO_ROWS,
    _env,
    base_config,
    base_config_file,
    broken_chat_config,
    chat_entry,
    lsp_config,
    python_script,
    spin_release_file,
    train_in_this_process,
    with_reward_module,
    write_config,
    write_jsonl,
)

from axolotl_selfplay.cli import main
from axolotl_selfplay.config_file import check_config_file

AXOLOTL_0_19 = version("axolotl").startswith("0.19.")


def _check(config: Path, capsys) -> tuple[int, str, str]:
    code = main(["check", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("rl", ["spin", "spin_chi2"])
def test_check_good_spin_config(rl, tmp_path, tiny_model_dir, fresh_axolotl, no_weights, capsys):
    source = spin_release_file(tmp_path / "iter0.parquet", DEMO_ROWS[:10], "No idea.")
    selfplay = {"iterations": 2, "opponents_from": str(source), "generation": {"max_new_tokens": 12}}
    code, out, err = _check(base_config_file(tmp_path, tiny_model_dir, rl=rl, selfplay=selfplay), capsys)
    assert code == 0, err
    assert f"OK (rl: {rl}," in out and "no model weights loaded" in out
    assert "data       64 rows in 1 entry: 64 usable, 0 dropped by Axolotl" in out
    assert "64 training rows, 0 evaluation rows" in out
    assert "tokens     prompt p50 " in out and "(sequence_len 128)" in out
    assert "prompts    end with '…" in out and "<|im_start|>assistant\\n'" in out
    assert "schedule   2 iterations × 1 epoch × 4 steps = 8 optimizer steps" in out
    assert "opponents  64 per iteration (12 new tokens at most" in out and "128 in all" in out
    assert (
        f"iteration 0: 11 of 64 training rows take iteration 0's opponent from `selfplay.opponents_from` ({source}) "
        "(spin layout, 10 rows); 53 without a match are generated"
    ) in out, out
    # A second check finds Axolotl's prepared dataset in the cache, and says the same
    code, again, _ = _check(base_config_file(tmp_path, tiny_model_dir, rl=rl, selfplay=selfplay), capsys)
    assert code == 0 and "(from the dataset_prepared_path cache)" in again
    assert again.replace(" (from the dataset_prepared_path cache)", "") == out


@pytest.mark.parametrize("family", ["phi3", "zephyr"])
def test_check_splits_as_the_trainer_does(family, tmp_path, zoo, fresh_axolotl, no_weights, capsys):
    """`check` shows where generation starts: the prompt as the trainer splits it. Phi-3 ends a
    conversation with a lone labelled EOS after <|end|>\\n; split without the end-of-turn tokens,
    the prompt shown would end after the answer. On zephyr's SentencePiece-style tokenizer the
    released rows whose `generated` is the real reply match their training rows."""
    source = spin_release_file(tmp_path / "iter0.parquet", DEMO_ROWS[:10], "No idea.", real_on=range(0, 10, 2))
    selfplay = {"iterations": 2, "opponents_from": str(source)}
    code, out, err = _check(base_config_file(tmp_path, zoo(family), selfplay=selfplay), capsys)
    assert code == 0, err
    assert "<|assistant|>\\n' (the chat template's generation prompt)" in out, out
    assert "iteration 0: 11 of 64 training rows take iteration 0's opponent" in out


def test_check_reports_drops_and_the_short_schedule(tmp_path, tiny_model_dir, fresh_axolotl, capsys):
    rows = [json.loads(json.dumps(r)) for r in DEMO_ROWS]
    rows[5]["messages"][0]["content"] = "long " * 80
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, out, err = _check(
        base_config_file(
            tmp_path,
            tiny_model_dir,
            datasets=[chat_entry(path)],
            sequence_len=64,
            selfplay={"iterations": 3},
            max_steps=5,
        ),
        capsys,
    )
    assert code == 0, err
    assert "64 rows in 1 entry: 63 usable, 1 dropped by Axolotl (1 longer than sequence_len 64)" in out
    assert "max_steps 5: only 2 of 3 iterations run" in out and "126 in all" in out


def test_check_bad_spin_config_gives_the_train_error(tmp_path, tiny_model_dir, fresh_axolotl, no_weights, capsys):
    config = broken_chat_config(tmp_path, tiny_model_dir, "empty reply")
    code, out, err = _check(config, capsys)
    assert code == 1 and out == ""
    with pytest.raises(ValueError) as train_error:
        train_in_this_process(config)
    assert str(train_error.value) in err
    assert "row 3 (line 4 of chat.jsonl): empty assistant reply" in err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"rl": "spin_chi2", "selfplay": {"chi2_alpha": 1.5}},
            "invalid `selfplay.chi2_alpha`: Input should be less than 1",
        ),
        ({"rl": "spn"}, "unknown rl type `spn`: did you mean `spin`?"),
        ({"rl": None, "selfplay": None}, "this config does not ask for self-play"),
    ],
    ids=["spin_chi2", "misspelt rl", "not self-play"],
)
def test_check_bad_configs(overrides, message, tmp_path, tiny_model_dir, fresh_axolotl, capsys):
    code, out, err = _check(base_config_file(tmp_path, tiny_model_dir, **overrides), capsys)
    assert code == 1 and out == "" and message in err


def test_check_lsp(tmp_path, tiny_model_dir, fresh_axolotl, no_weights, monkeypatch, capsys):
    monkeypatch.chdir(with_reward_module(tmp_path))
    cfg = lsp_config(tiny_model_dir, tmp_path)
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert code == 0, err
    assert "OK (rl: lsp," in out
    assert "games      3 steps × 2 games = 6 games of 4 queries × 3 answers" in out
    assert "rewards    arithmetic.exact_sum (weight 1.0); self-reward (judge) on" in out
    assert "per step   32 policy generations, 24 judge generations" in out

    cfg["selfplay"]["lsp"]["reward_funcs"] = ["arithmetic.nope"]
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert (
        code == 1
        and "`selfplay.lsp.reward_funcs[0]` = `arithmetic.nope`: module `arithmetic` has no function `nope`" in err
    )

    cfg["selfplay"]["lsp"]["reward_funcs"] = ["arithmetic.exact_sum"]
    cfg["selfplay"]["lsp"]["reward_model"] = str(tmp_path / "no-such-reward-model")
    (tmp_path / "lsp.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = _check(tmp_path / "lsp.yml", capsys)
    assert (
        code == 1
        and f"`selfplay.lsp.reward_model: {tmp_path / 'no-such-reward-model'}`: no such folder" in err
    )


def test_check_help_documents_its_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["check", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "without loading any model weights" in out and "--verbose" in out and "config" in out


FIRST_STAGE = """
import json, sys
from axolotl_selfplay.cli import main
codes = [main(["check", path]) for path in sys.argv[1:]]
print(json.dumps({"codes": codes, "loaded": [m for m in ("torch", "transformers", "axolotl") if m in sys.modules]}))
"""


def test_config_errors_are_reported_before_torch_or_axolotl_loads(tmp_path, tiny_model_dir):
    """`check`'s first stage: YAML, `rl:`, the `selfplay:` block, the model paths and Axolotl
    0.19's `plugins:` line need neither torch nor Axolotl (importing them takes 10-20 s)."""
    (tmp_path / "broken.yml").write_text("rl: spin\nselfplay: {iterations: 2\n")
    configs = {
        "broken.yml": "not valid YAML",
        "typo.yml": "unknown key `selfplay.itrations`. Did you mean `selfplay.iterations`?",
        "rl.yml": "unknown rl type `spn`: did you mean `spin`? (spin, spin_chi2, lsp)",
        "block.yml": "unknown top-level key `self_play`: did you mean `selfplay:`?",
        "model.yml": f"`base_model: {tmp_path / 'no-model'}`: no such folder",
    }
    cfg = base_config(tiny_model_dir, tmp_path)
    write_config({**cfg, "selfplay": {**cfg["selfplay"], "itrations": 3}}, tmp_path / "typo.yml")
    write_config({**cfg, "rl": "spn"}, tmp_path / "rl.yml")
    write_config({**cfg, "self_play": cfg["selfplay"]}, tmp_path / "block.yml")
    write_config({**cfg, "base_model": str(tmp_path / "no-model")}, tmp_path / "model.yml")
    if AXOLOTL_0_19:
        write_config({**cfg, "plugins": []}, tmp_path / "plugins.yml")
        configs["plugins.yml"] = "Axolotl < 0.20 loads plugins from `plugins:` only): add\n  plugins:\n    - axolotl_selfplay.plugin.SelfPlayPlugin"
    run = python_script(["-c", FIRST_STAGE, *(str(tmp_path / name) for name in configs)])
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"codes": [1] * len(configs), "loaded": []}, run.stderr
    for name, message in configs.items():
        assert f"axolotl-selfplay check: {tmp_path / name}: FAILED\n" in run.stderr and message in run.stderr, name


def test_relative_model_path_from_another_folder(tmp_path, tiny_model_dir, monkeypatch):
    """The README's tiny configs name `base_model: outputs/tiny-model`, relative to the repository
    root. Run from elsewhere, transformers would take it for a Hub id and fail on the connection;
    `check` says where the folder is instead."""
    project = tmp_path / "project"
    (project / "outputs").mkdir(parents=True)
    (project / "outputs" / "tiny-model").symlink_to(tiny_model_dir)
    config = write_config({**base_config(tiny_model_dir, project), "base_model": "outputs/tiny-model"},
                          project / "configs" / "spin.yml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        check_config_file(config)
    assert str(error.value) == (
        f"`base_model: outputs/tiny-model` is not a folder from here ({tmp_path}), so it would be taken for a "
        "Hugging Face Hub id. Relative paths are resolved from the working directory, not from the YAML's "
        f"folder; the folder is {project / 'outputs/tiny-model'}. Run the command from {project}, or write "
        "that absolute path."
    )
    monkeypatch.chdir(project)
    check_config_file(config)  # from the folder it was written for: fine
    # a Hub id that is not in the local cache, offline: nothing could fetch it
    config = write_config({**base_config(tiny_model_dir, project), "base_model": "no-org/no-model"}, project / "hub.yml")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"`base_model: no-org/no-model` is neither a folder from here .* nor in the "
                       r"local Hub cache .*HF_HUB_OFFLINE is set"):
        check_config_file(config)


def test_axolotl_selfplay_is_an_axolotl_command(tmp_path, tiny_model_dir):
    """`axolotl selfplay ...` through Axolotl's own CLI (the `axolotl.cli_commands` entry point)."""
    cfg = base_config(tiny_model_dir, tmp_path)
    config = write_config({**cfg, "selfplay": {**cfg["selfplay"], "itrations": 3}}, tmp_path / "typo.yml")
    axolotl = str(Path(sys.executable).parent / "axolotl")
    run = subprocess.run([axolotl, "selfplay", "check", str(config)], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"axolotl selfplay check: {config}: FAILED\nunknown key `selfplay.itrations`" in run.stderr


def test_cli_lists_every_tiny_model_family():
    """cli.py names the families without importing tiny_models (torch) for `check` and `--help`."""
    from axolotl_selfplay import cli, tiny_models

    assert cli.FAMILIES == tuple(tiny_models.FAMILIES)
