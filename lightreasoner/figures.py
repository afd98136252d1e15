"""The figures of a report and of ``lightreasoner compare --plot``, as PNG bytes (matplotlib, imported
when a figure is drawn): per-step KL, the training loss, each arm's accuracy, and each arm's paired
gain over the baseline."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

from .answers import load_summary
from .arms import ARM_EVAL_DIRS, Arm
from .errors import LightReasonerError
from .paired import GainRows
from .tables import _average, _common_benchmarks

def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def kl_plot(kl_values: Sequence[float], beta: float) -> bytes:
    """Histogram of per-step KL on a log axis, with the beta threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.clip(np.asarray(kl_values, dtype=float), 1e-5, None)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.hist(values, bins=np.logspace(-5, max(1.5, np.log10(values.max()) + 0.1), 60), color="#4c72b0")
    axis.axvline(beta, color="#c44e52", linestyle="--", label=f"beta = {beta}")
    kept = float((values >= beta).mean()) if len(values) else 0.0
    axis.set(xscale="log", xlabel="KL(pi_E || pi_A) per step (nats)", ylabel="steps",
             title=f"{len(values):,} steps, {kept:.1%} kept")
    axis.legend()
    data = _png(figure)
    plt.close(figure)
    return data


def loss_plot(log_records: Sequence[dict[str, Any]]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r["loss"]) for r in log_records if "loss" in r and "step" in r]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.plot([p[0] for p in points], [p[1] for p in points], color="#4c72b0")
    axis.set(xlabel="optimizer step", ylabel="loss (mean KL over kept steps)", title="training loss")
    data = _png(figure)
    plt.close(figure)
    return data


def gains_plot(gains: GainRows, strict: GainRows | None = None) -> bytes | None:
    """Each arm's paired difference to the baseline with its 95% interval, per benchmark and over all
    questions, as points on one axis (:func:`paired_gains`), by the toolkit's verdict and, beside it
    when given, by the strict one: what the accuracy tables say, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not gains:
        return None
    panels = {"toolkit's verdict": gains, **({"strict verdict": strict} if strict else {})}
    groups = list(dict.fromkeys(name for rows in gains.values() for name, _ in rows))
    figure, axes = plt.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False,
                                figsize=(5 * len(panels) + 1, 0.8 + 0.25 * len(groups) * (len(gains) + 1)))
    for axis, (verdict, arms) in zip(axes[0], panels.items()):
        for index, (arm, rows) in enumerate(arms.items()):
            # Arms keep the colours of the accuracy chart (tab10 in ARM_EVAL_DIRS order, baseline first).
            colour = f"C{list(ARM_EVAL_DIRS).index(arm)}"
            y = [groups.index(name) * (len(gains) + 1) + index for name, _ in rows]
            diff = [100 * p["diff"] for _, p in rows]
            bars = [error_bar(p["diff"], p["low"], p["high"]) for _, p in rows]
            axis.errorbar(diff, y, xerr=list(zip(*bars)), fmt="o", color=colour, capsize=3, label=arm)
        axis.axvline(0, color="grey", linewidth=0.8)
        axis.set(xlabel="accuracy - baseline (points)", title=f"gain over the baseline, {verdict}")
    axes[0, 0].set_yticks([g * (len(gains) + 1) + (len(gains) - 1) / 2 for g in range(len(groups))], groups)
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize="small")
    figure.suptitle("paired on the same questions, bootstrap 95% intervals", fontsize="small", y=0.0)
    data = _png(figure)
    plt.close(figure)
    return data


def error_bar(estimate: float, low: float, high: float) -> tuple[float, float]:
    """An interval as matplotlib's error bar: (below, above) the estimate, in points. Never negative:
    matplotlib refuses that, and an end may pass the estimate (by rounding at 0% or 100%, or because
    a bootstrap percentile interval need not contain its estimate)."""
    return max(0.0, 100 * (estimate - low)), max(0.0, 100 * (high - estimate))


def _error_bar(result: dict[str, Any] | None, suffix: str = "") -> tuple[float, float]:
    """A benchmark result's 95% interval by one verdict; NaN draws no bar (a benchmark the arm lacks,
    or the average, which has no interval of its own)."""
    if result is None or f"accuracy{suffix}" not in result:
        return math.nan, math.nan
    return error_bar(result[f"accuracy{suffix}"], *result[f"ci95{suffix}"])


def arms_plot(arms: Sequence[Arm]) -> bytes:
    """Grouped bar charts (PNG bytes), one per verdict (the strict one when every arm has it):
    accuracy per benchmark, with its 95% interval, and on average, one bar per evaluated arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [a for a in arms if a.eval_dir is not None]
    if not evaluated:
        raise LightReasonerError("compare: none of the arms has been evaluated (no eval_after/summary.json)")
    summaries = [load_summary(a.eval_dir) for a in evaluated]
    labels = [a.label for a in evaluated]
    groups = list(dict.fromkeys(name for s in summaries for name in s["benchmarks"]))
    common = _common_benchmarks(summaries)
    strict = all("accuracy_strict" in r for s in summaries for r in s["benchmarks"].values())
    verdicts = {"": "toolkit's verdict", "_strict": "strict verdict"} if strict else {"": "toolkit's verdict"}
    shown = groups + ([f"average ({len(common)})"] if len(groups) > 1 and common else [])
    figure, axes = plt.subplots(len(verdicts), 1, squeeze=False, sharex=True,
                                figsize=(max(6.0, 1.2 * len(shown) * max(1, len(labels)) / 2), 3.2 * len(verdicts)))
    width = 0.8 / len(labels)
    for axis, (suffix, verdict) in zip(axes[:, 0], verdicts.items()):
        for index, (label, summary) in enumerate(zip(labels, summaries)):
            results = [summary["benchmarks"].get(g) for g in groups]
            values = [100 * r[f"accuracy{suffix}"] if r else 0.0 for r in results]
            errors = [_error_bar(r, suffix) for r in results]
            if len(shown) > len(groups):
                values.append(100 * (_average(summary, common, suffix) or 0.0))
                errors.append(_error_bar(None))
            offsets = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(shown))]
            axis.bar(offsets, values, width, label=label, color=f"C{index}", yerr=list(zip(*errors)), capsize=2,
                     error_kw={"linewidth": 0.8})
        axis.set(ylabel="accuracy (%)", title=f"accuracy per arm, {verdict} (95% intervals)", ylim=(0, 100))
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1, 0].set_xticks(range(len(shown)), shown, rotation=20 if len(shown) > 5 else 0)
    data = _png(figure)
    plt.close(figure)
    return data
