"""``lightreasoner score``: grade completions produced elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..config import finite_float
    from ..grading import DEFAULT_TIMEOUT

    parser = subparsers.add_parser(
        "score", help="grade completions made elsewhere",
        description="Each input line has 'completion' and either 'gold' (the final answer) or an 'id' of the "
                    "benchmark's data, and optionally 'finish' (\"length\" when the completion was cut off by a "
                    "token limit). Each output line is the input line plus 'pred', 'source', 'correct' (the "
                    "Qwen2.5-Math toolkit's verdict) and 'correct_strict' (also a stated final answer in a "
                    "completion that was not cut off), in input order.")
    parser.add_argument("--benchmark", required=True, help="benchmark whose answer rules apply (e.g. gsm8k)")
    parser.add_argument("--input", type=Path, required=True, metavar="FILE", help="JSONL with completions")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="graded JSONL to write")
    parser.add_argument("--data-dir", default=None, help="folder with <benchmark>/<split>.jsonl (for 'id' lines)")
    parser.add_argument("--split", default="test", help="data split for 'id' lines (default: test)")
    parser.add_argument("--grading-timeout", type=finite_float, default=DEFAULT_TIMEOUT,
                        help=f"seconds allowed to grade one answer (default: {DEFAULT_TIMEOUT})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import LightReasonerError
    from ..answers import score
    from ..tables import accuracy_ci

    if args.grading_timeout <= 0:
        raise LightReasonerError(f"--grading-timeout: must be > 0, got {args.grading_timeout}")
    summary = score(args.benchmark, args.input, args.out, data_dir=args.data_dir, split=args.split,
                    timeout=args.grading_timeout, progress=not args.quiet)
    print(f"{summary['benchmark']}: {summary['correct']}/{summary['n']} correct, accuracy {accuracy_ci(summary)}; "
          f"strict {summary['correct_strict']}/{summary['n']}, {accuracy_ci(summary, '_strict')}; "
          f"cut off {summary['cut_off']}; graded lines: {args.out}")
    return 0
