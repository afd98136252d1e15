"""Config dataclasses <-> YAML files <-> command-line options.

Every stage has a dataclass whose defaults are the paper's settings. A field becomes a
``--kebab-case`` option; ``--config FILE.yaml`` supplies values for any field; precedence is
dataclass default < YAML < command line. Field metadata ``help`` documents the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import LightReasonerError, line_of

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


# ----------------------------------------------------------------------------------------------
# Checking values: every config dataclass calls check_fields from __post_init__, so a value is
# checked the same way whether it came from the command line, a YAML file or Python.


class SettingError(ValueError):
    """A setting has a value its field does not take; ``name`` is the field."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list of text",
          dict: "NAME: N pairs"}


def _checked(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` takes it (a whole number given for a float becomes a float), or
    raise TypeError. Annotations other than the ones config fields use are not checked."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        for option in arguments:
            if option is not type(None):
                try:
                    return _checked(value, option)
                except TypeError:
                    pass
        raise TypeError(" or ".join(_KINDS.get(_base_type(a), str(a)) for a in arguments if a is not type(None)))
    kind = origin or annotation
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if kind is list and isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    if kind is dict and isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()):
        return value
    if kind in _KINDS:
        raise TypeError(_KINDS[kind])
    if dataclasses.is_dataclass(kind) and not isinstance(value, kind):
        raise TypeError(f"{kind.__name__} settings")
    return value


def _bounds_problem(value: Any, metadata: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` against the field's ``min``/``above``/``max``/``choices``, if anything."""
    if "choices" in metadata and value not in metadata["choices"]:
        return f"expected one of {', '.join(map(str, metadata['choices']))}, got {value!r}"
    low_open = "above" in metadata  # a lower bound the value may not equal
    low, high = metadata.get("above", metadata.get("min")), metadata.get("max")
    if (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        return f"must be in {'(' if low_open else '['}{low}, {high}], got {value}"
    if low is not None:
        return f"must be {'>' if low_open else '>='} {low}, got {value}"
    return f"must be <= {high}, got {value}"


def check_fields(config: Any) -> None:
    """Check every field of the dataclass ``config`` against its type (floats finite) and the bounds
    in its metadata (``min``, ``above``, ``max``, ``choices``); raise :class:`SettingError` naming it."""
    hints = _type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        try:
            value = _checked(value, hints[field.name])
        except TypeError as expected:
            raise SettingError(field.name, f"expected {expected}, got {value!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(field.name, f"expected a finite number, got {value}")
        setattr(config, field.name, value)
        problem = None if value is None or isinstance(value, (list, dict)) else _bounds_problem(value, field.metadata)
        if problem:
            raise SettingError(field.name, problem)


@functools.cache
def _type_hints(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def finite_float(text: str) -> float:
    """argparse type of a plain (non-config) number option: NaN and infinity are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Command-line options and YAML files


def add_tokenizer_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code`` of a command that loads only the expert's tokenizer named in a folder."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow Python code shipped with the expert's tokenizer to run "
                             "(never taken from the folder)")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """Add one option per field of ``config_cls`` plus ``--config``.

    Options default to ``argparse.SUPPRESS`` so that only what the user typed overrides YAML.
    """
    hints = _type_hints(config_cls)
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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-5`` and ``1.0e3`` (no dot, or no exponent sign) as text; a settings file means a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise an error naming the file (and line)."""
    try:
        data = yaml.load(Path(path).read_bytes().decode("utf-8"), Loader=_Loader)
    except FileNotFoundError:
        raise LightReasonerError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise LightReasonerError(f"{path}:{line_of(exc)}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise LightReasonerError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LightReasonerError(f"{path}: expected a mapping of option: value at the top level")
    return data


# Settings no file may turn on: only the option typed on the command that needs it.
COMMAND_LINE_ONLY = {"trust_remote_code": "runs Python code shipped with the model, so only the "
                                          "--trust-remote-code option of the command turns it on"}


def _unknown(key: str, known: typing.Iterable[str], where: str) -> LightReasonerError:
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return LightReasonerError(f"{where}: unknown setting {key!r}{hint}")


def refuse_unknown(values: dict[str, Any], known: typing.Iterable[str], where: str) -> None:
    """Refuse the first key of ``values``, read from the file ``where``, that is not in ``known`` (dashes
    read as underscores) or that turns on what only the command line may."""
    known = set(known)
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise _unknown(key, known, where)
        if name in COMMAND_LINE_ONLY and value:
            raise LightReasonerError(f"{where}: {key}: {COMMAND_LINE_ONLY[name]}")


def build_config(config_cls: type[C], values: dict[str, Any], *, source: str = "config",
                 origins: dict[str, str] | None = None) -> C:
    """Instantiate ``config_cls`` from a mapping whose keys may use dashes or underscores.

    A value that does not fit its field is refused naming where it came from: ``origins`` maps a
    setting to a file (``"run.yaml"``) or to ``"command line"``; the others are named by ``source``.
    """
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    hints = _type_hints(config_cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise _unknown(key, names, source)
        if _base_type(hints[name]) is list and isinstance(value, str):
            value = _comma_list(value)
        kwargs[name] = value
    try:
        return config_cls(**kwargs)
    except SettingError as exc:
        where = (origins or {}).get(exc.name, source)
        if where == "command line":
            raise LightReasonerError(f"--{exc.name.replace('_', '-')}: {exc.problem}") from None
        raise LightReasonerError(f"{where}: {exc.name}: {exc.problem}") from None
    except (TypeError, ValueError) as exc:
        raise LightReasonerError(f"{source}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config dataclass (paths as strings)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
