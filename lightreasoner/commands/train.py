"""``lightreasoner train``: fine-tune the expert on a sample file (ours or the authors' format)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import add_config_arguments
from ._settings import config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training import TrainConfig

    parser = subparsers.add_parser(
        "train", help="fine-tune the expert on kept steps (LoRA by default)",
        description="Packed soft-label KL fine-tuning of the expert on a sample file. Run it directly for one "
                    "process or under `accelerate launch` for several (DDP; FSDP/DeepSpeed via accelerate config).")
    parser.add_argument("--model", required=True, help="expert: short name, model folder, .gguf file or Hub id")
    parser.add_argument("--samples", required=True, type=Path, help="sample file (ours or the authors' per-step JSONL)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (adapter or model, tokenizer, log)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="train on a sample file whose sampling run did not finish (refused otherwise)")
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..sampling import check_complete
    from ..training import TrainConfig, train_from_file

    config = config_from_args(TrainConfig, args, section="train")
    if not args.allow_incomplete:
        check_complete(args.samples)
    summary = train_from_file(args.model, args.samples, config, args.out)
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch every process returns here
        print(f"trained {summary['optimizer_steps']} steps on {summary['tokens_tuned']} kept steps "
              f"in {summary['seconds']:.1f} s -> {args.out}")
    return 0
