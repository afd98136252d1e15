"""``lightreasoner regrade DIR``: grade the answers of a folder again, by both verdicts; no model needed.

DIR is an evaluation folder, or a run folder (`lightreasoner run`, or a copy made by `lightreasoner
publish`), whose evaluation folders are all regraded and whose report is redrawn. Answers stored
without their gold answer (a published folder keeps none) get it from the benchmark data, selected
as the evaluation selected it (its benchmarks, split and subsets); only the grade is written back.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..config import add_tokenizer_trust_option
    from ..grading import DEFAULT_TIMEOUT

    parser = subparsers.add_parser("regrade", help="grade a run's or an evaluation's answers again (no model)",
                                   description=__doc__)
    parser.add_argument("folder", type=Path, metavar="DIR", help="evaluation folder or run folder")
    parser.add_argument("--data-dir", default=None,
                        help="folder with <benchmark>/<split>.jsonl (default: the folder the evaluation read)")
    parser.add_argument("--grading-timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds allowed to grade one answer (default: {DEFAULT_TIMEOUT})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tokenizer_trust_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import LightReasonerError
    from ..answers import find_eval_folders, regrade
    from ..layout import RUN_KIND, folder_kind
    from ..report import build_report, report_tokenizer, text_summary
    from ..tables import results_table

    folders = find_eval_folders(args.folder)
    if not folders:
        raise LightReasonerError(f"{args.folder}: no evaluation folder here or below it (a run.json of "
                                 "kind eval beside the answer files)")
    summaries = {folder: regrade(folder, data_dir=args.data_dir, timeout=args.grading_timeout,
                                 progress=not args.quiet) for folder in folders}
    if folders == [args.folder]:
        print(results_table(summaries[args.folder]))
        return 0
    print(f"Regraded {len(folders)} evaluation folders: {', '.join(str(f.relative_to(args.folder)) for f in folders)}")
    if folder_kind(args.folder) == RUN_KIND:
        tokenizer = report_tokenizer(args.folder, trust_remote_code=args.trust_remote_code)
        md_path, html_path = build_report(args.folder, tokenizer=tokenizer)
        print(text_summary(args.folder))
        print(f"Report: {html_path} (and {md_path})")
    return 0
