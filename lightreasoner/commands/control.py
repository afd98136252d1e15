"""``lightreasoner control``: the format-only control arm (one-hot on the expert's own tokens at the kept steps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training import TrainConfig

    parser = subparsers.add_parser(
        "control", help="format-only control: train the kept steps on the expert's own greedy tokens, no contrast",
        description="Fine-tune the expert on the positions a LightReasoner sample file keeps, labelled one-hot with "
                    "the expert's own greedy token instead of the contrastive soft label: same sequences, positions "
                    "and optimizer steps as `train` on that file with the same options, no contrast. Writes "
                    "adapter/ and efficiency.json into --out; rerun to resume.")
    parser.add_argument("--model", required=True, help="expert: short name, model folder, .gguf file or Hub id")
    parser.add_argument("--samples", required=True, type=Path, help="sample file written by `lightreasoner sample`")
    parser.add_argument("--out", required=True, type=Path, help="arm folder to write (resumes if it exists)")
    add_config_arguments(parser, TrainConfig, exclude=("resume",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sft import control
    from ..tables import format_seconds
    from ..training import TrainConfig

    config = config_from_args(TrainConfig, args, section="train")
    record = control(args.model, args.samples, config, args.out, say=print)
    print(f"format-only control: trained {record['optimizer_steps']} steps on {record['tokens_tuned']:,} kept steps "
          f"({record['examples_kept']:,} in the file); {format_seconds(record['total_seconds'])} with sampling "
          f"-> {args.out}")
    return 0
