"""An evaluation folder's answers: their files, summaries, growth, and grading them again.

An evaluation folder (:func:`lightreasoner.evaluation.evaluate`) holds ``<benchmark>.jsonl`` (one
graded answer per question), ``summary.json`` (per benchmark n, both verdicts' counts, accuracies and
95% Wilson intervals, answers cut off, tokens, seconds; the average over benchmarks) and ``run.json``
(kind "eval": the settings its answers were made with). Everything here reads or rewrites those
files without a model: the summary of a benchmark's answers, which answers a larger budget continues
(:func:`needs_growth`), :func:`regrade` (a folder's answers graded again with the current rules, e.g.
a published one, whose gold answers come back from the data) and :func:`score` (completions made
elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from . import grading
from .data import BENCHMARKS, load_problems, number_text
from .errors import LightReasonerError
from .layout import EVAL_KIND, RUN_FILE, SUMMARY_FILE, answers_file, folder_kind
from .records import (JsonlAppender, check_writable, first_record, iter_jsonl, read_json, refuse_own_input,
                      repair_torn_tail, write_json_atomic, write_text_atomic)
from .stats import wilson_interval


# --------------------------------------------------------------------------- summaries


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n; the count, accuracy and 95% Wilson interval of each verdict (``correct``, ``correct_strict``);
    the answers cut off at the token limit (``cut_off``); tokens and seconds of one benchmark's records.
    Records graded before the strict verdict existed (no ``correct_strict``) give no strict figures."""
    n = len(records)
    result = {"n": n, **_verdict(records, "correct", "")}
    if all("correct_strict" in r for r in records):
        result.update(_verdict(records, "correct_strict", "_strict"))
    return {**result, "cut_off": sum(r.get("finish") == "length" for r in records),
            "tokens": sum(int(r.get("tokens", 0)) for r in records),
            "seconds": round(sum(float(r.get("seconds", 0.0)) for r in records), 3)}


def _verdict(records: Sequence[dict[str, Any]], key: str, suffix: str) -> dict[str, Any]:
    n, correct = len(records), sum(bool(r[key]) for r in records)
    return {f"correct{suffix}": correct, f"accuracy{suffix}": correct / n if n else 0.0,
            f"ci95{suffix}": list(wilson_interval(correct, n))}


