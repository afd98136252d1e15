"""``lightreasoner restore PUBLISHED RUN_DIR``: a run folder again from a published one and the data.

Sample files get their questions, gold answers and prompts back from ``--data-dir``; training
stages are marked to be redone unless their adapter was published (`publish --adapters`);
evaluation answers resume as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_tokenizer_trust_option
from ..publish import restore


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("restore", help="rebuild a run folder from a published one and the benchmark data",
                                   description=__doc__)
    parser.add_argument("published", type=Path, help="folder made by `lightreasoner publish`")
    parser.add_argument("run_dir", type=Path, help="new run folder to write")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with <benchmark>/<split>.jsonl files")
    add_tokenizer_trust_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    written = restore(args.published, args.run_dir, data_dir=args.data_dir, trust_remote_code=args.trust_remote_code)
    print(f"Restored {len(written)} files of {args.published} into {args.run_dir}; rerun the same "
          f"`lightreasoner run ... --out {args.run_dir}` to continue")
    return 0
