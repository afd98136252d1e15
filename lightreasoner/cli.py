"""``lightreasoner`` command line: a thin layer over the Python API.

Each subcommand lives in ``lightreasoner/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import LightReasonerError

# Order in `lightreasoner --help`; commands not listed follow alphabetically.
ORDER = ["run", "sample", "inspect", "train", "merge", "sft", "control", "eval", "score", "compare", "report", "publish",
         "restore", "export", "models"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightreasoner",
        description="LightReasoner: a small amateur model teaches a larger expert where its reasoning is strong.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        importlib.import_module(f"{commands.__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LightReasonerError as exc:
        print(f"lightreasoner {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lightreasoner {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