def write_summary(out_dir: Path, head: dict[str, Any], benchmarks: Sequence[str],
                  results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json: ``head`` (model, adapter, settings), the results per benchmark, those still pending,
    the average accuracy over benchmarks by each verdict, tokens and seconds."""
    summary = {**head, "benchmarks": results, "pending": [name for name in benchmarks if name not in results]}
    for key in ("accuracy", "accuracy_strict"):
        if results and all(key in r for r in results.values()):
            summary[key.replace("accuracy", "average")] = sum(r[key] for r in results.values()) / len(results)
    summary.setdefault("average", 0.0)
    summary["tokens"] = sum(r["tokens"] for r in results.values())
    summary["seconds"] = round(sum(r["seconds"] for r in results.values()), 3)
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary


def load_summary(result_dir: str | Path) -> dict[str, Any]:
    path = Path(result_dir) / SUMMARY_FILE
    if not path.is_file():
        raise LightReasonerError(f"{path}: no summary.json here (not an evaluation output folder)")
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("benchmarks"), dict):
        raise LightReasonerError(f"{path}: not an evaluation summary (no 'benchmarks')")
    return summary


# --------------------------------------------------------------------------- answers and their growth


def done_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by question id, the last line of a question winning (a grown answer
    replaces the one it continued); a torn last line is cut off and redone."""
    if not path.exists():
        return {}
    repair_torn_tail(path)
    return {str(record["id"]): record for _, record in iter_jsonl(path)}


def needs_growth(record: dict[str, Any], max_new_tokens: int) -> bool:
    """Whether an answer was cut off at a smaller budget than ``max_new_tokens``, so that it is continued.

    Growing a folder's budget (a rerun with a larger ``max_new_tokens``) writes the new budget into
    run.json before the first longer answer, then appends each continued answer as a new line for
    its question (the last line wins), and rewrites the file with one line per question when the
    benchmark is done (:func:`keep_last_answers`). The test is on the answer itself, so a growth
    killed at any point resumes with what is left: an answer that ended (eos, stop), or that reached
    this budget, is never touched again."""
    return record.get("finish") == "length" and int(record.get("tokens", 0)) < max_new_tokens


def keep_last_answers(path: Path) -> None:
    """Rewrite ``path`` with one line per question, its last (a grown answer in place of the one it
    continued), in the order the questions first appear; atomically, and only when a question is
    there twice. The lines are kept as they are, so untouched answers stay byte for byte."""
    if not path.exists():
        return
    lines: dict[str, str] = {}
    count = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                lines[str(json.loads(line)["id"])] = line  # a repeated id keeps its first place
                count += 1
    if count > len(lines):
        write_text_atomic(path, "".join(lines.values()))


def answer_ids(tokenizer: Any, record: dict[str, Any]) -> list[int]:
    """The token ids of a record's answer: as generated (``completion_ids``), or, for a record written
    before they were kept, its completion text encoded again; that can split the text differently
    than the model did (rare for byte-level BPE), and a continuation then starts from other ids."""
    if "completion_ids" in record:
        return [int(token) for token in record["completion_ids"]]
    return tokenizer(record["completion"], add_special_tokens=False)["input_ids"]


def replace_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write ``records`` to ``path`` as a whole: the old file stays until the new one is complete."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with JsonlAppender(temporary) as appender:
        appender.write(records)
    temporary.replace(path)


# --------------------------------------------------------------------------- grading again


GRADE_FIELDS = ("pred", "source", "correct", "correct_strict")


def graded_record(record: dict[str, Any], gold: str | None, benchmark: str, timeout: float | None) -> dict[str, Any]:
    """``record`` with its grade (GRADE_FIELDS, placed before ``tokens``) from its ``completion`` and
    ``finish`` against ``gold``; no gold answer (None) grades wrong."""
    result = grading.grade(record["completion"], gold or "", benchmark, finish=record.get("finish"), timeout=timeout)
    grade = {"pred": result.pred, "source": result.source, "correct": result.correct and gold is not None,
             "correct_strict": result.correct_strict and gold is not None}
    rest = [(key, value) for key, value in record.items() if key not in GRADE_FIELDS]
    at = next((i for i, (key, _) in enumerate(rest) if key == "tokens"), len(rest))
    return dict(rest[:at] + list(grade.items()) + rest[at:])


def is_eval_folder(folder: str | Path) -> bool:
    """An evaluation folder: its run.json says so (``kind``; older ones by their keys, layout.folder_kind)."""
    return folder_kind(folder) == EVAL_KIND


def find_eval_folders(folder: str | Path) -> list[Path]:
    """``folder`` if it is an evaluation folder, else every evaluation folder under it (a run's arms)."""
    folder = Path(folder)
    if is_eval_folder(folder):
        return [folder]
    return sorted(path.parent for path in folder.rglob(RUN_FILE) if is_eval_folder(path.parent))


def regrade(eval_dir: str | Path, *, data_dir: str | Path | None = None,
            timeout: float | None = grading.DEFAULT_TIMEOUT, progress: bool = True) -> dict[str, Any]:
    """Grade the answers of the evaluation folder ``eval_dir`` again with the current rules (both
    verdicts), rewrite its answer files and summary.json, and return the summary.

    A record without its gold answer (a published folder keeps none) gets it from the data, loaded
    as the evaluation loaded it (the benchmarks, split and subset of its summary's settings) from
    ``data_dir``, else from the folder the evaluation read. Nothing is added to a record but its grade.
    """
    from tqdm.auto import tqdm

    eval_dir = Path(eval_dir)
    if not is_eval_folder(eval_dir) or not (eval_dir / SUMMARY_FILE).is_file():
        raise LightReasonerError(f"{eval_dir}: no run.json and summary.json of an evaluation here")
    summary = read_json(eval_dir / SUMMARY_FILE)
    settings = summary["settings"]
    results = {}
    for name in summary["benchmarks"]:
        path = answers_file(eval_dir, name)
        # A growth stopped before its file was rewritten holds a question twice: the last line counts.
        lines = list({str(record["id"]): (number, record) for number, record in iter_jsonl(path)}.values())
        golds = _golds(path, lines, name, settings, data_dir)
        graded = [graded_record(record, golds[str(record["id"])], name, timeout)
                  for _, record in tqdm(lines, desc=f"regrade {name}", unit="answer", disable=not progress)]
        replace_jsonl(path, graded)
        results[name] = summarize(graded)
    head = {key: value for key, value in summary.items() if key in ("model", "adapter", "settings")}
    return write_summary(eval_dir, head, settings["benchmarks"], results)


def _golds(path: Path, lines: list[tuple[int, dict[str, Any]]], benchmark: str, settings: dict[str, Any],
           data_dir: str | Path | None) -> dict[str, str | None]:
    """The gold answer of every record of ``path`` by id: its own, else the data's (loaded as ``settings`` say)."""
    golds = {str(record["id"]): record["gold"] for _, record in lines if "gold" in record}
    if len(golds) == len(lines):
        return golds
    sample = settings.get("sample")
    problems = load_problems(benchmark, split=settings.get("split", "test"), limit=settings.get("limit"),
                             data_dir=data_dir or settings.get("data_dir"), seed=settings.get("seed"),
                             sample=sample.get(benchmark) if isinstance(sample, dict) else sample)
    from_data = {p.id: p.gold for p in problems}
    for number, record in lines:
        if str(record["id"]) not in golds and str(record["id"]) not in from_data:
            raise LightReasonerError(f"{path}:{number}: question {record['id']!r} is not among the {benchmark} "
                                     "questions this evaluation's settings select from the data")
    return {**from_data, **golds}


# --------------------------------------------------------------------------- grading files made elsewhere


def score(benchmark: str, input_path: str | Path, out_path: str | Path, *, data_dir: str | Path | None = None,
          split: str = "test", timeout: float | None = grading.DEFAULT_TIMEOUT,
          progress: bool = True) -> dict[str, Any]:
    """Grade completions made elsewhere; write each input line plus its grade (``pred``, ``source``,
    ``correct``, ``correct_strict``).

    Every line needs ``completion`` and either ``gold`` (an extracted final answer) or an ``id``
    of the benchmark's data, whose gold answer is then parsed like ``evaluate`` does. An optional
    ``finish`` ("length" when the completion was cut off by the token limit) informs the strict
    verdict; without it a completion counts as finished.
    Returns the summary (n, correct, accuracy, ci95, the strict ones, ...).
    """
    from tqdm.auto import tqdm

    if benchmark not in BENCHMARKS:
        raise LightReasonerError(f"--benchmark: unknown benchmark {benchmark!r} (choose from {', '.join(BENCHMARKS)})")
    input_path, out_path = Path(input_path), Path(out_path)
    refuse_own_input(out_path, {"--input file": input_path})
    if out_path.is_file() and out_path.stat().st_size and not {"pred", "correct"} <= (first_record(out_path) or {}).keys():
        raise LightReasonerError(f"{out_path}: exists and is not a graded file of `lightreasoner score` (no 'pred' "
                                 "and 'correct' on its first line); it was left as it is: choose another --out")
    check_writable(out_path)  # before grading, which can take long
    lines = list(iter_jsonl(input_path))
    if not lines:
        raise LightReasonerError(f"{input_path}: no records in file (empty)")
    golds: dict[str, str | None] | None = None
    graded = []
    for number, record in tqdm(lines, desc=f"score {benchmark}", unit="answer", disable=not progress):
        where = f"{input_path}:{number}"
        completion = record.get("completion")
        if not isinstance(completion, str):
            raise LightReasonerError(f"{where}: field 'completion' missing or not a string")
        gold = record.get("gold")
        if gold is None:
            if "id" not in record:
                raise LightReasonerError(f"{where}: needs 'gold' or an 'id' of the {benchmark} data")
            if golds is None:
                golds = {p.id: p.gold for p in load_problems(benchmark, split=split, data_dir=data_dir)}
            if str(record["id"]) not in golds:
                raise LightReasonerError(f"{where}: id {record['id']!r} is not in the {benchmark} {split} data")
            gold = golds[str(record["id"])]
        elif isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
            raise LightReasonerError(f"{where}: field 'gold' must be a string or a number")
        finish = record.get("finish")
        if finish is not None and not isinstance(finish, str):
            raise LightReasonerError(f"{where}: field 'finish' must be a string (\"length\" when cut off)")
        result = grading.grade(completion, _gold_text(gold) or "", benchmark, finish=finish, timeout=timeout)
        graded.append({**record, "pred": result.pred, "source": result.source, "correct": result.correct,
                       "correct_strict": result.correct_strict})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    replace_jsonl(out_path, graded)
    return {"benchmark": benchmark, **summarize(graded)}


def _gold_text(gold: Any) -> str | None:
    if isinstance(gold, float):
        return number_text(gold)
    return None if gold is None else str(gold)
