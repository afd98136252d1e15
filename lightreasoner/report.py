"""The report of a run folder: ``report.md`` and a self-contained ``report.html``, and its tables for
the terminal; the paired tables come from :mod:`lightreasoner.paired`, the figures from
:mod:`lightreasoner.figures`.

It reads only the files the stages wrote (run.json, stages.json, samples.jsonl, the training
summary and log, the evaluation folders), so ``lightreasoner report DIR`` can redraw it at any time,
also in a folder of ``lightreasoner publish`` (from samples.outputs.jsonl, without the token view).
"""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import Any

from .adapter_fit import fit_rows, fit_verdict
from .arms import ARM_EVAL_DIRS, find_arms
from .errors import LightReasonerError
from .figures import arms_plot, gains_plot, kl_plot, loss_plot
from .inspection import findings_tables, inspect_samples
from .layout import (ADAPTER_DIR, ADAPTER_FIT_FILE, ARMS_FIGURE, GAINS_FIGURE, KL_FIGURE, LOSS_FIGURE,
                     PUBLISHED_SAMPLES_FILE, REPORT_HTML, REPORT_MD, RUN_FILE, SAMPLES_FILE, STAGES_FILE, SUMMARY_FILE,
                     TRAIN_LOG_FILE, TRAIN_SUMMARY_FILE, meta_path)
from .paired import (HEADLINE_NOTE, HEADLINE_TITLE, PAIRED_NOTE, accuracy_note, accuracy_tables, headline_rows,
                     paired_gains)
from .records import iter_jsonl, read_json
from .sampling import iter_samples
from .tables import (ACCURACY_TITLE, EFFICIENCY_TITLE, _render, arms_accuracy, arms_efficiency, arms_report,
                     mixed_answers_note, savings_line)

TOKEN_VIEW_TRAJECTORIES = 3


def _answered_eval_dirs(run_dir: Path) -> list[Path]:
    return [run_dir / folder for folder in ARM_EVAL_DIRS.values() if (run_dir / folder / SUMMARY_FILE).exists()]


FIT_TITLE = "Adapter fit: KL to the contrast's soft labels on kept steps, without (base) and with the adapter"
FIT_HEADER = ["kept steps", "trajectories", "steps", "base KL", "adapted KL", "adapted - base [95% CI]", "lowered"]
FIT_NOTE = ("KL: the training objective, mean per kept step; interval: bootstrap over trajectories; lowered: the "
            "share of steps whose KL the adapter lowered.")


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


def report_tokenizer(run_dir: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The expert's tokenizer, for the report's token view (a run folder holding its samples with their
    questions) and its tables of kept tokens (also a published folder, from samples.outputs.jsonl).
    None without samples, and for a published folder whose expert's tokenizer is not at hand here or
    is not the one the samples were made with: those tables are then left out. Code shipped with the
    tokenizer runs only with ``trust_remote_code``, the caller's choice."""
    from .models import load_tokenizer, tokenizer_fingerprint

    run_dir = Path(run_dir)
    expert = read_json(run_dir / RUN_FILE)["settings"]["expert"]
    if (run_dir / SAMPLES_FILE).exists():
        return load_tokenizer(expert, trust_remote_code=trust_remote_code)
    if not (run_dir / PUBLISHED_SAMPLES_FILE).exists():
        return None
    try:
        tokenizer = load_tokenizer(expert, trust_remote_code=trust_remote_code)
    except LightReasonerError:
        return None
    try:
        _, header, _ = iter_samples(run_dir / PUBLISHED_SAMPLES_FILE)
    except LightReasonerError:  # not a sample file: no token tables, as without one
        return None
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
    records = [r for _, r in iter_samples(samples)[2]] if samples else []
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
    for note in (mixed_answers_note(_answered_eval_dirs(run_dir)), accuracy_note(run_dir)):
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
    planned = run.get("plan", {}).get("seconds", {})  # a time-budgeted run's estimate per stage
    if "eval_before" not in planned:  # none, or a plan recorded before stages and estimates shared names
        planned = {}
    efficiency = [[name, *([f"{planned[name]:.0f}" if name in planned else "-"] if planned else []),
                   f"{info.get('seconds', 0):.1f}", "done" if info.get("done") else "not finished"]
                  for name, info in stages.items()]
    if efficiency:
        section("Time per stage", ["stage", *(["planned"] if planned else []), "seconds", "status"], efficiency)
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
    for note in (mixed_answers_note(_answered_eval_dirs(run_dir)), accuracy_note(run_dir)):
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
