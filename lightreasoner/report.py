"""The report of a run folder: ``report.md`` and a self-contained ``report.html``.

It reads only the files the stages wrote (run.json, stages.json, samples.jsonl, the training
summary and log, the evaluation folders), so ``lightreasoner report DIR`` can redraw it at any time,
also in a folder of ``lightreasoner publish`` (from samples.outputs.jsonl, without the token view).
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from pathlib import Path
from typing import Any, Sequence

from .adapter_fit import fit_rows, fit_verdict
from .arms import ARM_EVAL_DIRS, CONTROL_ARMS, find_arms, read_efficiency
from .errors import LightReasonerError
from .layout import (ADAPTER_DIR, ADAPTER_FIT_FILE, ARMS_FIGURE, GAINS_FIGURE, KL_FIGURE, LOSS_FIGURE,
                     PUBLISHED_SAMPLES_FILE, REPORT_HTML, REPORT_MD, RUN_FILE, SAMPLES_FILE, STAGES_FILE, SUMMARY_FILE,
                     TRAIN_LOG_FILE, TRAIN_SUMMARY_FILE, answers_file, meta_path)
from .inspection import findings_tables, inspect_samples
from .records import iter_jsonl, read_json
from .stats import mcnemar_p, paired_difference, wilson_interval
from .tables import (ACCURACY_TITLE, EFFICIENCY_TITLE, _render, accuracy_ci, arms_accuracy, arms_efficiency,
                     arms_plot, arms_report, engines_note, error_bar, savings_line)

TOKEN_VIEW_TRAJECTORIES = 3


# ------------------------------------------------------------------------------- accuracy tables

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


def _answered_eval_dirs(run_dir: Path) -> list[Path]:
    return [run_dir / folder for folder in ARM_EVAL_DIRS.values() if (run_dir / folder / SUMMARY_FILE).exists()]


FIT_TITLE = "Adapter fit: KL to the contrast's soft labels on kept steps, without (base) and with the adapter"
FIT_HEADER = ["kept steps", "trajectories", "steps", "base KL", "adapted KL", "adapted - base [95% CI]", "lowered"]
FIT_NOTE = ("KL: the training objective, mean per kept step; interval: bootstrap over trajectories; lowered: the "
            "share of steps whose KL the adapter lowered.")


# ---------------------------------------------------------------------------------------- plots


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


# ----------------------------------------------------------------------------------- token view


def token_view_html(record: dict[str, Any], tokenizer: Any) -> str:
    """A trajectory with every token shaded by expert-amateur KL; kept steps boxed, labels on hover."""
    kept = {s["step"]: s for s in record["steps"]}
    spans = []
    for step, (token_id, kl) in enumerate(zip(record["completion_ids"], record.get("kl", []))):
        text = tokenizer.decode([token_id])
        shade = min(kl / 2.0, 1.0)
        style = f"background: rgba(196, 78, 82, {shade:.2f})"
        tip = f"step {step} · KL {kl:.3f}"
        css = "tok"
        if step in kept:
            labels = sorted(zip(kept[step]["weights"], kept[step]["ids"]), reverse=True)
            tip += " · kept · soft label: " + ", ".join(f"{tokenizer.decode([i])!r} {w:.2f}" for w, i in labels)
            css += " kept"
        spans.append(f'<span class="{css}" style="{style}" title="{html.escape(tip)}">{html.escape(text)}</span>')
    return (f'<div class="traj"><div class="q">{html.escape(record["question"])}</div>'
            f'<div class="y">{"".join(spans)}</div></div>')


def token_view_text(record: dict[str, Any], tokenizer: Any) -> str:
    """Plain-text form for the Markdown report: kept steps in [brackets] with their KL."""
    kept = {s["step"]: s for s in record["steps"]}
    parts = []
    for step, token_id in enumerate(record["completion_ids"]):
        text = tokenizer.decode([token_id])
        parts.append(f"[{text}|{kept[step]['kl']:.2f}]" if step in kept else text)
    return "".join(parts)


# ---------------------------------------------------------------------------------------- report


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def settings_rows(run: dict[str, Any]) -> list[list[str]]:
    """The headline settings, then each setting a YAML section changed (``train.epochs``, ...), so
    the table says what the stages ran with rather than the headline defaults they replaced."""
    epochs = run.get("train", {}).get("epochs")
    rows = []
    for key, value in run["settings"].items():
        replaced = key == "max_steps" and epochs is not None
        rows.append([key, f"`{value}`" + (" (not used: train.epochs is set)" if replaced else "")])
    for section, values in run.get("overrides", {}).items():
        rows.extend([f"{section}.{key}", f"`{value}`"] for key, value in values.items())
    return rows


def report_tokenizer(run_dir: str | Path) -> Any:
    """The expert's tokenizer, for the report's token view (a run folder holding its samples with their
    questions) and its tables of kept tokens (also a published folder, from samples.outputs.jsonl).
    None without samples, and for a published folder whose expert's tokenizer is not at hand here or
    is not the one the samples were made with: those tables are then left out."""
    from .models import load_tokenizer, tokenizer_fingerprint

    run_dir = Path(run_dir)
    expert = read_json(run_dir / RUN_FILE)["settings"]["expert"]
    if (run_dir / SAMPLES_FILE).exists():
        return load_tokenizer(expert)
    if not (run_dir / PUBLISHED_SAMPLES_FILE).exists():
        return None
    try:
        tokenizer = load_tokenizer(expert)
    except LightReasonerError:
        return None
    header = next(iter_jsonl(run_dir / PUBLISHED_SAMPLES_FILE), (0, {}))[1]
    return tokenizer if tokenizer_fingerprint(tokenizer) == header.get("tokenizer", {}).get("fingerprint") else None


def build_report(run_dir: str | Path, *, tokenizer: Any = None) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the figures into ``run_dir``; return both paths."""
    run_dir = Path(run_dir)
    run = _read_optional(run_dir / RUN_FILE)
    if run is None:
        raise LightReasonerError(f"{run_dir}: no run.json here (not a `lightreasoner run` folder)")
    stages = _read_optional(run_dir / STAGES_FILE) or {}
    sample_meta = _read_optional(meta_path(run_dir / SAMPLES_FILE)) or {}
    train_summary = _read_optional(run_dir / ADAPTER_DIR / TRAIN_SUMMARY_FILE) or {}
    # A published folder (lightreasoner publish) keeps the samples' model outputs without the
    # question text: enough for the kept-step statistics and the KL figure, not for the token view.
    samples = next((path for path in (run_dir / SAMPLES_FILE, run_dir / PUBLISHED_SAMPLES_FILE) if path.exists()), None)
    records = [r for _, r in iter_jsonl(samples) if r.get("type") == "sample"] if samples else []
    train_log = [r for _, r in iter_jsonl(run_dir / ADAPTER_DIR / TRAIN_LOG_FILE)] \
        if (run_dir / ADAPTER_DIR / TRAIN_LOG_FILE).exists() else []
    settings = run["settings"]

    md = [f"# LightReasoner run: {run_dir.name}", "",
          f"Expert `{settings['expert']}`, amateur `{settings['amateur']}`, trained on "
          f"`{settings['data']}` ({settings['split']}).", ""]
    html_parts = [f"<h1>LightReasoner run: {html.escape(run_dir.name)}</h1>",
                  f"<p>Expert <code>{html.escape(settings['expert'])}</code>, amateur "
                  f"<code>{html.escape(settings['amateur'])}</code>, trained on "
                  f"<code>{html.escape(settings['data'])}</code> ({html.escape(settings['split'])}).</p>"]

    def section(title: str, header: list[str], rows: list[list[str]]) -> None:
        md.extend([f"## {title}", "", _markdown_table(header, rows), ""])
        html_parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")

    def paragraph(text: str) -> None:
        md.extend([text, ""])
        html_parts.append(f"<p>{html.escape(text)}</p>")

    def figure(name: str, data: bytes | None) -> None:
        if data is None:
            return
        (run_dir / name).write_bytes(data)
        md.extend([f"![{name}]({name})", ""])
        html_parts.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')

    # What a reader wants first: each arm's gain over the baseline, its significance and its cost.
    header, rows = headline_rows(run_dir)
    if rows:
        section(HEADLINE_TITLE, header, rows)
        paragraph(HEADLINE_NOTE)
        figure(GAINS_FIGURE, gains_plot(paired_gains(run_dir), paired_gains(run_dir, "correct_strict")))
    for note in (engines_note(_answered_eval_dirs(run_dir)), accuracy_note(run_dir)):
        if note:
            paragraph(note)
    fit = _read_optional(run_dir / ADAPTER_FIT_FILE)
    if fit:
        section(FIT_TITLE, FIT_HEADER, fit_rows(fit))
        paragraph(f"{FIT_NOTE} {fit_verdict(fit)}")

    arms = _compared_arms(run_dir)
    if arms:
        section(ACCURACY_TITLE, *arms_accuracy(arms))
        figure(ARMS_FIGURE, arms_plot(arms))
        header, rows = arms_efficiency(arms)
        if rows:
            section(EFFICIENCY_TITLE, header, rows)
            line = savings_line(arms)
            if line:
                paragraph(line)
    tables = accuracy_tables(run_dir)
    if tables:
        paragraph(PAIRED_NOTE)
    for table in tables:
        section(*table)

    tokens_tuned = train_summary.get("tokens_tuned")
    efficiency = [[name, f"{info.get('seconds', 0):.1f}", "done" if info.get("done") else "not finished"]
                  for name, info in stages.items()]
    if efficiency:
        section("Time per stage", ["stage", "seconds", "status"], efficiency)
    if sample_meta or records:  # a baseline-only run has no cost to account for
        section("Sampling and training of the lightreasoner arm", ["quantity", "value"], [
            ["questions sampled", f"{sample_meta.get('questions', len(records)):,}"],
            ["tokens generated (sampling)", f"{sample_meta.get('tokens_generated', 0):,}"],
            ["kept steps", f"{sum(len(r['steps']) for r in records):,}"],
            ["optimizer steps", f"{train_summary.get('optimizer_steps', '-')}"],
            ["tokens tuned (positions carrying loss)", f"{tokens_tuned:,}" if tokens_tuned is not None else "-"],
            ["forward tokens (training)", f"{train_summary.get('forward_tokens', 0):,}"],
        ])
    if records:  # lightreasoner inspect: the numbers and their reading
        findings = inspect_samples(samples, tokenizer=tokenizer)
        for table in findings_tables(findings):
            section(*table)
        md.extend(["Reading (generated from the numbers above; thresholds in lightreasoner/inspection.py):", ""]
                  + [f"- {sentence}" for sentence in findings["reading"]] + [""])
        html_parts.append("<p>Reading (generated from the numbers above):</p><ul>"
                          + "".join(f"<li>{html.escape(s)}</li>" for s in findings["reading"]) + "</ul>")
    section("Settings", ["setting", "value"], settings_rows(run))

    kl_values = [v for r in records for v in r.get("kl", [])]
    if kl_values:
        figure(KL_FIGURE, kl_plot(kl_values, settings["beta"]))
    figure(LOSS_FIGURE, loss_plot(train_log))

    shown = [r for r in records if r["steps"] and "question" in r][:TOKEN_VIEW_TRAJECTORIES]
    if shown and tokenizer is not None:
        md.extend(["## Trajectories", "", "Kept steps in [token|KL]; the HTML report shades every token by KL "
                   "and shows the soft labels on hover.", ""])
        html_parts.append("<h2>Trajectories</h2><p>Tokens shaded by expert-amateur KL; kept steps boxed; "
                          "hover for the soft label.</p>")
        for record in shown:
            md.extend([f"**{record['question']}**", "", "```", token_view_text(record, tokenizer), "```", ""])
            html_parts.append(token_view_html(record, tokenizer))

    md_path, html_path = run_dir / REPORT_MD, run_dir / REPORT_HTML
    md_path.write_text("\n".join(md), encoding="utf-8")
    html_path.write_text(_HTML.format(title=html.escape(run_dir.name), body="\n".join(html_parts)), encoding="utf-8")
    return md_path, html_path


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c).strip('`'))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _compared_arms(run_dir: Path) -> list:
    """The run's arms, once any is evaluated."""
    arms = find_arms([run_dir])
    return arms if any(arm.eval_dir is not None for arm in arms) else []


