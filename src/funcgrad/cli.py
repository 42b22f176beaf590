"""The ``funcgrad`` command: ``funcgrad <command> [options]``, one module per command.

Each command module defines ``add_arguments(parser)`` (its options, with no heavy imports) and
``run(args) -> int`` (the exit status). Adding a command is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("funcgrad.cli_train", "train a model on a data set; print loss and accuracy"),
    "tour": ("funcgrad.cli_tour", "train, check and draw the seed models; write an HTML page"),
    "check": ("funcgrad.cli_check", "compare gradients: funcgrad, JAX, hand-derived, finite diffs"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="funcgrad",
        description="See and check how neural networks get their gradients, then train them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
