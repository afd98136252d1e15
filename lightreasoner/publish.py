"""Copy what a run folder shows, and nothing it was made from, into a folder meant to be committed;
and rebuild a run folder from such a copy plus the benchmark data.

Kept: settings, stage times, summaries, training logs, report pages and figures, every evaluation
answer reduced to the model's side and its grade (id, completion, pred, source, correct,
correct_strict, tokens, finish, seconds, continued_from, completion_ids), and
the sample files reduced to the models' outputs (``samples.outputs.jsonl``: the trajectories, KL
values and soft labels, or the SFT solutions and their grades, keyed by question id; likewise a
control's ``examples.jsonl``); with ``adapters``, each arm's LoRA adapter too. Left behind: the
models' weights, checkpoints, tokenizers, and everything of the benchmark's own: questions,
prompts and gold answers.

:func:`restore` puts the benchmark's text back from the data files (the prompts are rebuilt with
the tokenizer, whose fingerprint must match the one the samples were made with), so a later run,
on another machine, continues where this one stopped: evaluation answers and sample files resume,
and stages whose product is weights (training) are marked to be redone unless their adapter was
published.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .answers import is_eval_folder
from .arms import ARM_EVAL_DIRS
from .errors import LightReasonerError
from .layout import (ADAPTER_DIR, ADAPTER_FILES, ADAPTER_FIT_FILE, CHECKPOINTS_DIR, EFFICIENCY_FILE, EXAMPLES_FILE,
                     PUBLISHED_EXAMPLES_FILE, PUBLISHED_SAMPLES_FILE, REPORT_HTML, REPORT_MD, RUN_FILE, SAMPLES_FILE, STAGES_FILE, SUMMARY_FILE,
                     TRAIN_LOG_FILE, TRAIN_SUMMARY_FILE, meta_path)
from .records import JsonlAppender, check_writable, first_record, iter_jsonl, read_json, write_json_atomic
from .resume import read_header
from .sampling import FORMAT as SAMPLES_FORMAT, FORMAT_VERSION as SAMPLES_VERSION
from .sft import FORMAT_VERSION as SFT_VERSION, SFT_FORMAT

SHOWN_FILES = {RUN_FILE, STAGES_FILE, EFFICIENCY_FILE, SUMMARY_FILE, TRAIN_SUMMARY_FILE, TRAIN_LOG_FILE,
               meta_path(Path(SAMPLES_FILE)).name, ADAPTER_FIT_FILE, REPORT_MD, REPORT_HTML}
# The answer's token ids are the model's output too, and what a restored folder continues exactly when
# its evaluation budget grows (answers.answer_ids).
ANSWER_FIELDS = ("id", "benchmark", "completion", "pred", "source", "correct", "correct_strict", "tokens", "finish",
                 "seconds", "continued_from", "completion_ids")
# Files in the sample format (LightReasoner's and SFT's samples, a control's examples) and the names
# of their published copies.
PUBLISHED_NAMES = {SAMPLES_FILE: PUBLISHED_SAMPLES_FILE, EXAMPLES_FILE: PUBLISHED_EXAMPLES_FILE}
RESTORED_NAMES = {published: name for name, published in PUBLISHED_NAMES.items()}
# Their formats (a control's examples are in the LightReasoner sample format): version, and what to call one.
SAMPLE_FORMATS = {SAMPLES_FORMAT: (SAMPLES_VERSION, "lightreasoner sample file"),
                  SFT_FORMAT: (SFT_VERSION, "SFT sample file")}
# What a sample record (LightReasoner or SFT) holds of the benchmark, in the order it is written.
BENCHMARK_FIELDS = ("question", "gold", "prompt", "prompt_ids")
# Stages whose product is an adapter: a restored run does them again unless it was published (--adapters).
# The evaluations of adapters are reopened either way (their answers kept), so that the rebuilt or published
# adapter is checked against the one the answers came from (models.adapter_fingerprint) before reuse.
WEIGHT_STAGES = tuple("train" if arm == "lightreasoner" else arm for arm in ARM_EVAL_DIRS if arm != "baseline")
ADAPTER_EVAL_STAGES = tuple(folder for arm, folder in ARM_EVAL_DIRS.items() if arm != "baseline")


def published_record(record: dict) -> dict:
    """An evaluation record without the benchmark's text (prompt and gold answer)."""
    return {key: record[key] for key in ANSWER_FIELDS if key in record}


