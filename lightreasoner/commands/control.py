"""``lightreasoner control``: the control arms (one-hot on the expert's own tokens at the kept steps, or at random)."""

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
                    "and optimizer steps as `train` on that file with the same options, no contrast. With "
                    "--positions random, the same labels go to as many positions of each trajectory drawn at random "
                    "(seeded by --seed): no contrast in the positions either. Writes adapter/ and efficiency.json "
                    "into --out; rerun to resume.")
    parser.add_argument("--model", required=True, help="expert: short name, model folder, .gguf file or Hub id")
    parser.add_argument("--samples", required=True, type=Path, help="sample file written by `lightreasoner sample`")
    parser.add_argument("--out", required=True, type=Path, help="arm folder to write (resumes if it exists)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="train on a sample file whose sampling run did not finish (refused otherwise)")
    parser.add_argument("--positions", choices=("kept", "random"), default="kept",
                        help="label the kept steps (format-only) or as many random positions per trajectory")
    add_config_arguments(parser, TrainConfig, exclude=("resume",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sampling import check_complete
    from ..sft import control
    from ..tables import format_seconds
    from ..training import TrainConfig

    config = config_from_args(TrainConfig, args, section="train")
    if not args.allow_incomplete:
        check_complete(args.samples)
    record = control(args.model, args.samples, config, args.out, positions=args.positions, say=print)
    print(f"{record['arm']} control: trained {record['optimizer_steps']} steps on {record['tokens_tuned']:,} labelled "
          f"positions ({record['examples_kept']:,} kept steps in the file); "
          f"{format_seconds(record['total_seconds'])} with sampling -> {args.out}")
    return 0
