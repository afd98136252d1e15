"""Hand results to other tools: our sample files in the authors' per-step JSONL and in Parquet, and a
trained LoRA adapter merged into a standalone model (:func:`merge`)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from . import models
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


def merge(model_spec: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto",
          trust_remote_code: bool = False) -> Path:
    """Fold a LoRA adapter into the base weights; save a standalone safetensors model + tokenizer."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    refuse_own_input(out_dir, {"model folder": model_spec, "adapter folder": adapter_dir})
    models.check_adapter(adapter_dir)
    check_writable(out_dir)
    torch_dtype = models.resolve_dtype(dtype, torch.device("cpu"))
    base = models.load_model(model_spec, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    merged = models.load_adapter(base, adapter_dir).merge_and_unload()
    if (adapter_dir / "tokenizer_config.json").is_file():  # train saves the tokenizer beside the adapter
        tokenizer = models.tokenizer_from(str(adapter_dir), trust_remote_code=trust_remote_code)
    else:
        tokenizer = models.load_tokenizer(model_spec, trust_remote_code=trust_remote_code)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
