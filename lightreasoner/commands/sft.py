"""``lightreasoner sft``: the rejection-sampled SFT baseline (sample K, grade, keep the correct ones, fine-tune)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import add_config_arguments, config_from_args, load_yaml
from ..distributed import refuse_several_processes

# Their SFT meaning differs from `train`'s, so these get their own help text.
SFT_OWN_HELP = ("max_steps", "epochs", "steps_per_update", "system_prompt")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..sft import SFT_TOKENS_PER_UPDATE, SFTConfig
    from ..training import REFERENCE_SYSTEM_PROMPT, TrainConfig

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
    parser.set_defaults(func=run)


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """Training settings given in the YAML (section ``sft:`` or top level) or on the command line."""
    from ..training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if args.config:
        data = load_yaml(args.config)
        data = data["sft"] if isinstance(data.get("sft"), dict) else data
        values.update({k.replace("-", "_"): v for k, v in data.items() if k.replace("-", "_") in names})
    values.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    return values


def run(args: argparse.Namespace) -> int:
    from ..sft import SFTConfig, sample_counts, sft, sft_train_config
    from ..tables import format_seconds

    refuse_several_processes("run it without accelerate launch or torchrun")
    config = config_from_args(SFTConfig, args, section="sft")
    config = dataclasses.replace(config, train=sft_train_config(_train_values(args)))
    record = sft(config, args.out, progress=not args.quiet, say=print)
    counts = sample_counts(args.out / "samples.jsonl")
    print(f"sampled {counts['solutions_sampled']:,} solutions to {counts['problems_sampled']:,} questions "
          f"({counts['tokens_generated']:,} tokens): {counts['solutions_correct']:,} correct, "
          f"{record['examples_kept']:,} kept; trained {record['optimizer_steps']} steps on "
          f"{record['tokens_tuned']:,} tokens; {format_seconds(record['total_seconds'])} in all -> {args.out}")
    return 0
