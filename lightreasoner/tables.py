"""Plain-text tables of evaluation results: one run, several side by side, and arms compared.

Kept apart from the evaluation loop so that other stages can add their own tables next to these:
the arms comparison (baseline, sft, lightreasoner and the controls) prints the paper's two tables,
accuracy with the gain over the baseline and the efficiency table, from the arms
:func:`lightreasoner.arms.find_arms` finds in run and arm folders.
Every accuracy is given by both verdicts (:mod:`lightreasoner.grading`): the toolkit's and the
strict one. Tables stay within about 100 columns: several folders are listed one under the other
per benchmark, not side by side.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from .answers import load_summary
from .arms import Arm, folder_labels
from .errors import LightReasonerError


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Left-align the first ``left`` columns (names), right-align the others (numbers)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def accuracy_ci(result: dict[str, Any], suffix: str = "") -> str:
    """"62.0 [56.4, 67.3]": a benchmark result's accuracy (%) with its 95% interval, by the toolkit's
    verdict (``suffix`` "") or the strict one ("_strict"); "-" for a result graded before it existed."""
    if f"accuracy{suffix}" not in result:
        return "-"
    low, high = result[f"ci95{suffix}"]
    return f"{100 * result[f'accuracy{suffix}']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def cut_off_cell(result: dict[str, Any]) -> str:
    """How many answers hit the token limit, and their share: "40 (40%)"."""
    if "cut_off" not in result:
        return "-"
    return f"{result['cut_off']} ({100 * result['cut_off'] / max(result['n'], 1):.0f}%)"


def results_table(summary: dict[str, Any]) -> str:
    """Per benchmark n, accuracy by both verdicts with 95% intervals, answers cut off at the token
    limit, tokens and seconds; then the average accuracy and the totals."""
    results = summary["benchmarks"].values()
    rows = [[name, str(r["n"]), accuracy_ci(r), accuracy_ci(r, "_strict"), cut_off_cell(r), str(r["tokens"]),
             f"{r['seconds']:.1f}"] for name, r in summary["benchmarks"].items()]
    strict = summary.get("average_strict")
    rows.append(["average", str(sum(r["n"] for r in results)), f"{100 * summary['average']:.1f}",
                 "-" if strict is None else f"{100 * strict:.1f}", str(sum(r.get("cut_off", 0) for r in results)),
                 str(summary["tokens"]), f"{summary['seconds']:.1f}"])
    return _render(["benchmark", "n", "accuracy [95% CI]", "strict [95% CI]", "cut off", "tokens", "seconds"], rows)


# Settings of an evaluation that change its answers besides the model: the engine and its arithmetic (a
# quantized llama.cpp model, bfloat16 and float32 resolve near-ties differently) and the token budget (an
# answer cut off at the smaller one may have finished at the larger).
ANSWER_SETTINGS = {"backend": "backends", "dtype": "dtypes", "max_new_tokens": "token budgets"}


def mixed_answers_note(eval_dirs: Sequence[str | Path]) -> str:
    """A warning when the folders' answers were made with different :data:`ANSWER_SETTINGS`: a
    difference between them is then not the arms' alone."""
    summaries = [load_summary(d).get("settings", {}) for d in eval_dirs]
    defaults = {"backend": "hf"}  # folders from before the llama.cpp backend
    # "auto" is what was asked, not what ran (bf16 on one machine, float32 on another): not compared.
    mixed = [f"{ANSWER_SETTINGS[key]} ({', '.join(map(str, sorted(values)))})" for key in ANSWER_SETTINGS
             if len(values := {s.get(key, defaults.get(key)) for s in summaries} - {None, "auto"}) > 1]
    if not mixed:
        return ""
    return (f"Note: these answers were made with different {' and '.join(mixed)}; a difference between them mixes "
            "that with the arms' (compare arms evaluated alike; `eval` with a larger --max-new-tokens grows a "
            "folder's cut-off answers)")


def compare_table(result_dirs: Sequence[str | Path]) -> str:
    """Accuracy of several evaluation folders, one under the other per benchmark, each with its
    difference to the first, by both verdicts (see :func:`_accuracy_rows`)."""
    if not result_dirs:
        raise LightReasonerError("compare: give at least one evaluation output folder")
    header, rows = _accuracy_rows([load_summary(d) for d in result_dirs], folder_labels(result_dirs), "folder", "diff")
    return _render(header, rows, left=2)


