"""Config dataclasses <-> YAML files <-> command-line options.

Every stage has a dataclass whose defaults are the paper's settings. A field becomes a
``--kebab-case`` option; ``--config FILE.yaml`` supplies values for any field; precedence is
dataclass default < YAML < command line. Field metadata ``help`` documents the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import LightReasonerError

C = TypeVar("C")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sizes(text: str) -> int | dict[str, int]:
    """``300`` -> 300; ``gsm8k=300,math500=100`` -> {"gsm8k": 300, "math500": 100}."""
    try:
        if "=" not in text:
            return int(text)
        return {name.strip(): int(size) for name, size in (part.split("=") for part in _comma_list(text))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or NAME=N,NAME=N, got {text!r}") from None


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``list[str]`` -> list; anything else unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    return origin or annotation


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """Add one option per field of ``config_cls`` plus ``--config``.

    Options default to ``argparse.SUPPRESS`` so that only what the user typed overrides YAML.
    """
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for field in dataclasses.fields(config_cls):
        if field.name in exclude or not field.init:
            continue
        option = "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if dict in {typing.get_origin(a) for a in typing.get_args(hints[field.name])}:
            group.add_argument(option, type=_sizes, default=argparse.SUPPRESS, metavar="N|NAME=N,..", help=help_text)
        elif kind is bool:
            group.add_argument(option, type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS,
                               metavar="BOOL", help=help_text)
        elif kind is list:
            group.add_argument(option, type=_comma_list, default=argparse.SUPPRESS, metavar="A,B", help=help_text)
        else:
            group.add_argument(option, type=kind, default=argparse.SUPPRESS, help=help_text)
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                            help="YAML file setting any option above; the command line wins")


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise an error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LightReasonerError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise LightReasonerError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LightReasonerError(f"{path}: expected a mapping of option: value at the top level")
    return data


def build_config(config_cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Instantiate ``config_cls`` from a mapping whose keys may use dashes or underscores."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise LightReasonerError(f"{source}: unknown setting {key!r} for {config_cls.__name__}")
        if _base_type(hints[name]) is list and isinstance(value, str):
            value = _comma_list(value)
        kwargs[name] = value
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LightReasonerError(f"{source}: {exc}") from None


def config_from_args(config_cls: type[C], args: argparse.Namespace, *, section: str | None = None) -> C:
    """Merge dataclass defaults < YAML (``--config``, optionally one ``section`` of it) < command line."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        data = load_yaml(args.config)
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        # A shared YAML may hold settings for several stages: take the ones this stage knows.
        values.update({k: v for k, v in data.items() if k.replace("-", "_") in names})
        unknown = [k for k, v in data.items() if k.replace("-", "_") not in names and not isinstance(v, dict)]
        if section is None and unknown:
            raise LightReasonerError(f"{args.config}: unknown setting {unknown[0]!r} for {config_cls.__name__}")
        source = str(args.config)
    values.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    return build_config(config_cls, values, source=source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config dataclass (paths as strings)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sft": {"train": {"lora_r": 8}}} -> {"sft.train.lora_r": 8}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_settings(path: str | Path, previous: dict[str, Any], current: dict[str, Any],
                        free: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse ``current`` where it differs from ``previous``, the settings ``path`` was made with,
    naming the first differing setting by its dotted name; settings named in ``free`` (at any depth)
    may change."""
    before, now = _flat(previous), _flat(current)
    for key in sorted(before.keys() | now.keys()):
        if before.get(key) != now.get(key) and key.rsplit(".", 1)[-1] not in free:
            raise LightReasonerError(f"{path}: made with {key}={before.get(key)!r}, now {now.get(key)!r}; "
                                     "use another --out")
