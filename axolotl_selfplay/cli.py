"""`axolotl-selfplay` helper commands.

    axolotl-selfplay check CONFIG.yml [--verbose]

checks a self-play config and its data as `axolotl train` would, without
loading the model (check.py).

    axolotl-selfplay tiny-model DIR [--family llama] [--data FILE.jsonl] [--hidden-size 64]
                                    [--layers 2] [--dropout 0.0] [--sft-steps N]

builds, fully offline, a tiny random model of a real family's shape (llama,
llama3.2, qwen2.5, mistral, gemma2, gemma3, phi3; see tiny_models.py) and a
byte-level BPE tokenizer trained locally with that family's special tokens and
chat template, and saves both to DIR. Tests, the demo and the benchmarks use it,
so nothing is ever downloaded. `--sft-steps N` then fits the model to the last
assistant turn of every conversation in `--data` for N steps (a quick warm
start: a random model cannot play LSP's roles; it never ends a turn).
"""

from __future__ import annotations

import argparse
import sys

from .tiny_models import CHATML_TEMPLATE, FAMILIES, SPECIAL_TOKENS, build_tiny_model, warm_up

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model", "main", "warm_up"]


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="axolotl-selfplay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .check import add_check_command, run_check_command

    add_check_command(sub)
    tiny = sub.add_parser(
        "tiny-model",
        help="build a tiny offline model + tokenizer of a real family's shape",
        description="Build, fully offline, a tiny random model of a real family's shape and a byte-level BPE "
        "tokenizer with that family's special tokens and chat template; optionally warm it up on chat data.",
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
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check_command(args)
    if args.command == "tiny-model":
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
            warm_up(args.output_dir, args.data, args.sft_steps, lr=args.sft_lr, seed=args.seed)
        print(f"tiny model and tokenizer written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
