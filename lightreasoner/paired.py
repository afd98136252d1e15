"""Each arm against another on the same questions: the report's paired accuracy tables, its headline
(each arm's gain over the baseline) and the gains its figure draws.

A pair compares two evaluation folders of a run question by question, on the questions both have
answered (also while one is still answering): the accuracy of each side with its 95% Wilson
interval, the paired difference with its bootstrap interval, the questions gained and lost, and the
exact McNemar p of gained against lost, by the toolkit's verdict and the strict one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .arms import ARM_EVAL_DIRS, CONTROL_ARMS, read_efficiency
from .layout import SUMMARY_FILE, answers_file
from .records import iter_jsonl, read_json
from .stats import mcnemar_p, paired_difference, wilson_interval
from .tables import accuracy_ci

VERDICTS = {"correct": "toolkit", "correct_strict": "strict"}  # record field -> name in the tables
POOLED = "all questions"  # the row of every benchmark's questions together
PAIRED_NOTE = ("Paired tables: accuracy [95% Wilson CI] of both sides on the questions both answered, the "
               "difference with its paired-bootstrap 95% interval, the questions gained (wrong before, right "
               "after) and lost, and the exact McNemar p of gained against lost; by the toolkit's verdict "
               "and the strict one (a stated final answer in a completion that was not cut off).")


def _correct_by_id(eval_dir: Path, benchmark: str, key: str = "correct") -> dict[str, bool]:
    path = answers_file(eval_dir, benchmark)
    return {r["id"]: bool(r[key]) for _, r in iter_jsonl(path)} if path.exists() else {}


def verdicts(*eval_dirs: Path) -> list[str]:
    """The verdicts every answer in these folders carries: the toolkit's, and the strict one unless a
    folder was graded before it existed (``lightreasoner regrade`` adds it)."""
    strict = all("correct_strict" in r for folder in eval_dirs for path in folder.glob("*.jsonl")
                 for _, r in iter_jsonl(path))
    return list(VERDICTS) if strict else ["correct"]


def paired_answers(before_dir: Path, after_dir: Path,
                   key: str = "correct") -> list[tuple[str, int, list[bool], list[bool]]]:
    """Per benchmark of ``before_dir``'s summary: its number of questions and whether each question
    both folders have answered was correct before and after by the verdict ``key`` (in the same
    order); then the same over all those questions together, as :data:`POOLED`, when more than one
    benchmark has any."""
    paired, pooled_before, pooled_after = [], [], []
    for name, b in read_json(before_dir / SUMMARY_FILE)["benchmarks"].items():
        before, after = _correct_by_id(before_dir, name, key), _correct_by_id(after_dir, name, key)
        shared = [i for i in before if i in after]
        paired.append((name, b["n"], [before[i] for i in shared], [after[i] for i in shared]))
        pooled_before += paired[-1][2]
        pooled_after += paired[-1][3]
    if sum(1 for *_, after in paired if after) > 1:
        paired.append((POOLED, len(pooled_before), pooled_before, pooled_after))
    return paired


def _pooled(paired: list[tuple[str, int, list[bool], list[bool]]]) -> tuple[int, list[bool], list[bool]]:
    """Every benchmark of :func:`paired_answers` together: the questions in all, and the answers of
    those both sides have answered, before and after."""
    per_benchmark = [p for p in paired if p[0] != POOLED]
    return (sum(n for _, n, _, _ in per_benchmark), [c for p in per_benchmark for c in p[2]],
            [c for p in per_benchmark for c in p[3]])


def _accuracy(answers: Sequence[bool]) -> str:
    low, high = wilson_interval(sum(answers), len(answers))
    return f"{100 * sum(answers) / max(len(answers), 1):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _difference(paired: dict[str, float]) -> list[str]:
    """The paired difference with its interval, gained/lost and McNemar's p, as table cells."""
    return [f"{100 * paired['diff']:+.1f} [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}]",
            f"+{paired['gained']}/-{paired['lost']}", f"{mcnemar_p(paired['gained'], paired['lost']):.2f}"]


def accuracy_rows(before_dir: Path, after_dir: Path) -> tuple[list[list[str]], bool]:
    """Per benchmark of the baseline, by each verdict both folders carry: accuracy before and after on
    the questions both have answered, with 95% intervals, the paired difference with its interval,
    the questions gained and lost and McNemar's p; then the same over all those questions together.
    While the evaluation after training is still running, n says how many of the baseline's
    questions it has answered so far; the flag says whether it has answered them all."""
    rows, complete, results = [], True, read_json(before_dir / SUMMARY_FILE)["benchmarks"]
    keys = verdicts(before_dir, after_dir)
    by_verdict = {key: paired_answers(before_dir, after_dir, key) for key in keys}
    for index, (name, n, _, after) in enumerate(by_verdict["correct"]):
        complete &= len(after) == n
        for key in keys:
            label = name if key == "correct" else ""
            if not after:
                suffix = "" if key == "correct" else "_strict"
                rows.append([label, VERDICTS[key], f"0/{n}", accuracy_ci(results[name], suffix),
                             "not evaluated yet", "", "", ""])
                continue
            _, _, before, answered = by_verdict[key][index]
            rows.append([label, VERDICTS[key], str(n) if len(after) == n else f"{len(after)}/{n}",
                         _accuracy(before), _accuracy(answered), *_difference(paired_difference(before, answered))])
    return rows, complete


