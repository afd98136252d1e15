"""``lightreasoner export``: write a sample file in another tool's format."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import export_reference
from ..errors import LightReasonerError
from ..models import load_tokenizer, tokenizer_fingerprint
from ..sampling import read_samples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="convert a sample file to the authors' per-step JSONL",
                                   description=__doc__)
    parser.add_argument("--format", choices=["reference"], default="reference",
                        help="reference: the per-step JSONL of the authors' LightR_sampling.py")
    parser.add_argument("--samples", type=Path, required=True, help="sample file written by `lightreasoner sample`")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer to decode with (default: the expert named in the sample file)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    header, _ = read_samples(args.samples)
    tokenizer = load_tokenizer(args.tokenizer or header["expert"])
    if tokenizer_fingerprint(tokenizer) != header["tokenizer"]["fingerprint"]:
        raise LightReasonerError(f"{args.samples}: made with another tokenizer than {args.tokenizer or header['expert']}")
    count = export_reference(args.samples, args.out, tokenizer)
    print(f"Wrote {count:,} steps in the reference format to {args.out}")
    return 0
