"""`cnnlab` command line. Each command group lives in its own module exposing
`register(subparsers)`. Building the parser imports none of the library (torch, scikit-learn,
optuna): a command imports its work inside the function that runs it, and the flags that come
from the library's configs and registries are read from `cnnlab.cli.catalog`.

One error boundary (`run_guarded`, also used by `python -m cnnlab.demo`): a `CnnlabError` (a
user error: bad flag value, missing or malformed file, unwritable --out) is one line and exit 2;
any other exception is one line naming the command and the exception, exit 1; Ctrl-C is exit
130. `--debug` (before or after the command) or `CNNLAB_DEBUG=1` adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import select
import sys
import traceback
from collections.abc import Callable

from cnnlab import __version__
from cnnlab.core.errors import CnnlabError

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "cnnlab.cli.blocks",
    "cnnlab.cli.cifar",
    "cnnlab.cli.faces",
    "cnnlab.cli.report",
]
DEBUG_ENV = "CNNLAB_DEBUG"
DEBUG_HELP = f"show the traceback of an error (or set {DEBUG_ENV}=1)"


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, like every other cnnlab error: argparse's usage block would
    bury the line that says what is wrong. `--help` still shows the usage."""

    def error(self, message: str):
        # "cnnlab: error:" as every other error starts; the subcommand is named in the hint.
        self.exit(2, f"cnnlab: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cnnlab",
        description="Compare CNN building blocks on CIFAR-10 and train Siamese face verifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_debug_to_commands(parser)
    return parser


def _add_debug_to_commands(parser: argparse.ArgumentParser) -> None:
    """`--debug` on every command too, so it can be appended to the command line that failed.
    SUPPRESS: a command that is not given --debug leaves the root's value alone."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in set(action.choices.values()):  # a set: aliases share one parser
                if "--debug" not in command._option_string_actions:
                    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_to_commands(command)


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def run_guarded(fn: Callable[[], int | None], command: str, debug: bool = False) -> int:
    """Run `fn` behind the error boundary; `command` names it in the line of an unexpected error."""
    debug = debug_requested(debug)
    try:
        return int(fn() or 0)
    except CnnlabError as exc:
        if debug:
            traceback.print_exc()
        # Messages are written as one line; a path or value holding a newline must not split it.
        print(f"cnnlab: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _unexpected(exc, command, debug)
        # The reader of our output went away (`cnnlab ... --json | head`): nothing to report.
        # stdout now points at /dev/null, so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)
    except Exception as exc:  # the boundary: anything else is a bug or an environment problem
        return _unexpected(exc, command, debug)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (the broken pipe was ours, not some other
    one a library used): poll reports an error on such a write end."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


def _unexpected(exc: BaseException, command: str, debug: bool) -> int:
    from cnnlab.core.files import first_line
    if debug:
        traceback.print_exc()
    hint = "" if debug else " (run with --debug for the traceback)"
    # first_line: foreign messages (PyTorch's, NumPy's) may run to paragraphs.
    print(f"{command}: unexpected error: {first_line(exc)}{hint}", file=sys.stderr)
    return 1


def command_name(args: argparse.Namespace) -> str:
    """'cnnlab faces verify' from the parsed subcommand names."""
    words = ["cnnlab", args.command]
    sub = getattr(args, f"{args.command}_command", None)
    return " ".join(words + ([sub] if sub else []))


def line_buffered_output() -> None:
    """Each printed line reaches a log file when it is printed. Python block-buffers stdout that
    is not a terminal, so `nohup cnnlab faces train > run.log` would show its epoch lines only
    at exit (or lose them to kill -9)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
            stream.reconfigure(line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    line_buffered_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        # Under torchrun every process runs the command; rank 0 speaks for all (errors still show).
        sys.stdout = open(os.devnull, "w")
    return run_guarded(lambda: args.func(args), command_name(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
