"""Plain-text tables of evaluation results: one run, several side by side, and arms compared.

Kept apart from the evaluation loop so that other stages can add their own tables next to these:
the arms comparison (baseline, sft, lightreasoner and the controls) prints the paper's two tables,
accuracy with the gain over the baseline and the efficiency table, from run and arm folders.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import LightReasonerError
from .records import read_json


def _render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def results_table(summary: dict[str, Any]) -> str:
    """Accuracy per benchmark with its 95% interval and n, the average, tokens and seconds."""
    rows = []
    for name, result in summary["benchmarks"].items():
        low, high = result["ci95"]
        rows.append([name, str(result["n"]), f"{100 * result['accuracy']:.1f}",
                     f"[{100 * low:.1f}, {100 * high:.1f}]", str(result["tokens"]), f"{result['seconds']:.1f}"])
    rows.append(["average", str(sum(r["n"] for r in summary["benchmarks"].values())),
                 f"{100 * summary['average']:.1f}", "", str(summary["tokens"]), f"{summary['seconds']:.1f}"])
    return _render(["benchmark", "n", "accuracy", "95% CI", "tokens", "seconds"], rows)


def load_summary(result_dir: str | Path) -> dict[str, Any]:
    path = Path(result_dir) / "summary.json"
    if not path.is_file():
        raise LightReasonerError(f"{path}: no summary.json here (not an evaluation output folder)")
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("benchmarks"), dict):
        raise LightReasonerError(f"{path}: not an evaluation summary (no 'benchmarks')")
    return summary


def engines_note(eval_dirs: Sequence[str | Path]) -> str:
    """A warning when the folders were answered by different backends: a quantized llama.cpp model and
    torch can resolve near-ties differently, so their difference is not the arms' alone."""
    backends = sorted({load_summary(d).get("settings", {}).get("backend", "hf") for d in eval_dirs})
    if len(backends) < 2:
        return ""
    return (f"Note: these answers come from different backends ({', '.join(backends)}); a difference between them "
            "mixes the engines' with the arms' (compare arms evaluated with one backend)")


def compare_table(result_dirs: Sequence[str | Path]) -> str:
    """Accuracy of several evaluation folders side by side, with each one's difference to the first.

    A benchmark missing from a folder shows "-"; the average row uses the benchmarks that every
    folder has, so that the averages compare like with like (the count is in the label).
    """
    if not result_dirs:
        raise LightReasonerError("compare: give at least one evaluation output folder")
    header, rows = _accuracy_rows([load_summary(d) for d in result_dirs], _labels(result_dirs), "diff")
    return _render(header, rows)