def text_summary(run_dir: str | Path, width: int = 100) -> str:
    """The report's tables for the terminal, in its order: the headline, accuracy and efficiency per
    arm, then the paired tables; notes wrapped at ``width`` columns, as the tables fit in them."""
    run_dir = Path(run_dir)
    parts = []
    header, rows = headline_rows(run_dir)
    if rows:
        parts.append(f"{HEADLINE_TITLE}\n{_render(header, rows)}\n{textwrap.fill(HEADLINE_NOTE, width)}")
        if (run_dir / GAINS_FIGURE).exists():
            parts[-1] += f"\nFigure: {run_dir / GAINS_FIGURE}"
    for note in (engines_note(_answered_eval_dirs(run_dir)), accuracy_note(run_dir)):
        if note:
            parts.append(textwrap.fill(note, width))
    fit = _read_optional(run_dir / ADAPTER_FIT_FILE)
    if fit:
        parts.append(f"{FIT_TITLE}\n{_render(FIT_HEADER, fit_rows(fit))}\n"
                     f"{textwrap.fill(FIT_NOTE + ' ' + fit_verdict(fit), width)}")
    arms = _compared_arms(run_dir)
    if arms:
        parts.append(arms_report(arms))
    tables = accuracy_tables(run_dir)
    if tables:
        parts.append(textwrap.fill(PAIRED_NOTE, width))
    parts += [f"{title}\n{_render(header, rows, left=2)}" for title, header, rows in tables]
    return "\n\n".join(parts)


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>LightReasoner run {title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
.traj {{ border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin: 1em 0; }}
.q {{ font-weight: 600; margin-bottom: 6px; }}
.y {{ font-family: ui-monospace, monospace; white-space: pre-wrap; }}
.tok.kept {{ outline: 2px solid #222; border-radius: 2px; }}
</style></head><body>
{body}
</body></html>
"""
