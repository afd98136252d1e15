"""``lightreasoner run``: the whole method in one command (sample -> train -> eval before/after -> report)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import add_config_arguments, load_yaml, refuse_unknown
from ..distributed import refuse_several_processes
from ..errors import LightReasonerError
from ..pipeline import BUDGETED_ARMS, RunConfig, run_pipeline
from ..report import text_summary
from ._settings import config_from_args, yaml_sections


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="sample -> train -> evaluate before/after -> report, in one run folder",
        description=__doc__ + " With no options: the embedded offline pair on generated arithmetic problems. "
        "Rerun the same command to resume. YAML sections sample:, train:, eval:, sft: set any other option of a stage.")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/<expert>-<amateur>-<data>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser, RunConfig)
    parser.set_defaults(func=main)


# `lightreasoner run` with no config file and none of these options gets DEFAULT_BUDGET minutes.
SIZES = ("questions", "max_steps", "eval_limit", "fit_trajectories")
DEFAULT_BUDGET = 15.0


def default_run_dir(config: RunConfig) -> Path:
    """runs/<expert>-<amateur>-<data>, each by its last name: a Hub id's model name, a file's name
    without .gguf or .jsonl (not Path.stem, which would cut "coder-1.5b" to "coder-1")."""
    names = (Path(spec).name.removesuffix(".gguf").removesuffix(".jsonl")
             for spec in (config.expert, config.amateur, config.data))
    return Path("runs") / "-".join(names)


def main(args: argparse.Namespace) -> int:
    refuse_several_processes("run it without accelerate launch or torchrun; to train on several GPUs, run the "
                             "stages one by one and launch only `lightreasoner train` (docs/TRAINING.md)")
    config = config_from_args(RunConfig, args)
    given = [name for name in SIZES if hasattr(args, name)]
    if config.time_budget is not None and given:
        raise LightReasonerError(f"--time-budget sizes --{given[0].replace('_', '-')} itself: give one or the other")
    if not args.config and not given and config.time_budget is None and set(config.arms) <= set(BUDGETED_ARMS):
        config = dataclasses.replace(config, time_budget=DEFAULT_BUDGET)
    overrides = {}
    if args.config:
        data = load_yaml(args.config)  # config_from_args checked that the sections are mappings
        # The top level holds the headline settings only; a stage's other settings go in its section.
        overrides = yaml_sections(data, args.config)
        refuse_unknown({k: v for k, v in data.items() if k not in overrides},
                       {f.name for f in dataclasses.fields(RunConfig)}, str(args.config))
    out = args.out or default_run_dir(config)
    html_path = run_pipeline(config, out, overrides=overrides, progress=not args.quiet,
                             source=str(args.config or "run config"))
    table = text_summary(out)
    if table:
        print(table)
    print(f"Report: {html_path} (and {html_path.with_suffix('.md')})")
    return 0
