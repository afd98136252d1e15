"""Plain-text tables of evaluation results: one run, and several runs side by side.

Kept apart from the evaluation loop so that other stages (``lightreasoner run``, the SFT
baseline) can add their own tables, e.g. an efficiency table, next to these.
"""

from __future__ import annotations

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


def compare_table(result_dirs: Sequence[str | Path]) -> str:
    """Accuracy of several evaluation folders side by side, with each one's difference to the first.

    A benchmark missing from a folder shows "-"; the average row uses the benchmarks that every
    folder has, so that the averages compare like with like (the count is in the label).
    """
    if not result_dirs:
        raise LightReasonerError("compare: give at least one evaluation output folder")
    summaries = [load_summary(d) for d in result_dirs]
    labels = _labels(result_dirs)
    names = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    common = [n for n in names if all(n in s["benchmarks"] for s in summaries)]
    header = ["benchmark"]
    for index, label in enumerate(labels):
        header += [label] if index == 0 else [label, "diff"]

    def row(name: str, values: list[float | None], n: str) -> list[str]:
        cells = [f"{name} ({n})"]
        for index, value in enumerate(values):
            cells.append("-" if value is None else f"{100 * value:.1f}")
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
        averages = [sum(s["benchmarks"][n]["accuracy"] for n in common) / len(common) for s in summaries]
        rows.append(row("average", averages, f"{len(common)} benchmarks"))
    return _render(header, rows)


def _labels(result_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, or parent/name where two folders share a name (runs/a/eval vs runs/b/eval)."""
    paths = [Path(d).resolve() for d in result_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
