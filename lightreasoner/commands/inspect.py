"""``lightreasoner inspect SAMPLES``: what the contrast finds on this pair, computed from a sample file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="what the contrast finds in a sample file: KL, kept steps, labels, overlap with the "
                        "expert's own uncertainty, and a plain reading",
        description="KL quantiles and the kept share; kept steps on digits/operators, words and markup/whitespace; "
                    "what the soft labels ask of the expert; the most kept tokens and label changes; with the "
                    "expert's own next-token entropies (--model, or cached by an entropy or expert control in the "
                    "sample file's folder) the overlap between kept and highest-entropy positions. Ends with a "
                    "plain reading generated from the numbers.")
    parser.add_argument("samples", type=Path, help="sample file (JSONL or its Parquet export)")
    parser.add_argument("--model", default=None,
                        help="expert whose entropies to compute (one teacher-forced float32 pass); also the tokenizer "
                             "(default tokenizer: the expert named in the sample file)")
    parser.add_argument("--top", type=int, default=10, help="tokens and label changes listed (default: 10)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..controls import expert_entropies
    from ..errors import LightReasonerError
    from ..inspection import findings_text, inspect_samples
    from ..models import load_tokenizer, tokenizer_fingerprint
    from ..sampling import read_samples

    header, records = read_samples(args.samples)
    spec = args.model or header.get("expert")
    tokenizer = load_tokenizer(spec)
    if tokenizer_fingerprint(tokenizer) != header.get("tokenizer", {}).get("fingerprint"):
        raise LightReasonerError(f"{args.samples}: made with another tokenizer than {spec}'s")
    entropies = source = None
    if args.model:
        entropies = expert_entropies(args.model, records, header["tokenizer"]["vocab_size"], progress=not args.quiet)
        source = f"expert {args.model} (float32), computed now"
    findings = inspect_samples(args.samples, tokenizer=tokenizer, entropies=entropies, entropy_source=source,
                               top=args.top)
    print(json.dumps(findings, indent=2, ensure_ascii=False) if args.json else findings_text(findings))
    return 0
