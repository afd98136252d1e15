"""Problems to sample, train and evaluate on: benchmark names or JSONL files -> :class:`Problem`.

A benchmark name is looked up as ``<data_dir>/<name>/<split>.jsonl``, with ``data_dir`` from the
caller, else ``$LIGHTREASONER_DATA_DIR``, else the Hugging Face Hub for the benchmarks that have a
canonical Hub copy (:class:`HubSource`). Field names and gold-answer parsing follow the Qwen2.5-Math
evaluation toolkit (``parse_question`` / ``parse_ground_truth``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LightReasonerError
from .grading import find_last_boxed
from .problems import Problem, generate_problems
from .records import iter_jsonl

DATA_DIR_ENV = "LIGHTREASONER_DATA_DIR"
log = logging.getLogger(__name__)


def number_text(value: Any) -> str:
    """145.0 -> '145'; 1.84 -> '1.84'."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _strip_dollars(text: str) -> str:
    return text.strip().strip("$").strip()


def _join(body: str, question: str) -> str:
    body = body.strip()
    if body and not body.endswith("."):
        body += "."
    return f"{body} {question.strip()}".strip()


def _mmlu_question(record: dict[str, Any]) -> str:
    options = " ".join(f"({letter}) {choice}" for letter, choice in zip("ABCD", record["choices"]))
    return f"{record['question'].strip()}\nAnswer Choices: {options}"


def _gsm8k_gold(record: dict[str, Any]) -> str:
    return record["answer"].split("####")[-1].strip().replace(",", "")


def _olympiad_gold(record: dict[str, Any]) -> str:
    return _strip_dollars(record["final_answer"][0])


@dataclass(frozen=True)
class HubSource:
    """A benchmark's copy on the Hugging Face Hub: each config's split, concatenated in ``configs`` order."""

    dataset: str
    configs: tuple[str | None, ...] = (None,)  # None: the dataset's only (default) config
    splits: dict[str, str] = field(default_factory=dict)  # our split name -> the dataset's, where they differ


# MATH's seven subjects in alphabetical order: the order of MATH's own subject folders and of the
# 5,000-problem test file the Qwen2.5-Math toolkit reads, so a problem's position (its id) is the same
# whether it comes from a data folder or from the Hub, as long as both keep MATH's order within a subject.
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


@dataclass(frozen=True)
class BenchmarkSpec:
    question: Callable[[dict[str, Any]], str]
    gold: Callable[[dict[str, Any]], str | None]
    fields: tuple[str, ...]  # fields every record must have
    hub: HubSource | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec(lambda r: r["question"], _gsm8k_gold, ("question", "answer"),
                           hub=HubSource("openai/gsm8k", ("main",))),
    "math": BenchmarkSpec(lambda r: r["problem"], lambda r: find_last_boxed(r["solution"]), ("problem", "solution"),
                          hub=HubSource("EleutherAI/hendrycks_math", MATH_SUBJECTS)),
    "math500": BenchmarkSpec(lambda r: r["problem"], lambda r: r["answer"], ("problem", "answer"),
                             hub=HubSource("HuggingFaceH4/MATH-500")),
    "minerva_math": BenchmarkSpec(lambda r: r["problem"], lambda r: find_last_boxed(r["solution"]),
                                  ("problem", "solution")),
    "svamp": BenchmarkSpec(lambda r: _join(r["Body"], r["Question"]), lambda r: number_text(r["Answer"]),
                           ("Body", "Question", "Answer")),
    "asdiv": BenchmarkSpec(lambda r: _join(r["body"], r["question"]),
                           lambda r: re.sub(r"\(.*?\)", "", r["answer"]).strip(), ("body", "question", "answer")),
    "mawps": BenchmarkSpec(lambda r: r["input"], lambda r: number_text(r["target"]), ("input", "target")),
    "olympiadbench": BenchmarkSpec(lambda r: r["question"], _olympiad_gold, ("question", "final_answer")),
    "mmlu_stem": BenchmarkSpec(_mmlu_question, lambda r: "ABCD"[int(r["answer"])], ("question", "choices", "answer")),
    "college_math": BenchmarkSpec(lambda r: r["question"], lambda r: _strip_dollars(r["answer"]),
                                  ("question", "answer")),
}

