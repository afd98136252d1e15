"""The report of a (published) run folder: the headline first, both verdicts, tables that fit in
100 columns, and `lightreasoner regrade` redrawing it from the answers and the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightreasoner.cli import main
from lightreasoner.figures import gains_plot
from lightreasoner.paired import HEADLINE_TITLE, headline_rows, paired_gains
from lightreasoner.report import text_summary
from lightreasoner.stats import paired_difference

GOLDS = ["72", "10", "7", "48", "1"]
# Per arm, each question's completion and how it ended. The toolkit's verdict credits the last
# number of a text (also one cut off); the strict one only a stated answer in a finished completion.
ANSWERS = {
    "eval_before": [("so \\boxed{72}", "eos"), ("12 / 60 * 50 = 10", "eos"), ("\\boxed{8}", "eos"),
                    ("April: 48 and", "length"), ("\\boxed{2}", "eos")],
    "eval_after": [("so \\boxed{72}", "eos"), ("\\boxed{10}", "eos"), ("The answer is 7.", "eos"),
                   ("\\boxed{48}", "eos"), ("10 - 9 = 1 and", "length")],
    "sft/eval_after": [("\\boxed{71}", "eos"), ("\\boxed{10}", "eos"), ("\\boxed{7}", "eos")],  # 3 of 5 so far
}
TOOLKIT = {"eval_before": [1, 1, 0, 1, 0], "eval_after": [1, 1, 1, 1, 1], "sft/eval_after": [0, 1, 1]}
STRICT = {"eval_before": [1, 0, 0, 0, 0], "eval_after": [1, 1, 1, 1, 0], "sft/eval_after": [0, 1, 1]}


@pytest.fixture()
def published_run(tmp_path) -> tuple[Path, Path]:
    """A run folder as `lightreasoner publish` leaves it (no prompts, questions or gold answers; the
    answers graded by an older grader: all wrong, no strict verdict), and its data folder."""
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    (data / "gsm8k" / "test.jsonl").write_text("".join(
        json.dumps({"question": f"Secret question number {i}?", "answer": f"Work.\n#### {gold}"}) + "\n"
        for i, gold in enumerate(GOLDS)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"settings": {"expert": "e", "amateur": "a", "data": "gsm8k",
                                                           "split": "train", "beta": 0.4}}))
    for folder, answers in ANSWERS.items():
        eval_dir = run / folder
        eval_dir.mkdir(parents=True)
        settings = {"benchmarks": ["gsm8k"], "split": "test", "data_dir": "elsewhere", "limit": None, "sample": None,
                    "seed": 0}
        (eval_dir / "run.json").write_text(json.dumps({"model": "e", "max_new_tokens": 8}))
        (eval_dir / "summary.json").write_text(json.dumps({"settings": settings, "benchmarks": {"gsm8k": {}}}))
        (eval_dir / "gsm8k.jsonl").write_text("".join(json.dumps(
            {"id": str(i), "benchmark": "gsm8k", "completion": c, "pred": "", "correct": False,
             "tokens": 8 if f == "length" else 4, "finish": f, "seconds": 1.0}) + "\n"
            for i, (c, f) in enumerate(answers)))
        if folder != "eval_before":
            (eval_dir.parent / "efficiency.json").write_text(json.dumps({
                "arm": "lightreasoner" if folder == "eval_after" else "sft", "total_seconds": 5400 if
                folder == "eval_after" else 30600, "problems_sampled": 5, "tokens_tuned": 10}))
    return run, data


def test_regrade_redraws_a_published_report_headline_first(published_run, capsys):
    run, data = published_run
    assert main(["regrade", str(run), "--data-dir", str(data), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for folder in ANSWERS:
        records = [json.loads(line) for line in (run / folder / "gsm8k.jsonl").read_text().splitlines()]
        assert [r["correct"] for r in records] == TOOLKIT[folder]
        assert [r["correct_strict"] for r in records] == STRICT[folder]
    for path in run.rglob("*"):  # the benchmark's text stays out of a published folder
        if path.is_file() and path.suffix in (".jsonl", ".json", ".md", ".html"):
            assert "Secret question" not in path.read_text() and '"gold"' not in path.read_text()

    header, rows = headline_rows(run)
    assert header == ["arm", "n", "gain [95% CI]", "p", "strict gain [95% CI]", "p", "hours"]
    sft, lightreasoner = rows  # in the paper's order
    # lightreasoner: toolkit 5/5 against 3/5 (2 gained, none lost: p = 2 / 2^2); strict 4/5 against
    # 1/5 (3 gained: p = 2 / 2^3); 1.5 hours. sft: 3 of 5 questions answered so far.
    assert lightreasoner[:2] == ["lightreasoner", "5"] and lightreasoner[2].startswith("+40.0 [")
    assert lightreasoner[3] == "0.50" and lightreasoner[4].startswith("+60.0 [")
    assert lightreasoner[5:] == ["0.25", "1.5"]
    assert sft[:2] == ["sft", "3/5"] and sft[2].startswith("+0.0 [") and sft[4].startswith("+33.3 [")
    assert sft[6] == "8.5"

    report = (run / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == f"## {HEADLINE_TITLE}" and sections[1].startswith("## Accuracy (%)")
    assert report.index("![gains.png](gains.png)") < report.index(sections[1])
    assert "| gsm8k (3/5) | baseline | 60.0 [23.1, 88.2] |  | 20.0 [3.6, 62.4] |  | 1 (20%) |" in report
    assert (run / "gains.png").read_bytes()[:4] == b"\x89PNG"
    assert "<h2>Each arm against" in (run / "report.html").read_text()

    summary = text_summary(run)
    assert summary.startswith(HEADLINE_TITLE) and summary in printed
    assert max(len(line) for line in summary.splitlines()) <= 100


def test_the_gains_by_the_strict_verdict_pair_its_own_grades(published_run):
    run, data = published_run
    assert paired_gains(run, "correct_strict") == {}  # graded before the strict verdict existed
    assert main(["regrade", str(run), "--data-dir", str(data), "--quiet"]) == 0
    strict = paired_gains(run, "correct_strict")
    assert strict["lightreasoner"] == [("gsm8k", paired_difference(STRICT["eval_before"], STRICT["eval_after"]))]
    assert strict["sft"] == [("gsm8k", paired_difference(STRICT["eval_before"][:3], STRICT["sft/eval_after"]))]
    assert gains_plot(paired_gains(run), strict)[:4] == b"\x89PNG"
