"""``lightreasoner export``: write a sample file in another tool's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import export_parquet, export_reference
from ..errors import LightReasonerError
from ..models import load_tokenizer, tokenizer_fingerprint
from ..sampling import read_samples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="convert a sample file to the authors' per-step JSONL or Parquet",
                                   description=__doc__)
    parser.add_argument("--format", choices=["reference", "parquet"], default="reference",
                        help="reference: the per-step JSONL of the authors' LightR_sampling.py; parquet: one row per "
                             "trajectory, loadable with datasets.load_dataset('parquet', data_files=...) and by `train`")
    parser.add_argument("--samples", type=Path, required=True, help="sample file written by `lightreasoner sample`")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--tokenizer", default=None,
                        help="reference: tokenizer to decode with (default: the expert named in the sample file)")
    parser.add_argument("--with-text", action="store_true",
                        help="parquet: include the questions, gold answers and prompts (the benchmark's text)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        count = export_parquet(args.samples, args.out, with_text=args.with_text)
        print(f"Wrote {count:,} trajectories as Parquet to {args.out}")
        return 0
    header, _ = read_samples(args.samples)
    tokenizer = load_tokenizer(args.tokenizer or header["expert"])
    if tokenizer_fingerprint(tokenizer) != header["tokenizer"]["fingerprint"]:
        raise LightReasonerError(f"{args.samples}: made with another tokenizer than {args.tokenizer or header['expert']}")
    count = export_reference(args.samples, args.out, tokenizer)
    print(f"Wrote {count:,} steps in the reference format to {args.out}")
    return 0