def _common_benchmarks(summaries: Sequence[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    return [n for n in names if all(n in s["benchmarks"] for s in summaries)]


def _average(summary: dict[str, Any], names: Sequence[str], suffix: str = "") -> float | None:
    """The unweighted average accuracy over ``names`` by one verdict; None if a result lacks it."""
    values = [summary["benchmarks"][n].get(f"accuracy{suffix}") for n in names]
    return None if None in values else sum(values) / len(values)


def _points(value: float | None, base: float | None, signed: bool = False) -> str:
    if value is None or (signed and base is None):
        return "-"
    return f"{100 * (value - base):+.1f}" if signed else f"{100 * value:.1f}"


def _accuracy_rows(summaries: Sequence[dict[str, Any]], labels: Sequence[str], label_name: str,
                   diff_name: str) -> tuple[list[str], list[list[str]]]:
    """Per benchmark (with its n), one row per summary: accuracy with its 95% interval and the
    difference to the first summary, by the toolkit's verdict and the strict one, and the answers
    cut off at the token limit. A benchmark missing from a summary shows "-" ("running" while its
    evaluation is still at work); the average rows use the benchmarks that every summary has, so that
    averages compare like with like (the count is in the label)."""
    names = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    header = ["benchmark", label_name, "accuracy [95% CI]", diff_name, "strict [95% CI]", diff_name, "cut off"]
    rows = []
    for name in names:
        results = [s["benchmarks"].get(name) for s in summaries]
        group = f"{name} ({'/'.join(sorted({str(r['n']) for r in results if r}))})"
        for index, (label, result, summary) in enumerate(zip(labels, results, summaries)):
            cells = [group if index == 0 else "", label]
            if result is None:
                # An evaluation still running lists the benchmarks it has not finished as pending.
                rows.append(cells + ["running" if name in summary.get("pending", ()) else "-"] + ["-"] * 4)
                continue
            for suffix in ("", "_strict"):
                base = results[0].get(f"accuracy{suffix}") if results[0] else None
                cells += [accuracy_ci(result, suffix), "" if index == 0 else _points(
                    result.get(f"accuracy{suffix}"), base, signed=True)]
            rows.append(cells + [cut_off_cell(result)])
    common = _common_benchmarks(summaries)
    if common:
        for index, (label, summary) in enumerate(zip(labels, summaries)):
            cells = [f"average ({len(common)})" if index == 0 else "", label]
            for suffix in ("", "_strict"):
                value, base = _average(summary, common, suffix), _average(summaries[0], common, suffix)
                cells += [_points(value, None), "" if index == 0 else _points(value, base, signed=True)]
            rows.append(cells + [""])
    return header, rows


# ----------------------------------------------------------------------------------------------
# Arms: the paper's two tables (accuracy with the gain over the baseline; efficiency)

def _reference(arms: Sequence[Arm]) -> Arm | None:
    """The arm gains are measured from: the first baseline, else the first evaluated arm."""
    evaluated = [a for a in arms if a.eval_dir is not None]
    return next((a for a in evaluated if a.baseline), evaluated[0] if evaluated else None)


def arms_accuracy(arms: Sequence[Arm]) -> tuple[list[str], list[list[str]]]:
    """Accuracy per benchmark of every evaluated arm, each with its gain over the baseline."""
    reference = _reference(arms)
    if reference is None:
        raise LightReasonerError("compare: none of the arms has been evaluated (no eval_after/summary.json)")
    evaluated = [reference] + [a for a in arms if a.eval_dir is not None and a is not reference]
    return _accuracy_rows([load_summary(a.eval_dir) for a in evaluated], [a.label for a in evaluated], "arm", "gain")


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


EFFICIENCY_TITLE = "Efficiency (time: sampling + training; tuned: tokens carrying loss; gain: on average, points)"


def kept_cell(efficiency: dict[str, Any]) -> str:
    """The examples an arm kept, with what they are: SFT keeps whole solutions, the others kept steps."""
    unit = "solutions" if efficiency.get("arm") == "sft" else "steps"
    return f"{efficiency.get('examples_kept', 0):,} {unit}"


def arms_efficiency(arms: Sequence[Arm]) -> tuple[list[str], list[list[str]]]:
    """The paper's efficiency table for every trained arm: time (sampling + training), sampled
    problems, tokens generated, examples kept, tuned tokens (tokens carrying loss), optimizer steps
    ("updates"), and the average gain over the baseline (in points, on the benchmarks all arms
    share) by the toolkit's verdict and the strict one."""
    reference = _reference(arms)
    summaries = {a.label: load_summary(a.eval_dir) for a in arms if a.eval_dir is not None}
    common = _common_benchmarks(list(summaries.values()))
    header = ["arm", "time", "problems", "generated", "kept", "tuned", "updates", "gain", "strict"]
    rows = []
    for arm in arms:
        if arm.efficiency is None:
            continue
        e = arm.efficiency
        gains = ["-", "-"]
        if reference is not None and reference.baseline and arm.label in summaries and common:
            gains = [_points(_average(summaries[arm.label], common, suffix),
                             _average(summaries[reference.label], common, suffix), signed=True)
                     for suffix in ("", "_strict")]
        rows.append([arm.label, format_seconds(float(e["total_seconds"])), f"{e['problems_sampled']:,}",
                     f"{e.get('tokens_generated', 0):,}", kept_cell(e), f"{e['tokens_tuned']:,}",
                     f"{e.get('optimizer_steps', 0):,}", *gains])
    return header, rows


def savings_line(arms: Sequence[Arm]) -> str:
    """"lightreasoner vs sft: X% less time, ..." (the paper's claim), when both arms were run."""
    costs = {a.label: a.efficiency for a in arms if a.efficiency is not None}
    if "lightreasoner" not in costs or "sft" not in costs:
        return ""

    def less(key: str) -> str:
        ours, theirs = float(costs["lightreasoner"][key]), float(costs["sft"][key])
        return f"{100 * (1 - ours / theirs):.0f}%" if theirs else "-"

    return (f"lightreasoner vs sft: {less('total_seconds')} less time, {less('problems_sampled')} fewer sampled "
            f"problems, {less('tokens_tuned')} fewer tuned tokens (paper: about 90%, 80%, 99%)")


ACCURACY_TITLE = "Accuracy (%) [95% CI] and gain over the baseline, by the toolkit's verdict and the strict one"


def arms_report(arms: Sequence[Arm]) -> str:
    """Both tables for the terminal."""
    parts = [ACCURACY_TITLE, _render(*arms_accuracy(arms), left=2)]
    header, rows = arms_efficiency(arms)
    if rows:
        parts += ["", EFFICIENCY_TITLE, _render(header, rows)]
        line = savings_line(arms)
        if line:
            parts.append(textwrap.fill(line, 100))
    return "\n".join(parts)
