"""Crash-safe JSON Lines files: read with line-numbered errors, append durably, repair torn tails.

Every long stage writes its results through :class:`JsonlAppender`: a batch of records is
written, flushed and fsynced before the next batch starts, so a killed run loses at most the
batch in flight. A run killed mid-write can leave a last line without its newline (a torn
line); :func:`repair_torn_tail` cuts it off before resuming, so it is redone, never kept. A file
is only repaired once its first line shows it is one of ours (:func:`first_record`): a user's own
file is refused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import LightReasonerError, line_of


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line; bad lines raise naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise LightReasonerError(f"{path}: file not found")
    with path.open("rb") as handle:  # decoded line by line, so that bytes that are not UTF-8 have a line number
        for number, raw in enumerate(handle, start=1):
            yield from _parsed(raw, f"{path}:{number}", number)


def _parsed(raw: bytes, where: str, number: int) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LightReasonerError(f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                                 ) from None
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LightReasonerError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise LightReasonerError(f"{where}: expected a JSON object")
    yield number, record


def first_record(path: str | Path) -> dict[str, Any] | None:
    """The first line of a JSONL file as an object, or None when it is not one (or the file is empty):
    what tells whether an existing file is one of ours, read before anything repairs it."""
    with Path(path).open("rb") as handle:
        line = handle.readline()
    try:
        return next((record for _, record in _parsed(line, str(path), 1)), None)
    except LightReasonerError:
        return None


def file_sha256(path: str | Path, progress: bool = False) -> str:
    """sha256 of a file, read in blocks (hashlib.file_digest needs Python 3.11; 3.10 is supported)."""
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise LightReasonerError(f"{path}: file not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, desc=f"sha256 {path.name}", unit="B",
                                         unit_scale=True, disable=not progress) as bar:
        while block := handle.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def repair_torn_tail(path: str | Path) -> int:
    """Cut a last line that lacks its newline (a write interrupted mid-line). Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        # Walk back to the last newline in blocks.
        position = size
        keep = 0
        while position > 0:
            start = max(0, position - 65536)
            handle.seek(start)
            block = handle.read(position - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            position = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return size - keep


class JsonlAppender:
    """Append records to a JSONL file; each :meth:`write` call is one durable unit.

    The file is opened at the first write, so a run that fails before its first result leaves no
    file. With ``header``, a new (or empty) file is created holding the header and the first batch
    together (written aside, then renamed), so a file never holds a header without results.
    """

    def __init__(self, path: str | Path, *, header: dict[str, Any] | None = None):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._header = header if new else None
        self._handle: Any = None

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if self._header is not None:  # nothing at all until there is a result to go with the header
            if text:
                write_text_atomic(self.path, json.dumps(self._header, ensure_ascii=False) + "\n" + text)
                self._header = None
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise LightReasonerError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise LightReasonerError(f"{path}:{line_of(exc)}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LightReasonerError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


# ----------------------------------------------------------------------------------------------
# Where a command may write


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output file or folder nothing can be written to (a read-only disk, a
    folder without permission): tried with a temporary file in the nearest folder that exists."""
    path = Path(path).absolute()
    folder = next(p for p in (path, *path.parents) if p.exists())
    if folder == path and path.is_file():
        if not os.access(path, os.W_OK):
            raise LightReasonerError(f"{path}: this file may not be written; choose another output")
        folder = path.parent
    if not folder.is_dir():
        raise LightReasonerError(f"{path}: {folder} is a file, so nothing can be written under it")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise LightReasonerError(f"{path}: cannot write in {folder} ({exc.strerror}); choose another output") from None


def refuse_own_input(out: str | Path, inputs: dict[str, str | Path | None], option: str = "--out") -> None:
    """Refuse an output that is one of the command's own inputs (``inputs``: option -> path), which
    writing would overwrite; paths are compared by the place they resolve to."""
    target = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        if value is not None and Path(str(value)).expanduser().exists() \
                and Path(str(value)).expanduser().resolve() == target:
            raise LightReasonerError(f"{option} {out}: is the {name} this command reads; writing there would "
                                     f"overwrite it, so choose another {option}")
