"""``lightreasoner sft``: the rejection-sampled SFT baseline (sample K, grade, keep the correct ones, fine-tune)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import add_config_arguments
from ..distributed import refuse_several_processes
from ..layout import SAMPLES_FILE
from ._settings import config_from_args, values_from_args

# Their SFT meaning differs from `train`'s, so these get their own help text.
SFT_OWN_HELP = ("max_steps", "epochs", "steps_per_update", "system_prompt")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..sft import SFT_TOKENS_PER_UPDATE, SFTConfig
    from ..examples import REFERENCE_SYSTEM_PROMPT
    from ..training import TrainConfig

    parser = subparsers.add_parser(
        "sft", help="rejection-sampled SFT baseline: sample, grade against gold answers, fine-tune on the correct",
        description="Sample K solutions per training question from the expert, grade each against the gold answer "
                    "with the evaluation grader, keep the finished correct distinct ones, and fine-tune with "
                    "cross-entropy on their completion tokens (prompt masked), with the same LoRA/optimizer options "
                    "as `train`. Writes samples.jsonl, adapter/ and efficiency.json into --out; rerun to resume. "
                    "The questions need gold answers.")
    parser.add_argument("--out", type=Path, required=True, help="arm folder to write (resumes if it exists)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser, SFTConfig, exclude=("train",))
    add_config_arguments(parser, TrainConfig, exclude=("resume", *SFT_OWN_HELP))
    group = parser.add_argument_group("SFT prompt and training length")
    group.add_argument("--system-prompt", default=argparse.SUPPRESS,
                       help=f"system prompt of the sampling chat template (default: {REFERENCE_SYSTEM_PROMPT})")
    group.add_argument("--epochs", type=float, default=argparse.SUPPRESS,
                       help="passes over the kept solutions' tokens (default: 1, unless --max-steps is given)")
    group.add_argument("--max-steps", type=int, default=argparse.SUPPRESS,
                       help="train exactly this many optimizer steps instead of one epoch")
    group.add_argument("--steps-per-update", type=int, default=argparse.SUPPRESS,
                       help=f"completion tokens per optimizer step (default: {SFT_TOKENS_PER_UPDATE})")
    parser.set_defaults(func=main)


def _names(config_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_cls)}


def main(args: argparse.Namespace) -> int:
    from ..sft import SFTConfig, sample_counts, sft, sft_train_config
    from ..tables import format_seconds
    from ..training import TrainConfig

    refuse_several_processes("run it without accelerate launch or torchrun")
    # The YAML section sft: (or the top level) holds the settings of both configs.
    config = config_from_args(SFTConfig, args, section="sft", also=_names(TrainConfig))
    values, origins = values_from_args(args, _names(TrainConfig), section="sft", also=_names(SFTConfig))
    config = dataclasses.replace(config, train=sft_train_config(values, origins))
    record = sft(config, args.out, progress=not args.quiet, say=print)
    counts = sample_counts(args.out / SAMPLES_FILE)
    print(f"sampled {counts['solutions_sampled']:,} solutions to {counts['problems_sampled']:,} questions "
          f"({counts['tokens_generated']:,} tokens): {counts['solutions_correct']:,} correct, "
          f"{record['examples_kept']:,} kept; trained {record['optimizer_steps']} steps on "
          f"{record['tokens_tuned']:,} tokens; {format_seconds(record['total_seconds'])} in all -> {args.out}")
    return 0
