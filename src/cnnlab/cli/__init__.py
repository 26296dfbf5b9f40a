"""`cnnlab` command line. Each command group lives in its own module exposing
`register(subparsers)`; user errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from cnnlab import __version__
from cnnlab.errors import CnnlabError

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "cnnlab.cli.blocks",
    "cnnlab.cli.cifar",
    "cnnlab.cli.faces",
    "cnnlab.cli.report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Compare CNN building blocks on CIFAR-10 and train Siamese face verifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
