"""Resumable files and folders: one protocol for "may this be continued with these settings?".

A stage that resumes reads what its file or folder was made with: the header line of a JSONL file
(:func:`read_header`, which checks its format and version), or a folder's JSON record. It then
compares the settings that decide what the file holds with this run's (:func:`check_same_settings`).
Each stage declares those as one module-level tuple, ``RESUME_SETTINGS``, of dotted names
(``train.seed`` is the ``seed`` inside ``train``); the first one that differs is named in a one-line
error. A setting not listed may change between a run and its resumption (checkpoint frequency,
micro-batches, where the data is read from): it changes how the work is done, not what it computes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import LightReasonerError
from .models import same_model
from .records import iter_jsonl

# Settings that name a model: a model given by another path to the same folder is the same model.
MODEL_SETTINGS = ("expert", "amateur", "model")
# Settings that say how the work is run, not what it computes, so a resumed run may change them; the stages
# whose every other setting must match declare their RESUME_SETTINGS with them left out (setting_names).
# Micro-batches are a memory knob to raise after running out of memory (with LoRA dropout, a resume with
# another value draws other masks, so it is not bit-identical to an uninterrupted run); data_dir is where
# the data is read from (each file checks the questions it holds); a sample file and an evaluation folder
# refuse another backend's answers on their own.
RUNTIME_SETTINGS = frozenset({"resume", "save_steps", "save_total_limit", "gradient_accumulation_steps", "report_to",
                              "trust_remote_code", "data_dir", "backend", "workers"})


def check_header(header: dict[str, Any], where: str, fmt: str, version: int, what: str) -> dict[str, Any]:
    """Refuse a header that is not ``fmt``'s, or of another version, naming ``where`` it is."""
    if header.get("type") != "header" or header.get("format") != fmt:
        raise LightReasonerError(f"{where}: not a {what} (expected a '{fmt}' header line)")
    if header.get("version") != version:
        raise LightReasonerError(f"{where}: {what} format version {header.get('version')!r} is not supported "
                                 f"(this lightreasoner reads version {version})")
    return header


def read_header(path: str | Path, fmt: str, version: int, what: str
                ) -> tuple[str, dict[str, Any], Iterator[tuple[str, dict[str, Any]]]]:
    """Where the header line of the JSONL file ``path`` is (``file:line``), the header (format and version
    checked), and, read lazily, ``(file:line, record)`` of every further line. ``what`` names the kind of
    file in messages ("SFT sample file")."""
    path = Path(path)
    lines = iter_jsonl(path)
    first = next(lines, None)
    if first is None:
        raise LightReasonerError(f"{path}: empty {what}")
    number, header = first
    where = f"{path}:{number}"
    check_header(header, where, fmt, version, what)
    return where, header, ((f"{path}:{n}", record) for n, record in lines)


def setting_names(config_cls: type, prefix: str = "", *, but: Iterable[str] = RUNTIME_SETTINGS) -> tuple[str, ...]:
    """The dotted names (``prefix`` + field name) of the settings of a config dataclass, but those in ``but``:
    how a stage whose every setting but how the work is run must match declares its ``RESUME_SETTINGS``."""
    skip = set(but)
    return tuple(f"{prefix}{f.name}" for f in dataclasses.fields(config_cls) if f.name not in skip)


def _value(settings: dict[str, Any], name: str) -> Any:
    for part in name.split("."):
        if not isinstance(settings, dict):
            return None
        settings = settings.get(part)
    return settings


def first_difference(previous: dict[str, Any], current: dict[str, Any], compared: Iterable[str],
                     defaults: dict[str, Any] | None = None) -> tuple[str, Any, Any] | None:
    """``(name, before, now)`` of the first of ``compared`` whose value differs, or None. ``defaults`` gives
    what a file written before a setting existed was made with."""
    for name in compared:
        before, now = _value(previous, name), _value(current, name)
        if before is None and defaults and name in defaults:
            before = defaults[name]
        if before == now or (name.rsplit(".", 1)[-1] in MODEL_SETTINGS and same_model(before, now)):
            continue
        return name, before, now
    return None


def check_same_settings(path: str | Path, previous: dict[str, Any], current: dict[str, Any], compared: Iterable[str],
                        *, defaults: dict[str, Any] | None = None, hint: str = "use another --out") -> None:
    """Refuse ``current`` where one of the ``compared`` settings differs from ``previous``, the settings
    ``path`` was made with: a one-line error naming the file, the setting and both values, then ``hint``."""
    difference = first_difference(previous, current, compared, defaults)
    if difference is not None:
        name, before, now = difference
        raise LightReasonerError(f"{path}: made with {name}={before!r}, now {now!r}; {hint}")