# The pairs of the paired tables: each trained arm against the baseline, then lightreasoner against
# sft (the paper's comparison), the format-only control against lightreasoner (what the contrast's
# labels add over training the same positions on the expert's own tokens), the random-positions
# control against format-only (what the contrast's positions add), every other control against
# lightreasoner, and entropy-one-hot against format-only (the expert's own uncertainty against the
# amateur for finding the positions).
PAIRS = [*(("baseline", arm) for arm in ARM_EVAL_DIRS if arm != "baseline"),
         ("sft", "lightreasoner"), ("lightreasoner", "format-only"), ("format-only", "random-positions"),
         *(("lightreasoner", arm) for arm in CONTROL_ARMS.values() if arm not in ("format-only", "random-positions")),
         ("format-only", "entropy-one-hot")]


def accuracy_tables(run_dir: Path) -> list[tuple[str, list[str], list[list[str]]]]:
    """Title, header and rows of the run's paired accuracy tables (:data:`PAIRS`, those with answers
    on both sides; while an arm's evaluation runs, on the questions answered so far)."""
    baseline_dir = run_dir / ARM_EVAL_DIRS["baseline"]
    if not (baseline_dir / SUMMARY_FILE).exists():
        return []
    tables = []
    for reference, arm in PAIRS:
        reference_dir, arm_dir = run_dir / ARM_EVAL_DIRS[reference], run_dir / ARM_EVAL_DIRS[arm]
        if not (reference_dir / SUMMARY_FILE).exists() or not any(arm_dir.glob("*.jsonl")):
            continue
        rows, complete = accuracy_rows(reference_dir, arm_dir)
        title = f"Paired: {arm} against {reference}"
        if not complete:
            title += " (in progress: both sides on the questions answered so far)"
        tables.append((title, ["benchmark", "verdict", "n", reference, arm, "diff [95% CI]", "+/-", "p"], rows))
    return tables


HEADLINE_TITLE = "Each arm against the baseline on the same questions"
HEADLINE_NOTE = ("Gain: accuracy difference in points over all questions both answered, with its paired-bootstrap "
                 "95% interval; p: exact McNemar test; strict: a stated final answer in a completion that was not "
                 "cut off (the toolkit's verdict also takes the last number of a cut-off text); hours: sampling "
                 "and training.")


def headline_rows(run_dir: Path) -> tuple[list[str], list[list[str]]]:
    """One row per trained arm with answers: the gain over the baseline on every question both have
    answered, with its interval and McNemar's p, by the toolkit's verdict and the strict one, and the
    arm's cost in hours (sampling and training)."""
    baseline_dir = run_dir / ARM_EVAL_DIRS["baseline"]
    header = ["arm", "n", "gain [95% CI]", "p", "strict gain [95% CI]", "p", "hours"]
    if not (baseline_dir / SUMMARY_FILE).exists():
        return header, []
    rows = []
    for arm, folder in ARM_EVAL_DIRS.items():
        arm_dir = run_dir / folder
        if arm == "baseline" or not any(arm_dir.glob("*.jsonl")):
            continue
        pooled = {key: _pooled(paired_answers(baseline_dir, arm_dir, key)) for key in verdicts(baseline_dir, arm_dir)}
        total, answered, _ = pooled["correct"]
        cells = [arm, str(total) if len(answered) == total else f"{len(answered)}/{total}"]
        for key in VERDICTS:
            if key in pooled:
                diff, _, p = _difference(paired_difference(*pooled[key][1:]))
                cells += [diff, p]
            else:  # answers graded before the strict verdict existed
                cells += ["-", "-"]
        efficiency = read_efficiency(arm_dir.parent)
        cells.append(f"{efficiency['total_seconds'] / 3600:.1f}" if efficiency else "-")
        rows.append(cells)
    return header, rows


def accuracy_note(run_dir: Path) -> str | None:
    """An honest line under the accuracy tables when the lightreasoner arm's paired interval against
    the baseline (over all questions both answered) includes zero: that many questions cannot tell."""
    before_dir, after_dir = run_dir / ARM_EVAL_DIRS["baseline"], run_dir / ARM_EVAL_DIRS["lightreasoner"]
    if not (before_dir / SUMMARY_FILE).exists() or not any(after_dir.glob("*.jsonl")):
        return None
    _, _, before, after = paired_answers(before_dir, after_dir)[-1]
    paired = paired_difference(before, after)
    if not before or not paired["low"] <= 0 <= paired["high"]:
        return None
    return (f"Too few questions to tell: on {len(before)} questions the paired 95% interval of lightreasoner - baseline "
            f"is [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}] points, which includes zero; "
            "the adapter fit below is a signal a run of this size can resolve.")


def paired_gains(run_dir: Path, key: str = "correct") -> dict[str, list[tuple[str, dict[str, float]]]]:
    """Each arm with answers against the baseline, by the verdict ``key`` (arms or a baseline graded
    before the strict verdict existed have none): per benchmark it has answered, then over all those
    questions, the paired difference (:func:`paired_difference`) on the questions both have."""
    baseline_dir = run_dir / ARM_EVAL_DIRS["baseline"]
    if not (baseline_dir / SUMMARY_FILE).exists():
        return {}
    return {arm: [(name, paired_difference(before, after))
                  for name, _, before, after in paired_answers(baseline_dir, run_dir / folder, key) if after]
            for arm, folder in ARM_EVAL_DIRS.items()
            if arm != "baseline" and any((run_dir / folder).glob("*.jsonl"))
            and key in verdicts(baseline_dir, run_dir / folder)}


GainRows = dict[str, list[tuple[str, dict[str, float]]]]
