"""``lightreasoner compare``: evaluation folders side by side, or arms with the paper's two tables."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare evaluation results, or arms (baseline, sft, lightreasoner and the controls)",
        description="Evaluation folders: accuracy per benchmark of each, with the difference to the first. "
                    "Run folders (`lightreasoner run`) and arm folders (`lightreasoner sft`/`control`, with "
                    "eval_after/ inside once evaluated): the paper's two tables, accuracy with the gain over the "
                    "baseline and the efficiency table (time, sampled problems, tuned tokens, average gain).")
    parser.add_argument("result_dirs", type=Path, nargs="+", metavar="DIR",
                        help="folders written by `eval`, `run`, `sft` or `control`")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="also write a bar chart of accuracy per arm (run/arm folders)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..arms import find_arms
    from ..figures import arms_plot
    from ..tables import arms_report, compare_table, mixed_answers_note

    arms = find_arms(args.result_dirs)
    plain = all(arm.efficiency is None and not arm.baseline for arm in arms)
    # Only evaluation folders: the plain side-by-side table, as it always was.
    print(compare_table(args.result_dirs) if plain else arms_report(arms))
    note = mixed_answers_note([arm.eval_dir for arm in arms if arm.eval_dir is not None])
    if note:
        print(note)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_bytes(arms_plot(arms))
        print(f"Plot: {args.plot}")
    return 0
