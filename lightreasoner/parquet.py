"""A sample file's labels as a Parquet dataset: shareable without the models, loadable with
``datasets.load_dataset("parquet", data_files=...)``, and read back by ``train`` as the JSONL file.

One row per trajectory; the sample file's header (format, models, tokenizer fingerprint and
vocabulary size, settings) is kept whole, as JSON, under the key ``lightreasoner`` of the Parquet
schema metadata. The benchmark's text (question, gold answer, prompt) is left out unless asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import LightReasonerError

METADATA_KEY = b"lightreasoner"
TOKEN_IDS = pa.list_(pa.int32())
FLOATS = pa.list_(pa.float64())  # float64: the JSON values round-trip exactly
STEP = pa.struct([("step", pa.int32()), ("kl", pa.float64()), ("ids", TOKEN_IDS), ("weights", FLOATS)])
TEXT_COLUMNS = [("question", pa.string()), ("gold", pa.string()), ("prompt", pa.string())]


def _columns(records: Sequence[dict[str, Any]], with_text: bool) -> list[tuple[str, pa.DataType]]:
    columns = [("id", pa.string()), *(TEXT_COLUMNS if with_text else []), ("prompt_ids", TOKEN_IDS),
               ("completion_ids", TOKEN_IDS), ("finish", pa.string()), ("kl", FLOATS)]
    if any("entropy" in record for record in records):  # a control's examples: the expert's entropy per step
        columns.append(("entropy", FLOATS))
    return columns + [("steps", pa.list_(STEP))]


def write_parquet(header: dict[str, Any], records: Sequence[dict[str, Any]], out: str | Path, *,
                  with_text: bool = False) -> Path:
    """Write ``records`` (sample-file records) and ``header`` to ``out``, replacing it whole."""
    out = Path(out)
    columns = _columns(records, with_text)
    schema = pa.schema(columns, metadata={METADATA_KEY: json.dumps(header, ensure_ascii=False).encode()})
    rows = [{name: record.get(name) for name, _ in columns} for record in records]
    for row in rows:
        row["id"] = str(row["id"])
        row["steps"] = [{key: step.get(key) for key in ("step", "kl", "ids", "weights")} for step in row["steps"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, out)
    return out


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a Parquet file :func:`write_parquet` wrote (its header in the schema metadata)."""
    try:
        return METADATA_KEY in (pq.read_schema(path).metadata or {})
    except (pa.ArrowException, OSError):
        return False


def read_parquet(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the records (as in the JSONL sample file) of a file :func:`write_parquet` wrote."""
    path = Path(path)
    if not path.is_file():
        raise LightReasonerError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise LightReasonerError(f"{path}: not a Parquet file ({str(exc).splitlines()[0]})") from None
    metadata = table.schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise LightReasonerError(f"{path}: no lightreasoner header in the Parquet schema metadata "
                                 "(not written by `lightreasoner export --format parquet`)")
    header = json.loads(metadata[METADATA_KEY])
    records = []
    for row in table.to_pylist():
        # A step written without a KL (a control's label where the samples had none) had no "kl" key.
        row["steps"] = [{key: value for key, value in step.items() if value is not None or key != "kl"}
                        for step in row["steps"]]
        records.append({"type": "sample", **row})
    return header, records
