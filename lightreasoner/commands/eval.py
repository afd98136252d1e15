"""``lightreasoner eval``: zero-shot greedy pass@1 on the paper's benchmarks (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_arguments
from ..distributed import refuse_several_processes
from ._settings import config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation import EvalConfig

    parser = subparsers.add_parser(
        "eval", help="evaluate a model (and adapter) on math benchmarks",
        description="Greedy zero-shot evaluation graded like the Qwen2.5-Math toolkit. Writes "
                    "<benchmark>.jsonl per-sample records, summary.json and prints a table. Rerun the same "
                    "command to resume an interrupted evaluation.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--compare-to", type=Path, nargs="+", default=[], metavar="DIR",
                        help="earlier evaluation folders to show side by side with this one")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser, EvalConfig)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..evaluation import EvalConfig, evaluate
    from ..tables import compare_table, results_table

    refuse_several_processes("run it without accelerate launch or torchrun")
    config = config_from_args(EvalConfig, args, section="eval")
    summary = evaluate(config, args.out, progress=not args.quiet)
    print(results_table(summary))
    print(f"results: {args.out}")
    if args.compare_to:
        print()
        print(compare_table([args.out, *args.compare_to]))
    return 0
