"""`axolotl-selfplay` command line: every option says what it does and its default."""

from __future__ import annotations

import pytest

from axolotl_selfplay import __version__
from axolotl_selfplay.cli import main


def test_tiny_model_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tiny-model", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in [("--family", "llama"), ("--dropout", "0.0"), ("--vocab-size", "512"),
                            ("--hidden-size", "64"), ("--layers", "2"), ("--seed", "0"),
                            ("--sft-steps", "0"), ("--sft-lr", "0.003"), ("--log-every", "25")]:
        assert option in text and f"(default: {default})" in text, option
    assert "output_dir folder to write the model and tokenizer to" in text


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"axolotl-selfplay {__version__}"
