"""Write our sample files in other tools' formats: the authors' per-step JSONL, and Parquet."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .errors import LightReasonerError
from .records import JsonlAppender, check_writable, first_record, refuse_own_input
from .sampling import read_samples

REFERENCE_FIELDS = ("prompt_id", "prefix", "token_ids", "weights")


def reference_records(record: dict, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    """One sample record -> the authors' per-step lines (``LightR_sampling.py`` output).

    Their fine-tuning script reads the question from ``prompt_id``, so that field holds the
    question text; ``prefix`` is the decoded assistant prefix y_<t without the prompt.
    """
    completion = record["completion_ids"]
    return [{
        "prompt_id": record["question"],
        "step": step["step"],
        "prefix": tokenizer.decode(completion[:step["step"]]),
        "tokens": [tokenizer.decode([i]) for i in step["ids"]],
        "token_ids": step["ids"],
        "weights": step["weights"],
        "kl_divergence": step["kl"],
    } for step in record["steps"]]


def export_reference(samples: str | Path, out: str | Path, tokenizer: PreTrainedTokenizerBase) -> int:
    """Write every kept step of ``samples`` to ``out`` in the reference format; returns the line count.
    An existing ``out`` is replaced only if it is an export too."""
    out = Path(out)
    refuse_own_input(out, {"--samples file": samples})
    if out.is_file() and out.stat().st_size and not set(REFERENCE_FIELDS) <= (first_record(out) or {}).keys():
        raise LightReasonerError(f"{out}: exists and is not a reference-format export (no {', '.join(REFERENCE_FIELDS)}"
                                 " on its first line); it was left as it is: choose another --out")
    check_writable(out)
    _, records = read_samples(samples)
    out.unlink(missing_ok=True)
    count = 0
    with JsonlAppender(out) as writer:
        for record in records:
            lines = reference_records(record, tokenizer)
            writer.write(lines)
            count += len(lines)
    return count


def export_parquet(samples: str | Path, out: str | Path, *, with_text: bool = False) -> int:
    """Write ``samples`` as a Parquet dataset (see :mod:`lightreasoner.parquet`); returns the row count.
    An existing ``out`` is replaced only if it is such an export too."""
    from .parquet import is_export, write_parquet

    out = Path(out)
    refuse_own_input(out, {"--samples file": samples})
    if out.is_file() and out.stat().st_size and not is_export(out):
        raise LightReasonerError(f"{out}: exists and is not a Parquet export of a sample file (no lightreasoner "
                                 "header in its schema metadata); it was left as it is: choose another --out")
    check_writable(out)
    header, records = read_samples(samples)
    write_parquet(header, records, out, with_text=with_text)
    return len(records)