# Generated offline (see :mod:`lightreasoner.problems`): needs no data folder.
GENERATED = ("arith",)


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def _generic_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    question = record.get("question", record.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise LightReasonerError(f"{where}: missing field 'question' (or 'problem')")
    gold = record.get("gold", record.get("answer"))
    if isinstance(gold, str) and "####" in gold:
        gold = gold.split("####")[-1].strip().replace(",", "")
    elif isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = number_text(gold)
    elif gold is not None and not isinstance(gold, str):
        raise LightReasonerError(f"{where}: field 'answer' must be a string or a number")
    return Problem(str(record.get("id", record.get("idx", index))), question, gold)


def _benchmark_problem(spec: BenchmarkSpec, record: dict[str, Any], where: str, index: int) -> Problem:
    missing = [name for name in spec.fields if name not in record]
    if missing:
        raise LightReasonerError(f"{where}: missing field {missing[0]!r}")
    try:
        question, gold = spec.question(record), spec.gold(record)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise LightReasonerError(f"{where}: cannot read question/answer ({exc!r})") from None
    identifier = record.get("id", record.get("idx", record.get("unique_id", index)))
    return Problem(str(identifier), question, gold)


def _from_hub(name: str, split: str) -> list[dict[str, Any]]:
    source = BENCHMARKS[name].hub
    if source is None:
        raise LightReasonerError(
            f"benchmark {name!r}: no data folder given (--data-dir or ${DATA_DIR_ENV}) and no Hub copy known")
    import datasets

    rows: list[dict[str, Any]] = []
    for config in source.configs:
        try:
            dataset = datasets.load_dataset(source.dataset, config, split=source.splits.get(split, split))
        except Exception as exc:  # offline, unknown split, ...: one line, then stop
            where = source.dataset + (f" (config {config})" if config else "")
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LightReasonerError(f"benchmark {name!r}: no data folder given (--data-dir or ${DATA_DIR_ENV}) "
                                     f"and the Hub copy {where} could not be loaded: {reason}") from None
        rows.extend(dict(row) for row in dataset)
    return rows


def load_problems(source: str | Path, *, split: str = "test", data_dir: str | Path | None = None,
                  limit: int | None = None, seed: int | None = None, sample: int | None = None) -> list[Problem]:
    """Problems from a benchmark name or a JSONL path, in file order.

    ``limit`` keeps the first N; ``sample`` keeps a seeded random N (in file order). Ids are
    made unique so that records can be keyed by them.
    """
    text = str(source)
    if text in GENERATED:
        problems = generate_problems(split=split, seed=seed or 0)
    elif text in BENCHMARKS:
        spec = BENCHMARKS[text]
        folder = resolve_data_dir(data_dir)
        if folder is not None:
            path = folder / text / f"{split}.jsonl"
            if not path.is_file():
                raise LightReasonerError(f"{path}: benchmark file not found (benchmark {text!r}, split {split!r})")
            problems = [_benchmark_problem(spec, r, f"{path}:{n}", i)
                        for i, (n, r) in enumerate(iter_jsonl(path))]
        else:
            problems = [_benchmark_problem(spec, r, f"{text} (Hub) row {i}", i)
                        for i, r in enumerate(_from_hub(text, split))]
    elif text.endswith(".jsonl") or Path(text).is_file():
        path = Path(text)
        problems = [_generic_problem(r, f"{path}:{n}", i) for i, (n, r) in enumerate(iter_jsonl(path))]
        if not problems:
            raise LightReasonerError(f"{path}: no problems in file (empty)")
    else:
        known = ", ".join(sorted(BENCHMARKS) + list(GENERATED))
        raise LightReasonerError(f"unknown data source {text!r}: not a file, and not one of the benchmarks {known}")
    problems = _unique_ids(problems, text)
    if sample is not None and sample < len(problems):
        import random

        chosen = sorted(random.Random(seed or 0).sample(range(len(problems)), sample))
        problems = [problems[i] for i in chosen]
    if limit is not None:
        problems = problems[:limit]
    return problems


def check_same_problems(path: str | Path, records: Iterable[dict[str, Any]], problems: Iterable[Problem]) -> None:
    """Refuse to resume ``path`` if a question it already holds now reads differently in the data
    (the data changed under the same ids): its old and new records would answer different questions.
    The data's location may change between runs; this is what must not."""
    by_id = {p.id: p for p in problems}
    for record in records:
        problem = by_id.get(str(record["id"]))
        if problem is None:  # a question the current selection leaves out
            continue
        for name in ("question", "gold"):
            if name in record and record[name] != getattr(problem, name):
                raise LightReasonerError(f"{path}: the {name} of question {problem.id} differs from the data's now; "
                                         "use another --out")


def _unique_ids(problems: list[Problem], source: str) -> list[Problem]:
    """Make ids unique (the second ``a`` becomes ``a#1``), with a one-line note when any repeat."""
    seen: dict[str, int] = {}
    unique = []
    for problem in problems:
        count = seen.get(problem.id, 0)
        seen[problem.id] = count + 1
        unique.append(problem if count == 0 else Problem(f"{problem.id}#{count}", problem.question, problem.gold))
    repeated = [problem_id for problem_id, count in seen.items() if count > 1]
    if repeated:
        log.warning("note: %s: question ids repeat (%d of them, first %r); a repeat is read as %s#1, %s#2, ...",
                    source, len(repeated), repeated[0], repeated[0], repeated[0])
    return unique
