"""`axolotl-selfplay` helper commands.

    axolotl-selfplay check CONFIG.yml [--verbose]

checks a self-play config and its data as `axolotl train` would, without
loading the model: first what needs neither torch nor Axolotl (config_file.py,
about a second), then Axolotl's config loading and the data (check.py).

    axolotl-selfplay tiny-model DIR [--family llama] [--data FILE.jsonl] [--hidden-size 64]
                                    [--layers 2] [--dropout 0.0] [--sft-steps N]

builds, fully offline, a tiny random model of a real family's shape (llama,
llama3.2, qwen2.5, mistral, gemma2, gemma3, phi3, zephyr; see tiny_models.py) and a
tokenizer trained locally (byte-level BPE; SentencePiece-style for zephyr) with that
family's special tokens and chat template, and saves both to DIR. Tests, the demo and the benchmarks use it,
so nothing is ever downloaded. `--sft-steps N` then fits the model to the last
assistant turn of every conversation in `--data` for N steps (a quick warm
start: a random model cannot play LSP's roles; it never ends a turn).

Both are also Axolotl commands, `axolotl selfplay check CONFIG.yml` and `axolotl
selfplay tiny-model DIR` (the `axolotl.cli_commands` entry point: `axolotl_command`).
`axolotl` itself imports torch before any command runs (10-20 s); this console
script imports torch only once a stage needs it.
"""

from __future__ import annotations

import argparse
import os
import sys

import click

from . import __version__
from .config_file import check_config_file

# tiny_models.FAMILIES, without importing tiny_models (torch) for `check` and `--help`
FAMILIES = ("llama", "llama3.2", "qwen2.5", "mistral", "gemma2", "gemma3", "phi3", "zephyr")


def main(argv: list[str] | None = None, prog: str = "axolotl-selfplay") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="check a self-play config and its data as `axolotl train` would, without loading the model",
        description="Check a self-play config and its data as `axolotl train` would (config validation, "
        "every dataset row, the chat template, LSP reward functions), without loading any model weights.",
    )
    check.add_argument("config", help="the Axolotl YAML to check (the one you pass to `axolotl train`)")
    check.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Axolotl's own log lines and progress bars, and the traceback of an error",
    )
    tiny = sub.add_parser(
        "tiny-model",
        help="build a tiny offline model + tokenizer of a real family's shape",
        description="Build, fully offline, a tiny random model of a real family's shape and a tokenizer "
        "(byte-level BPE; SentencePiece-style for zephyr) with that family's special tokens and chat template; "
        "optionally warm it up on chat data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tiny.add_argument("output_dir", help="folder to write the model and tokenizer to (created)")
    tiny.add_argument("--family", choices=list(FAMILIES), default="llama", help="the model family whose shape, "
                      "template, special tokens and generation_config.json the tiny model copies")
    tiny.add_argument("--dropout", type=float, default=0.0, help="the family's dropout probabilities")
    tiny.add_argument("--data", help="chat jsonl ({'messages': [...]}) whose text trains the tokenizer "
                      "and that --sft-steps trains on; None: a built-in sample text")
    tiny.add_argument("--vocab-size", type=int, default=512, help="tokenizer vocabulary size")
    tiny.add_argument("--hidden-size", type=int, default=64, help="model width")
    tiny.add_argument("--layers", type=int, default=2, help="number of decoder layers")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights and the warm-up")
    tiny.add_argument("--sft-steps", type=int, default=0, help="warm the model up on --data for N steps "
                      "(0: leave it random, which never ends a turn)")
    tiny.add_argument("--sft-lr", type=float, default=3e-3, help="learning rate of the warm-up")
    tiny.add_argument("--log-every", type=int, default=25, help="print the warm-up's step and loss every N "
                      "steps (0: quiet)")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            check_config_file(args.config)
        except ValueError as error:
            print(f"{prog} check: {args.config}: FAILED\n{error}", file=sys.stderr)
            return 1
        if not args.verbose:
            # Read by Axolotl's logging setup when it is first imported, which check.py does.
            os.environ.setdefault("AXOLOTL_LOG_LEVEL", "WARNING")
            os.environ.setdefault("LOG_LEVEL", "ERROR")
        # Imported here, after the torch-free checks and once the log level is set: check.py
        # imports Axolotl (and torch), 10-20 s.
        from .check import run_check_command

        return run_check_command(args)
    if args.command == "tiny-model":
        from .tiny_models import build_tiny_model, warm_up  # torch and transformers: only for this command

        build_tiny_model(
            args.output_dir,
            args.data,
            args.vocab_size,
            args.hidden_size,
            args.layers,
            args.seed,
            family=args.family,
            dropout=args.dropout,
        )
        if args.sft_steps:
            if not args.data:
                parser.error("--sft-steps needs --data")
            warm_up(args.output_dir, args.data, args.sft_steps, lr=args.sft_lr, seed=args.seed,
                    log_every=args.log_every)
        print(f"tiny model and tokenizer written to {args.output_dir}")
    return 0


@click.command(
    "selfplay",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    short_help="self-play helpers: check a config and its data, build a tiny offline model",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def axolotl_command(args: tuple[str, ...]) -> None:
    """`axolotl selfplay ...`: the `axolotl-selfplay` commands, served by Axolotl's CLI
    (`axolotl selfplay --help`)."""
    sys.exit(main(list(args), prog="axolotl selfplay"))


if __name__ == "__main__":
    sys.exit(main())
