"""Copy what a run folder shows, and nothing it was made from, into a folder meant to be committed.

Kept: settings, stage times, summaries, training logs, report pages and figures, and every
evaluation answer reduced to the model's side (id, completion, pred, correct, tokens, finish,
seconds). Left behind: model weights and checkpoints, tokenizers, sample files and graded SFT
samples (they hold the benchmark's questions), and each answer's prompt and gold answer.

An evaluation folder published this way still resumes: ``lightreasoner eval --out`` (or a run
folder that gets it back) skips the question ids already answered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import LightReasonerError
from .records import JsonlAppender, iter_jsonl

SHOWN_FILES = {"run.json", "stages.json", "efficiency.json", "summary.json", "train_summary.json",
               "train_log.jsonl", "samples.jsonl.meta.json", "report.md", "report.html"}
ANSWER_FIELDS = ("id", "benchmark", "completion", "pred", "correct", "tokens", "finish", "seconds")


def published_record(record: dict) -> dict:
    """An evaluation record without the benchmark's text (prompt and gold answer)."""
    return {key: record[key] for key in ANSWER_FIELDS if key in record}


def publish(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the shown files of ``run_dir`` into ``out_dir`` (same layout); return what was written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "run.json").is_file():
        raise LightReasonerError(f"{run_dir}: no run.json here (not a `lightreasoner run` folder)")
    written = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or any(part.startswith("checkpoint-") for part in relative.parts):
            continue
        is_answers = path.suffix == ".jsonl" and (path.parent / "summary.json").is_file()
        if not (is_answers or path.name in SHOWN_FILES or path.suffix == ".png"):
            continue
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_answers:
            target.unlink(missing_ok=True)
            with JsonlAppender(target) as appender:
                appender.write([published_record(record) for _, record in iter_jsonl(path)])
        else:
            shutil.copyfile(path, target)
        written.append(target)
    return written
