"""``lightreasoner compare``: evaluation folders side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare evaluation results side by side",
        description="Accuracy per benchmark of each evaluation output folder, with the difference to the first.")
    parser.add_argument("result_dirs", type=Path, nargs="+", metavar="DIR", help="folders written by `eval`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tables import compare_table

    print(compare_table(args.result_dirs))
    return 0
