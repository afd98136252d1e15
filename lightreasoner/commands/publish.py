"""``lightreasoner publish RUN_DIR OUT``: the shown part of a run folder, ready to commit.

Settings, stage times, summaries, logs, report pages, figures and the evaluation answers (without
the benchmark's prompts and gold answers); no model weights, checkpoints or sample files, and the
arms' LoRA adapters only with ``--adapters``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..publish import publish


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("publish", help="copy a run folder's summaries and report, not its weights or data",
                                   description=__doc__)
    parser.add_argument("run_dir", type=Path, help="folder made by `lightreasoner run`")
    parser.add_argument("out", type=Path, help="folder to write (e.g. results/NAME)")
    parser.add_argument("--adapters", action="store_true",
                        help="also copy each arm's LoRA adapter (config and safetensors weights: a few MB at small "
                             "ranks), so that `restore` need not train again")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    written = publish(args.run_dir, args.out, adapters=args.adapters)
    print(f"Published {len(written)} files of {args.run_dir} into {args.out}")
    return 0
