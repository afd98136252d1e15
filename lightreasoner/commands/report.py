"""``lightreasoner report DIR``: (re)draw the report of a run folder (also a published one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_tokenizer_trust_option
from ..errors import LightReasonerError
from ..layout import RUN_FILE, RUN_KIND, folder_kind
from ..report import build_report, report_tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write report.md and report.html of a run folder",
                                   description=__doc__)
    parser.add_argument("run_dir", type=Path, help="folder made by `lightreasoner run` or `lightreasoner publish`")
    add_tokenizer_trust_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if folder_kind(args.run_dir) != RUN_KIND:
        raise LightReasonerError(f"{args.run_dir / RUN_FILE}: not the run.json of a `lightreasoner run` folder")
    tokenizer = report_tokenizer(args.run_dir, trust_remote_code=args.trust_remote_code)
    md_path, html_path = build_report(args.run_dir, tokenizer=tokenizer)
    print(f"Report: {html_path} (and {md_path})")
    return 0
