"""The `lcf` command line. Thin: each subcommand (one module here: chat, train, evaluate, demo,
export) parses its flags and calls the library; `main` prints bad input (`UserError`, a missing
file) as one line and lets anything else, a bug, keep its traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lcf_jax.cli import chat, demo, evaluate, export, train
from lcf_jax.cli.common import HelpFormatter, examples
from lcf_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcf",
        formatter_class=HelpFormatter,
        description="Latent Cache Flow in JAX: LLM agents that communicate through their KV caches. A small "
        "learned adapter turns a sharer model's KV cache into an edit of a receiver model's cache, instead of "
        "the sharer writing a text message for the receiver to read. Run `lcf COMMAND --help` for what each "
        "command does, what it writes and its options.",
        epilog=examples(
            "lcf demo --workdir lcf-demo",
            "lcf chat --prompt 'What is the capital of France?'",
            "lcf train --config configs/tiny.py --workdir /tmp/lcf-tiny",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        chat.add_parser,
        train.add_parser,
        evaluate.add_parser,
        demo.add_parser,
        export.add_parser,
        export.add_c2c_parser,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.overrides and args.command != "train":
        parser.error("--config.KEY=VALUE overrides go with `lcf train`")
    from lcf_jax.runtime import tune_cpu_allocator  # noqa: PLC0415

    tune_cpu_allocator()
    try:
        return args.run(args)
    except (UserError, FileNotFoundError) as e:  # bad input: one line; anything else is a bug, with its traceback
        print(f"lcf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
