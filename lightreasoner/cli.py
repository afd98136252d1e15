"""``lightreasoner`` command line: a thin layer over the Python API.

Each subcommand lives in ``lightreasoner/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int | None``.

Every error a user can cause or fix (bad input, a full or read-only disk, a missing GPU) ends as
one line ``lightreasoner COMMAND: error: ...`` and exit code 2; anything else is a bug and ends
as one line and exit code 1. ``--debug`` (or ``LIGHTREASONER_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import LightReasonerError

# Order in `lightreasoner --help`; commands not listed follow alphabetically.
ORDER = ["run", "sample", "inspect", "train", "merge", "sft", "control", "eval", "score", "compare", "report", "publish",
         "restore", "export", "models"]
DEBUG_ENV = "LIGHTREASONER_DEBUG"
DEBUG_HELP = f"show the full traceback of an error (also: {DEBUG_ENV}=1)"


class Parser(argparse.ArgumentParser):
    """No abbreviated options: ``--lr`` must not quietly mean ``--lr-scheduler``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any (sub)command too; subcommands of subcommands get it as well."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lightreasoner",
        description="LightReasoner: a small amateur model teaches a larger expert where its reasoning is strong.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        importlib.import_module(f"{commands.__name__}.{name}").register(subparsers)
    for sub in subparsers.choices.values():
        _add_debug(sub)
    parser.add_argument("--debug", action="store_true", default=False, help=DEBUG_HELP)
    return parser


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def describe(error: BaseException) -> str | None:
    """The one-line message of an error the user can act on, or None for a bug."""
    from safetensors import SafetensorError

    if isinstance(error, LightReasonerError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):  # readers name file and line; this is the fallback
        return f"a file is not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        what = error.strerror or _first_line(error)
        hint = {errno.ENOSPC: "; free some space and run the same command again to continue",
                errno.EDQUOT: "; free some space and run the same command again to continue",
                errno.EROFS: "; choose an output on a writable disk",
                errno.EACCES: "; choose an output you may write to"}.get(error.errno, "")
        return f"{where}{what}{hint}"
    if isinstance(error, SafetensorError):
        return f"a .safetensors file cannot be read: {_first_line(error)}"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return f"out of memory ({_first_line(error)}); try a smaller --batch-size or more micro-batches"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"lightreasoner {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = describe(exc)
        if message is None:
            print(f"lightreasoner {args.command}: internal error: {type(exc).__name__}: {_first_line(exc)} (rerun "
                  f"with --debug for the traceback, and please report it)", file=sys.stderr)
            return 1
        print(f"lightreasoner {args.command}: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", LightReasonerError.exit_code)


if __name__ == "__main__":
    sys.exit(main())