def publish(run_dir: str | Path, out_dir: str | Path, *, adapters: bool = False) -> list[Path]:
    """Copy the shown files of ``run_dir`` into ``out_dir`` (same layout); return what was written.
    Evaluations still running are published as far as they have got. ``adapters`` adds every arm's
    trained LoRA adapter (its config and safetensors weights), so that a restored folder need not
    train again to evaluate further (a larger token budget, another benchmark)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise LightReasonerError(f"{run_dir}: no run.json here (not a `lightreasoner run` folder)")
    if run_dir.resolve() in (out_dir.resolve(), *out_dir.resolve().parents):
        raise LightReasonerError(f"{out_dir}: is inside the run folder {run_dir} it would publish; choose another "
                                 "folder")
    check_writable(out_dir)
    written = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or CHECKPOINTS_DIR in relative.parts:
            continue
        target = out_dir / relative
        if path.name in PUBLISHED_NAMES:
            target = target.with_name(PUBLISHED_NAMES[path.name])
            records: Any = (_without_benchmark(record) for _, record in iter_jsonl(path))
        elif path.suffix == ".jsonl" and is_eval_folder(path.parent):
            records = (published_record(record) for _, record in iter_jsonl(path))
        elif path.name in SHOWN_FILES or path.suffix == ".png" or (adapters and _is_adapter_file(relative)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
            continue
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        with JsonlAppender(target) as appender:
            appender.write(records)
        written.append(target)
    return written


def _is_adapter_file(relative: Path) -> bool:
    return relative.parent.name == ADAPTER_DIR and relative.name in ADAPTER_FILES


def _adapter_published(arm_dir: Path) -> bool:
    return all((arm_dir / ADAPTER_DIR / name).is_file() for name in ADAPTER_FILES)


def _without_benchmark(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in BENCHMARK_FIELDS}


def restore(published_dir: str | Path, run_dir: str | Path, *, data_dir: str | Path | None = None,
            trust_remote_code: bool = False) -> list[Path]:
    """Rebuild the run folder ``run_dir`` from ``published_dir`` and the benchmark data in
    ``data_dir``: the published files as they are, the sample files with their questions, gold
    answers and prompts put back (byte for byte what the run wrote), and the training stages whose
    adapter was not published marked not done. Returns the files written.

    The expert's tokenizer rebuilds the prompts; code shipped with it runs only with
    ``trust_remote_code``, the caller's own choice: nothing in the published folder turns it on.
    A restore that fails removes what it wrote, so that it can be run again."""
    published_dir, run_dir = Path(published_dir), Path(run_dir)
    if not (published_dir / RUN_FILE).is_file():
        raise LightReasonerError(f"{published_dir}: no run.json here (not a published run folder)")
    if (run_dir / RUN_FILE).exists():
        raise LightReasonerError(f"{run_dir}: already holds a run; restore into a new folder")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise LightReasonerError(f"{run_dir}: not an empty folder; restore into a new folder")
    check_writable(run_dir)
    existed = run_dir.exists()
    try:
        return _restore_files(published_dir, run_dir, data_dir, trust_remote_code)
    except BaseException:
        for child in run_dir.iterdir() if existed else ():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _restore_files(published_dir: Path, run_dir: Path, data_dir: str | Path | None,
                   trust_remote_code: bool) -> list[Path]:
    written = []
    for path in sorted(published_dir.rglob("*")):
        if not path.is_file():
            continue
        target = run_dir / path.relative_to(published_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name in RESTORED_NAMES:
            target = target.with_name(RESTORED_NAMES[path.name])
            _restore_samples(path, target, data_dir, trust_remote_code)
        elif path.name == STAGES_FILE:
            stages = read_json(path)
            for name in WEIGHT_STAGES:
                # A published adapter is kept; the reopened evaluation checks it is the one its answers came from.
                if name in stages and not _adapter_published(path.parent if name == "train" else path.parent / name):
                    # Only the training is redone: an arm that sampled first (sft) or wrote its examples
                    # (a control; its folder bears its name) keeps those seconds, as that file is restored.
                    arm_stages = path.parent / name / STAGES_FILE
                    arm = read_json(arm_stages) if arm_stages.is_file() else {}
                    kept = sum(stage.get("seconds", 0.0) for stage_name, stage in arm.items() if stage_name != "train")
                    stages[name] = {"done": False, "seconds": round(kept, 2)}
            for name in ADAPTER_EVAL_STAGES:
                if name in stages:
                    stages[name]["done"] = False
            write_json_atomic(target, stages)
        else:
            shutil.copyfile(path, target)
        written.append(target)
    return written


def _restore_samples(path: Path, target: Path, data_dir: str | Path | None, trust_remote_code: bool) -> None:
    """Write ``target``: the sample file ``path`` with each record's benchmark fields rebuilt."""
    from .data import load_problems
    from .models import chat_prompt, encode_prompt, load_tokenizer, tokenizer_fingerprint

    fmt = (first_record(path) or {}).get("format")
    if fmt not in SAMPLE_FORMATS:
        raise LightReasonerError(f"{path}:1: expected a sample file header (format {' or '.join(SAMPLE_FORMATS)})")
    where, header, lines = read_header(path, fmt, *SAMPLE_FORMATS[fmt])
    settings = header.get("settings", {})
    train = settings.get("train", settings)  # an SFT header nests its training settings
    model = header.get("expert") or header.get("model")
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)  # never the header's own setting
    if tokenizer_fingerprint(tokenizer) != header.get("tokenizer", {}).get("fingerprint"):
        raise LightReasonerError(f"{where}: made with another tokenizer than {model}'s")
    problems = {p.id: p for p in load_problems(settings["data"], split=settings["split"], limit=settings.get("limit"),
                                               data_dir=data_dir, seed=train.get("seed"))}
    records = [header]
    for where, record in lines:
        problem = problems.get(str(record.get("id")))
        if problem is None:
            raise LightReasonerError(f"{where}: question {record.get('id')!r} is not in the data "
                                     f"({settings['data']}, split {settings['split']})")
        prompt = chat_prompt(tokenizer, problem.question, train["system_prompt"])
        text = {"question": problem.question, "gold": problem.gold, "prompt": prompt,
                "prompt_ids": encode_prompt(tokenizer, prompt)}
        head = {key: record[key] for key in ("type", "id")}
        rest = {key: value for key, value in record.items() if key not in head}
        records.append({**head, **text, **rest})
    target.unlink(missing_ok=True)
    with JsonlAppender(target) as appender:
        appender.write(records)
