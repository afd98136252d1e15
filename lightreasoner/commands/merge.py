"""``lightreasoner merge``: fold a LoRA adapter into its base model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help="merge a LoRA adapter into the base model",
                                   description="Save a standalone model (safetensors + tokenizer) with the "
                                               "adapter folded into the base weights.")
    parser.add_argument("--model", required=True, help="the base model the adapter was trained on")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `lightreasoner train`")
    parser.add_argument("--out", required=True, type=Path, help="output model folder")
    parser.add_argument("--dtype", default="auto",
                        help="dtype of the merged weights: auto (bf16 where this CPU computes it natively, else "
                             "float32: the merge runs on the CPU), bfloat16, float16, float32")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..export import merge

    out = merge(args.model, args.adapter, args.out, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    print(f"merged model -> {out}")
    return 0
