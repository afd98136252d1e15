"""``lightreasoner sample``: expert trajectories contrasted with the amateur -> soft-label samples."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_arguments
from ..distributed import refuse_several_processes
from ..sampling import SampleConfig, sample, summary
from ._settings import config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sample", help="sample contrastive soft-label steps (the sampling stage)",
                                   description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="sample file to write (JSONL); resumes if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser, SampleConfig)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    refuse_several_processes("run it without accelerate launch or torchrun")
    config = config_from_args(SampleConfig, args, section="sample")
    stats = sample(config, args.out, progress=not args.quiet)
    print(summary(stats, args.out, config))
    return 0
