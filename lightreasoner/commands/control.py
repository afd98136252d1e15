"""``lightreasoner control``: a control arm, LightReasoner's trajectories trained at other positions or with other labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_arguments
from ..distributed import refuse_several_processes
from ._settings import config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..arms import LABELS, POSITIONS
    from ..training import TrainConfig

    parser = subparsers.add_parser(
        "control", help="a control arm: the trajectories of a sample file trained at other positions or labels",
        description="Fine-tune the expert on the trajectories of a LightReasoner sample file at --positions (kept: "
                    "the contrast's kept steps; random: as many per trajectory, drawn with --seed; entropy: as many "
                    "where the expert's own next-token entropy is highest, no amateur) with --labels (one-hot: the "
                    "expert's greedy token; contrast: LightReasoner's soft label; expert: the expert's own "
                    "distribution on its plausible set). kept/one-hot is the format-only arm, random/one-hot "
                    "random-positions, the others <positions>-<labels>. Same optimizer steps as `train` on that file "
                    "with the same options. Writes examples.jsonl (what was trained, in the sample-file format), "
                    "adapter/ and efficiency.json into --out; rerun to resume.")
    parser.add_argument("--model", required=True, help="expert: short name, model folder, .gguf file or Hub id")
    parser.add_argument("--samples", required=True, type=Path, help="sample file written by `lightreasoner sample`")
    parser.add_argument("--out", required=True, type=Path, help="arm folder to write (resumes if it exists)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="train on a sample file whose sampling run did not finish (refused otherwise)")
    parser.add_argument("--positions", choices=POSITIONS, default="kept", help="where the labels go (default: kept)")
    parser.add_argument("--labels", choices=LABELS, default="one-hot", help="what the labels are (default: one-hot)")
    parser.add_argument("--amateur", default=None,
                        help="amateur for contrast labels away from the kept steps (default: the sample file's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser, TrainConfig, exclude=("resume",))
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..controls import control
    from ..sampling import check_complete
    from ..tables import format_seconds
    from ..training import TrainConfig

    # The examples are written by one process (a teacher-forced pass on one device, appended to one file).
    refuse_several_processes("run it without accelerate launch or torchrun")
    config = config_from_args(TrainConfig, args, section="train")
    if not args.allow_incomplete:
        check_complete(args.samples)
    record = control(args.model, args.samples, config, args.out, positions=args.positions, labels=args.labels,
                     amateur=args.amateur, progress=not args.quiet, say=print)
    print(f"{record['arm']} control: trained {record['optimizer_steps']} steps on {record['tokens_tuned']:,} labelled "
          f"positions ({record['examples_kept']:,} kept steps in the file); "
          f"{format_seconds(record['total_seconds'])} with sampling -> {args.out}")
    return 0