def _common_benchmarks(summaries: Sequence[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    return [n for n in names if all(n in s["benchmarks"] for s in summaries)]


def _average(summary: dict[str, Any], names: Sequence[str]) -> float:
    return sum(summary["benchmarks"][n]["accuracy"] for n in names) / len(names)


def _accuracy_rows(summaries: Sequence[dict[str, Any]], labels: Sequence[str],
                   diff_name: str) -> tuple[list[str], list[list[str]]]:
    """Rows of accuracy (%) per benchmark, one column per summary, each after the first with its
    difference to the first; the average row over the benchmarks every summary has."""
    names = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    common = _common_benchmarks(summaries)
    header = ["benchmark"]
    for index, label in enumerate(labels):
        header += [label] if index == 0 else [label, diff_name]

    def row(name: str, values: list[float | None], n: str) -> list[str]:
        cells = [f"{name} ({n})"]
        for index, (value, summary) in enumerate(zip(values, summaries)):
            # An evaluation still running lists the benchmarks it has not finished as pending.
            missing = "running" if name in summary.get("pending", ()) else "-"
            cells.append(missing if value is None else f"{100 * value:.1f}")
            if index:
                base = values[0]
                cells.append("-" if value is None or base is None else f"{100 * (value - base):+.1f}")
        return cells

    rows = []
    for name in names:
        results = [s["benchmarks"].get(name) for s in summaries]
        ns = sorted({str(r["n"]) for r in results if r})
        rows.append(row(name, [r["accuracy"] if r else None for r in results], "/".join(ns)))
    if common:
        rows.append(row("average", [_average(s, common) for s in summaries], f"{len(common)} benchmarks"))
    return header, rows


# ----------------------------------------------------------------------------------------------
# Arms: the paper's two tables (accuracy with the gain over the baseline; efficiency)

# Where each arm of a `lightreasoner run` folder keeps its evaluation, in the paper's table order;
# a trained arm's costs (efficiency.json) sit in the folder above its evaluation.
ARM_EVAL_DIRS = {"baseline": "eval_before", "sft": "sft/eval_after", "lightreasoner": "eval_after",
                 "format-only": "format-only/eval_after", "random-positions": "random-positions/eval_after"}


@dataclass(frozen=True)
class Arm:
    """One compared arm: its evaluation folder (if evaluated) and, for a trained arm, its costs
    (the ``efficiency.json`` contract of :func:`lightreasoner.pipeline.efficiency`)."""

    label: str
    eval_dir: Path | None
    efficiency: dict[str, Any] | None = None
    baseline: bool = False


def _evaluated(folder: Path) -> Path | None:
    return folder if (folder / "summary.json").is_file() else None


def _read_efficiency(folder: Path) -> dict[str, Any] | None:
    path = folder / "efficiency.json"
    if not path.is_file():
        return None
    record = read_json(path)
    missing = [k for k in ("arm", "total_seconds", "problems_sampled", "tokens_tuned") if k not in record]
    if missing:
        raise LightReasonerError(f"{path}: not an efficiency record (no {missing[0]!r})")
    return record


def _is_run_folder(folder: Path) -> bool:
    """A `lightreasoner run` folder (its run.json has a settings section; an eval folder's has none)."""
    path = folder / "run.json"
    return path.is_file() and "settings" in read_json(path)


def find_arms(folders: Sequence[str | Path]) -> list[Arm]:
    """The arms in run folders (baseline = eval_before, lightreasoner, and sft/, format-only/ and
    random-positions/ when present), arm folders (``lightreasoner sft``/``control`` output, with
    eval_after/ once evaluated) and plain evaluation folders; labels get the folder name in front
    where two would be equal."""
    found: list[tuple[Path, Arm]] = []
    for folder in map(Path, folders):
        if _is_run_folder(folder):
            arms = [Arm(label, _evaluated(folder / eval_dir),
                        None if label == "baseline" else _read_efficiency((folder / eval_dir).parent),
                        label == "baseline") for label, eval_dir in ARM_EVAL_DIRS.items()]
            found += [(folder, a) for a in arms if a.eval_dir is not None or a.efficiency is not None]
        elif (efficiency := _read_efficiency(folder)) is not None:
            found.append((folder, Arm(str(efficiency["arm"]), _evaluated(folder / "eval_after"), efficiency)))
        elif _evaluated(folder) is not None:
            load_summary(folder)  # a clear error for a malformed summary
            found.append((folder, Arm(folder.name, folder)))
        else:
            raise LightReasonerError(f"{folder}: neither a `lightreasoner run` folder, an arm folder "
                                     "(efficiency.json) nor an evaluation folder (summary.json)")
    labels = [arm.label for _, arm in found]
    names = dict(zip(map(Path, folders), _labels(folders)))
    return [Arm(f"{names[folder]}/{arm.label}" if labels.count(arm.label) > 1 else arm.label,
                arm.eval_dir, arm.efficiency, arm.baseline) for folder, arm in found]


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
    return _accuracy_rows([load_summary(a.eval_dir) for a in evaluated], [a.label for a in evaluated], "gain")


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def arms_efficiency(arms: Sequence[Arm]) -> tuple[list[str], list[list[str]]]:
    """The paper's efficiency table for every trained arm: time (sampling + training), sampled
    problems, tokens generated, examples kept, tuned tokens (tokens carrying loss), optimizer
    steps, and the average gain over the baseline (in points, on the benchmarks all arms share)."""
    reference = _reference(arms)
    summaries = {a.label: load_summary(a.eval_dir) for a in arms if a.eval_dir is not None}
    common = _common_benchmarks(list(summaries.values()))
    header = ["arm", "total time", "sampled problems", "tokens generated", "examples kept", "tuned tokens",
              "optimizer steps", "average gain"]
    rows = []
    for arm in arms:
        if arm.efficiency is None:
            continue
        e = arm.efficiency
        gain = "-"
        if reference is not None and reference.baseline and arm.label in summaries and common:
            difference = _average(summaries[arm.label], common) - _average(summaries[reference.label], common)
            gain = f"{100 * difference:+.1f}"
        rows.append([arm.label, format_seconds(float(e["total_seconds"])), f"{e['problems_sampled']:,}",
                     f"{e.get('tokens_generated', 0):,}", f"{e.get('examples_kept', 0):,}", f"{e['tokens_tuned']:,}",
                     f"{e.get('optimizer_steps', 0):,}", gain])
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


def arms_report(arms: Sequence[Arm]) -> str:
    """Both tables for the terminal."""
    parts = ["Accuracy (%) and gain over the baseline", _render(*arms_accuracy(arms))]
    header, rows = arms_efficiency(arms)
    if rows:
        parts += ["", "Efficiency (time = sampling + training)", _render(header, rows)]
        line = savings_line(arms)
        if line:
            parts.append(line)
    return "\n".join(parts)


def error_bar(estimate: float, low: float, high: float) -> tuple[float, float]:
    """An interval as matplotlib's error bar: (below, above) the estimate, in points. Never negative:
    matplotlib refuses that, and an end may pass the estimate (by rounding at 0% or 100%, or because
    a bootstrap percentile interval need not contain its estimate)."""
    return max(0.0, 100 * (estimate - low)), max(0.0, 100 * (high - estimate))


def _error_bar(result: dict[str, Any] | None) -> tuple[float, float]:
    """A benchmark result's 95% interval; NaN draws no bar (a benchmark the arm lacks, or the
    average, which has no interval of its own)."""
    return (math.nan, math.nan) if result is None else error_bar(result["accuracy"], *result["ci95"])


def arms_plot(arms: Sequence[Arm]) -> bytes:
    """Grouped bar chart (PNG bytes): accuracy per benchmark, with its 95% interval, and on average,
    one bar per evaluated arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [a for a in arms if a.eval_dir is not None]
    if not evaluated:
        raise LightReasonerError("compare: none of the arms has been evaluated (no eval_after/summary.json)")
    summaries = [load_summary(a.eval_dir) for a in evaluated]
    labels = [a.label for a in evaluated]
    groups = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    values = [[100 * s["benchmarks"][g]["accuracy"] if g in s["benchmarks"] else 0.0 for s in summaries]
              for g in groups]
    errors = [[_error_bar(s["benchmarks"].get(g)) for s in summaries] for g in groups]
    common = _common_benchmarks(summaries)
    if len(groups) > 1 and common:
        groups.append(f"average ({len(common)})")
        values.append([100 * _average(s, common) for s in summaries])
        errors.append([_error_bar(None)] * len(summaries))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(labels)) / 2), 3.6))
    width = 0.8 / len(labels)
    for index, label in enumerate(labels):
        offsets = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        axis.bar(offsets, [v[index] for v in values], width, label=label,
                 yerr=list(zip(*(e[index] for e in errors))), capsize=2, error_kw={"linewidth": 0.8})
    axis.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 5 else 0)
    axis.set(ylabel="accuracy (%)", title="accuracy per arm (95% intervals)", ylim=(0, 100))
    axis.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _labels(result_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, or parent/name where two folders share a name (runs/a/eval vs runs/b/eval)."""
    paths = [Path(d).resolve() for d in result_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
