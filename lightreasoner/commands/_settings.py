"""A command's settings: dataclass defaults < ``--config`` YAML file < command line.

The YAML file of any command may be a whole run's (``lightreasoner run``): headline settings at the
top level and any stage's own in its section (``sample:``, ``train:``, ``eval:``, ``sft:``). Given
such a file (its top level holds a setting only ``run`` has, such as ``expert`` or ``questions``), a
command of one stage takes the settings ``run`` would give that stage: the headline settings mapped
as ``run`` maps them (``expert`` is the model, ``questions`` the limit, ...), then the section. Given a
file of the command's own settings, it reads its section, or the top level when there is none. Every
key of the file must be a setting of some command, so a typo is refused wherever it is. This knows
every stage's config; the dataclass machinery it uses (:mod:`lightreasoner.config`) knows none.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from ..config import build_config, config_to_dict, load_yaml, refuse_unknown
from ..errors import LightReasonerError
from ..evaluation import EvalConfig
from ..pipeline import RunConfig, sft_stage_config, stage_configs
from ..sampling import SampleConfig
from ..sft import SFTConfig
from ..training import TrainConfig

C = TypeVar("C")

# A YAML file may hold a run's settings: headline settings at the top level, any stage's own in its
# section. Commands of one stage read their section (or the top level when there is none).
SECTIONS = ("sample", "train", "eval", "sft")


def all_setting_names() -> set[str]:
    """Every setting any command reads from a YAML file's top level, and the section names."""
    classes = (RunConfig, SampleConfig, TrainConfig, EvalConfig, SFTConfig)
    return {f.name for cls in classes for f in dataclasses.fields(cls)} | set(SECTIONS)


def yaml_sections(data: dict[str, Any], path: str | Path, known: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The stage sections of a YAML file's top level. For a command whose own settings (``known``)
    include ``sample`` (evaluation's seeded subset sizes: a number or a mapping of benchmark names), a
    top-level ``sample`` is the sampling stage's section only when it is a mapping holding a sampling
    setting; for the others it is always the section."""
    sampling = {f.name for f in dataclasses.fields(SampleConfig)}
    sections = {}
    for name in SECTIONS:
        if name not in data:
            continue
        value = data[name]
        if name in known and not (isinstance(value, dict) and any(k.replace("-", "_") in sampling for k in value)):
            continue
        if not isinstance(value, dict):
            raise LightReasonerError(f"{path}: section {name!r} must be a mapping of option: value")
        sections[name] = value
    return sections


def yaml_values(path: Path, section: str | None, known: set[str], also: typing.Iterable[str] = ()
                ) -> tuple[dict[str, Any], str]:
    """The settings of ``section`` (or the top level) of the YAML file ``path`` that ``known`` holds, and
    where they came from for messages. Every key of the file must be a setting of some command; in the
    section, one of ``known`` or ``also`` (what the command's other configs read there)."""
    data = load_yaml(path)
    sections = yaml_sections(data, path, known)
    top = {k: v for k, v in data.items() if k not in sections}
    refuse_unknown(top, all_setting_names(), str(path))
    run_only = {f.name for f in dataclasses.fields(RunConfig)} - known - set(also)
    if section is not None and any(k.replace("-", "_") in run_only for k in top):
        return {k: v for k, v in run_stage_settings(top, sections, path, section).items() if k in known}, str(path)
    if section is not None and section in data:
        refuse_unknown(data[section], known | set(also), f"{path}: {section}")
        values, where = data[section], f"{path}: {section}"
    else:
        values, where = top, str(path)
    return {k.replace("-", "_"): v for k, v in values.items() if k.replace("-", "_") in known}, where


def run_stage_settings(top: dict[str, Any], sections: dict[str, dict[str, Any]], path: str | Path,
                       section: str) -> dict[str, Any]:
    """The settings ``lightreasoner run`` gives the stage ``section`` from a run file's top level and
    sections; for ``sft``, its own settings and its training's in one mapping (their names differ)."""
    run = build_config(RunConfig, top, source=str(path))
    sample, train, evaluate = stage_configs(run, sections, source=str(path))
    if section == "sft":
        sft = sft_stage_config(run, train, sections.get("sft"), source=str(path))
        return {**config_to_dict(sft.train), **{k: v for k, v in config_to_dict(sft).items() if k != "train"}}
    return config_to_dict({"sample": sample, "train": train, "eval": evaluate}[section])


def values_from_args(args: argparse.Namespace, known: set[str], *, section: str | None = None,
                     also: typing.Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings in ``known`` given by ``--config`` (its ``section``, or its top level) and on the
    command line (which wins), and where each came from."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if getattr(args, "config", None):
        values, where = yaml_values(args.config, section, known, also)
        origins = dict.fromkeys(values, where)
    typed = {name: getattr(args, name) for name in known if hasattr(args, name)}
    values.update(typed)
    origins.update(dict.fromkeys(typed, "command line"))
    return values, origins


def config_from_args(config_cls: type[C], args: argparse.Namespace, *, section: str | None = None,
                     also: typing.Iterable[str] = ()) -> C:
    """Merge dataclass defaults < YAML (``--config``, its ``section`` if it has one) < command line.
    ``also``: settings of the section that another config of the command reads."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values, origins = values_from_args(args, names, section=section, also=also)
    return build_config(config_cls, values, source=str(getattr(args, "config", None) or "command line"),
                        origins=origins)
