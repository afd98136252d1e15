"""`lightreasoner run` end to end: tiny random models (every artefact), and the real embedded pair (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.pipeline import RunConfig, run_pipeline
from lightreasoner.arms import Stages
from lightreasoner.publish import restore
from lightreasoner.inspection import kept_step_statistics
from lightreasoner.report import settings_rows
from lightreasoner.stats import paired_difference
from lightreasoner.sampling import read_samples

from tiny import save_pair


def tiny_config(pair: tuple[Path, Path], **overrides) -> RunConfig:
    settings = dict(expert=str(pair[0]), amateur=str(pair[1]), questions=6, max_new_tokens=10, max_steps=3,
                    eval_limit=5, eval_max_new_tokens=8, batch_size=4, dtype="float32", device="cpu")
    settings.update(overrides)
    return RunConfig(**settings)


def test_run_writes_every_artefact_and_resumes_by_stage(tmp_path, monkeypatch):
    pair = save_pair(tmp_path / "pair")
    config = tiny_config(pair, max_steps=11)  # a run checkpoints every 10 steps: one checkpoint to leave unpublished
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=lambda _: None)

    header, records = read_samples(out / "samples.jsonl")
    assert len(records) == 6 and header["settings"]["max_new_tokens"] == 10
    assert (out / "adapter" / "adapter_config.json").is_file()
    for name in ("eval_before", "eval_after"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["benchmarks"]["arith"]["n"] == 5
    assert json.loads((out / "eval_after" / "run.json").read_text())["adapter"] == str(out / "adapter")
    assert json.loads((out / "run.json").read_text())["kind"] == "run"
    for name in ("eval_before", "eval_after"):
        assert json.loads((out / name / "run.json").read_text())["kind"] == "eval"
    stages = json.loads((out / "stages.json").read_text())
    assert all(stages[s]["done"] for s in ("eval_before", "sample", "train", "eval_after"))
    efficiency = json.loads((out / "efficiency.json").read_text())
    assert efficiency["problems_sampled"] == 6
    assert efficiency["tokens_generated"] == sum(len(r["completion_ids"]) for r in records)
    assert efficiency["examples_kept"] == sum(len(r["steps"]) for r in records)
    assert efficiency["optimizer_steps"] == 11
    assert {p.name for p in (out / "adapter" / "checkpoints").iterdir()} == {"step-000010"}
    assert efficiency["total_seconds"] == pytest.approx(stages["sample"]["seconds"] + stages["train"]["seconds"],
                                                        abs=0.02)

    report = (out / "report.md").read_text()
    assert "| arith | toolkit | 5 |" in report and "| strict | 5 |" in report
    assert report.index("## Each arm against the baseline") < report.index("## Sampling and training")
    assert (out / "kl.png").read_bytes()[:4] == b"\x89PNG" and (out / "loss.png").is_file()
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page  # self-contained
    assert 'class="tok kept"' in page and "soft label:" in page  # token view with hover labels

    # Publishing keeps what the run shows, not what it was made from, and an evaluation resumes from it.
    published = tmp_path / "published"
    assert main(["publish", str(out), str(published)]) == 0
    names = {p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()}
    assert {"run.json", "stages.json", "report.html", "kl.png", "eval_before/summary.json",
            "eval_after/arith.jsonl", "adapter/train_summary.json", "samples.jsonl.meta.json"} <= names
    assert not any(name.endswith((".safetensors", "samples.jsonl")) or "/checkpoints/" in name for name in names)
    answers = [json.loads(line) for line in (published / "eval_before" / "arith.jsonl").read_text().splitlines()]
    originals = [json.loads(line) for line in (out / "eval_before" / "arith.jsonl").read_text().splitlines()]
    assert [(a["id"], a["correct"], a["completion"]) for a in answers] == \
        [(o["id"], o["correct"], o["completion"]) for o in originals]
    assert not any("prompt" in a or "gold" in a for a in answers)
    from lightreasoner.evaluation import evaluate
    from lightreasoner.pipeline import stage_configs

    resumed = evaluate(stage_configs(config)[2], published / "eval_before", progress=False)  # nothing left to do
    assert resumed["benchmarks"] == json.loads((out / "eval_before" / "summary.json").read_text())["benchmarks"]
    # Its report, redrawn, still counts and describes the kept steps (from samples.outputs.jsonl).
    assert main(["report", str(published)]) == 0
    redrawn = (published / "report.md").read_text()

    def efficiency_section(text: str) -> str:
        return text[text.index("## Sampling and training"):text.index("## Settings")]

    assert efficiency_section(redrawn) == efficiency_section(report)
    assert "## Kept steps" in redrawn and "![kl.png](kl.png)" in redrawn
    assert "## Most kept tokens" in redrawn  # the expert's tokenizer is at hand, so its tables are drawn

    # A rerun skips every finished stage (no model is even loaded) and redraws the report.
    import lightreasoner.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("load_pair", "sample", "train_from_file", "evaluate"):
        monkeypatch.setattr(pipeline, name, refuse)
    (out / "report.md").unlink()
    run_pipeline(config, out, progress=False, say=lambda _: None)
    assert (out / "report.md").read_text() == report


def test_a_published_run_restores_from_the_data_and_continues_elsewhere(tmp_path, monkeypatch):
    """publish keeps no question, prompt or gold answer; restore puts them back from the data (the
    sample file byte for byte); the rerun samples nothing, retrains, and resumes every answer."""
    pair = save_pair(tmp_path / "pair")
    config = tiny_config(pair)
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=lambda _: None)
    published = tmp_path / "published"
    assert main(["publish", str(out), str(published)]) == 0
    _, originals = read_samples(out / "samples.jsonl")
    outputs = [json.loads(line) for line in (published / "samples.outputs.jsonl").read_text().splitlines()]
    assert [r["completion_ids"] for r in outputs[1:]] == [r["completion_ids"] for r in originals]
    assert not any(key in r for r in outputs for key in ("question", "gold", "prompt", "prompt_ids"))

    restored = tmp_path / "restored"
    assert main(["restore", str(published), str(restored)]) == 0
    assert (restored / "samples.jsonl").read_bytes() == (out / "samples.jsonl").read_bytes()
    stages = json.loads((restored / "stages.json").read_text())
    assert stages["sample"]["done"] and stages["eval_before"]["done"]
    assert not stages["train"]["done"] and not stages["eval_after"]["done"]  # the adapter is rebuilt and checked
    assert main(["restore", str(published), str(restored)]) == 2  # never over an existing run

    import lightreasoner.evaluation as evaluation
    import lightreasoner.pipeline as pipeline

    monkeypatch.setattr(pipeline, "sample", lambda *a, **k: pytest.fail("sampling ran again"))
    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
    run_pipeline(config, restored, progress=False, say=lambda _: None)  # the rebuilt adapter is the very same here
    for name in ("eval_before", "eval_after"):
        assert json.loads((restored / name / "summary.json").read_text())["benchmarks"] == \
            json.loads((out / name / "summary.json").read_text())["benchmarks"]
    assert (restored / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (out / "adapter" / "adapter_model.safetensors").read_bytes()

    (published / "samples.outputs.jsonl").write_text(
        (published / "samples.outputs.jsonl").read_text().replace('"id": "', '"id": "x', 1))
    with pytest.raises(LightReasonerError, match="samples.outputs.jsonl:2: question 'x.*' is not in the data"):
        restore(published, tmp_path / "again")


def test_a_run_published_with_its_adapters_restores_without_training(tmp_path, monkeypatch):
    """publish --adapters keeps each arm's adapter (config and weights, no checkpoint); the restored
    folder keeps the training stages done and its rerun trains and generates nothing."""
    pair = save_pair(tmp_path / "pair")
    config = tiny_config(pair, arms=["baseline", "lightreasoner", "format-only"])
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=lambda _: None)
    published = tmp_path / "published"
    assert main(["publish", str(out), str(published), "--adapters"]) == 0
    names = {p.relative_to(published).as_posix() for p in published.rglob("adapter_*") if p.parent.name == "adapter"}
    assert names == {f"{arm}adapter/{name}" for arm in ("", "format-only/")
                     for name in ("adapter_config.json", "adapter_model.safetensors")}

    restored = tmp_path / "restored"
    assert main(["restore", str(published), str(restored)]) == 0
    stages = json.loads((restored / "stages.json").read_text())
    assert stages["train"]["done"] and stages["format-only"]["done"]
    assert not stages["eval_after"]["done"]  # reopened: the adapter is checked against its answers

    import lightreasoner.evaluation as evaluation
    import lightreasoner.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train_from_file", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(pipeline, "control", lambda *a, **k: pytest.fail("trained a control again"))
    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
    run_pipeline(config, restored, progress=False, say=lambda _: None)
    assert json.loads((restored / "stages.json").read_text())["format-only/eval_after"]["done"]

    weights = published / "format-only" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # not the adapter its answers came from
    with pytest.raises(LightReasonerError, match="adapter_sha256"):
        restore(published, tmp_path / "tampered")
        run_pipeline(config, tmp_path / "tampered", progress=False, say=lambda _: None)


def test_run_resumes_after_a_crash_in_training(tmp_path, monkeypatch):
    pair = save_pair(tmp_path / "pair")
    config = tiny_config(pair)
    import lightreasoner.pipeline as pipeline

    real_train = pipeline.train_from_file

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_from_file", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "run", progress=False, say=lambda _: None)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert stages["sample"]["done"] and not stages["train"]["done"]
    samples = (tmp_path / "run" / "samples.jsonl").read_bytes()

    monkeypatch.setattr(pipeline, "train_from_file", real_train)
    monkeypatch.setattr(pipeline, "sample", lambda *a, **k: pytest.fail("sampling ran again"))
    run_pipeline(config, tmp_path / "run", progress=False, say=lambda _: None)
    assert (tmp_path / "run" / "samples.jsonl").read_bytes() == samples
    assert json.loads((tmp_path / "run" / "stages.json").read_text())["train"]["done"]


def test_a_killed_stage_keeps_the_seconds_it_ran(tmp_path):
    # A session's end kills the process (no finally runs); the stage's time so far must stay on disk.
    script = ("import sys, time; from pathlib import Path; from lightreasoner.arms import Stages; "
              "Stages(Path(sys.argv[1]), heartbeat=0.05).timed('sample', lambda: time.sleep(60), say=print)")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    path = tmp_path / "stages.json"
    try:
        deadline = time.monotonic() + 300  # a guard against hanging only: importing torch on a loaded machine is slow
        while not (path.exists() and json.loads(path.read_text())["sample"]["seconds"] >= 0.5):
            assert time.monotonic() < deadline and process.poll() is None, "no heartbeat reached stages.json"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    killed = json.loads(path.read_text())["sample"]
    assert not killed["done"] and killed["seconds"] >= 0.5

    stages = Stages(tmp_path)  # the resumed attempt adds its own time to the killed one's
    stages.timed("sample", lambda: time.sleep(0.2), say=lambda _: None)
    stages.finish("sample")
    resumed = json.loads(path.read_text())["sample"]
    assert resumed["done"] and resumed["seconds"] >= killed["seconds"] + 0.2


def test_run_cli_yaml_sections_and_refusal(tmp_path, capsys):
    pair = save_pair(tmp_path / "pair")
    (tmp_path / "run.yaml").write_text(
        f"expert: {pair[0]}\namateur: {pair[1]}\nquestions: 4\nmax_new_tokens: 6\nmax_steps: 2\neval_limit: 3\n"
        "eval_max_new_tokens: 4\nbatch_size: 4\ndtype: float32\nsample:\n  contrast_every: 2\n"
        "train:\n  lora_r: 4\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("Each arm against the baseline") < printed.index("Paired: lightreasoner against baseline")
    assert "arith" in printed and max(len(line) for line in printed.splitlines() if "/" not in line) <= 100
    assert f"Report: {out / 'report.html'}" in printed
    header, _ = read_samples(out / "samples.jsonl")
    assert header["settings"]["contrast_every"] == 2
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    report = (out / "report.md").read_text()  # the settings the sections changed, beside the headline
    assert "| sample.contrast_every | `2` |" in report and "| train.lora_r | `4` |" in report
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(out), "--beta", "0.9", "--quiet"]) == 2
    assert "sample.beta=0.4, now 0.9" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


def test_the_settings_table_says_when_epochs_replace_the_headline_max_steps():
    run_record = {"settings": {"max_steps": 8, "beta": 0.4}, "train": {"max_steps": 8, "epochs": 0.8},
                  "overrides": {"train": {"epochs": 0.8}}}
    assert settings_rows(run_record) == [["max_steps", "`8` (not used: train.epochs is set)"], ["beta", "`0.4`"],
                                         ["train.epochs", "`0.8`"]]
    run_record["train"]["epochs"] = None
    del run_record["overrides"]  # run folders written before overrides were recorded
    assert settings_rows(run_record) == [["max_steps", "`8`"], ["beta", "`0.4`"]]


def test_a_setting_may_change_until_its_stage_starts(tmp_path, monkeypatch):
    import lightreasoner.pipeline as pipeline

    pair = save_pair(tmp_path / "pair")
    out = tmp_path / "run"
    with monkeypatch.context() as patched:  # the baseline alone needs no amateur
        patched.setattr(pipeline, "load_pair", lambda *a, **k: pytest.fail("the pair was loaded"))
        run_pipeline(tiny_config(pair, arms=["baseline"], data_dir=str(tmp_path)), out, progress=False,
                     say=lambda _: None)
    baseline = json.loads((out / "eval_before" / "summary.json").read_text())["benchmarks"]["arith"]
    report = (out / "report.md").read_text()  # the baseline's accuracy, and no cost table of stages not run
    assert f"| arith (5) | baseline | {100 * baseline['accuracy']:.1f} [" in report and "## Efficiency" not in report
    assert "## Sampling and training" not in report and "## Each arm" not in report
    # Training has not started in this folder, so its settings are still free; evaluation has. Where
    # the data is read from is not a setting of any stage (the stages' files check their questions).
    run_pipeline(tiny_config(pair, arms=["lightreasoner"], data_dir=str(tmp_path / "moved")), out,
        overrides={"train": {"lora_r": 4}}, progress=False, say=lambda _: None)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((out / "run.json").read_text())["settings"]["arms"] == ["baseline", "lightreasoner"]
    with pytest.raises(Exception, match="train.lora_r=4, now 8"):
        run_pipeline(tiny_config(pair, arms=["baseline", "lightreasoner"]), out, progress=False, say=lambda _: None)
    with pytest.raises(Exception, match="eval.max_new_tokens=8; a budget can grow, not shrink"):
        run_pipeline(tiny_config(pair, arms=["baseline"], eval_max_new_tokens=7), out,
                     overrides={"train": {"lora_r": 4}}, progress=False, say=lambda _: None)
    # Evaluation's batch size is how the answers are computed, not what they are (docs/ERRORS.md#resume).
    run_pipeline(tiny_config(pair, arms=["baseline"]), out, overrides={"train": {"lora_r": 4}, "eval": {"batch_size": 2}},
                 progress=False, say=lambda _: None)
    assert json.loads((out / "run.json").read_text())["eval"]["batch_size"] == 2
    with pytest.raises(Exception, match="eval.prompt='qwen25-math-cot', now 'plain'"):
        run_pipeline(tiny_config(pair, arms=["baseline"]), out,
                     overrides={"train": {"lora_r": 4}, "eval": {"prompt": "plain"}}, progress=False, say=lambda _: None)


def test_the_accuracy_tables_pair_each_arm_with_the_baseline_also_while_it_runs(tmp_path):
    from lightreasoner.paired import accuracy_tables

    before = [True, False, True, True, False, True]
    after = [True, True, False, True]  # answered 4 of 6 so far, in another order
    order = [3, 0, 2, 1]

    def write(folder: Path, answers: list[tuple[int, bool]], name: str = "arith") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"id": str(i), "correct": c}) + "\n"
                                                     for i, c in answers))

    assert accuracy_tables(tmp_path) == []
    write(tmp_path / "eval_before", list(enumerate(before)))
    write(tmp_path / "eval_before", [(0, True), (1, False), (2, False)], "words")
    (tmp_path / "eval_before" / "summary.json").write_text(json.dumps({"benchmarks": {
        "arith": {"n": 6, "correct": 4, "accuracy": 4 / 6, "ci95": [0.3, 0.9]},
        "words": {"n": 3, "correct": 1, "accuracy": 1 / 3, "ci95": [0.06, 0.79]}}}))
    assert accuracy_tables(tmp_path) == []  # no answer after training yet: nothing to pair

    # Answers graded before the strict verdict existed: the toolkit's rows only.
    write(tmp_path / "eval_after", [(i, a) for i, a in zip(order, after)])
    [(title, header, rows)] = accuracy_tables(tmp_path)
    assert "lightreasoner" in title and "in progress" in title and header[3:5] == ["baseline", "lightreasoner"]
    arith, words = rows  # no pooled row while only one benchmark has answers
    paired_before = [before[i] for i in order]  # 3 of 4 correct; after: 3 of 4; gained 1 (q1), lost 1 (q2)
    assert arith[:3] == ["arith", "toolkit", "4/6"]
    assert arith[3].startswith(f"{100 * sum(paired_before) / 4:.1f} [") and arith[4].startswith("75.0 [")
    assert arith[5].startswith("+0.0 [") and arith[6:] == ["+1/-1", "1.00"]
    assert words[:3] == ["words", "toolkit", "0/3"] and words[4] == "not evaluated yet"

    # A second arm, done: its own table (before lightreasoner's, in the paper's order), with the
    # questions of both benchmarks pooled.
    write(tmp_path / "sft" / "eval_after", [(i, True) for i in range(6)])
    write(tmp_path / "sft" / "eval_after", [(0, True), (1, True), (2, True)], "words")
    [(title, header, rows), (second, _, _)] = accuracy_tables(tmp_path)
    assert "lightreasoner" in second and "sft" in title and "in progress" not in title
    assert header == ["benchmark", "verdict", "n", "baseline", "sft", "diff [95% CI]", "+/-", "p"]
    assert [[row[0], row[2]] for row in rows] == [["arith", "6"], ["words", "3"], ["all questions", "9"]]
    assert rows[2][4].startswith("100.0 [") and rows[2][5].startswith("+44.4 [") and rows[2][6] == "+4/-0"
    assert rows[2][7] == f"{2 / 2 ** 4:.2f}"

    # The control against lightreasoner: paired on the questions both have answered.
    write(tmp_path / "format-only" / "eval_after", [(0, False), (3, True)])
    (tmp_path / "eval_after" / "summary.json").write_text(json.dumps({"benchmarks": {
        "arith": {"n": 4, "correct": 3, "accuracy": 0.75, "ci95": [0.3, 0.95]}}}))
    title, header, [row] = accuracy_tables(tmp_path)[-1]
    assert title.startswith("Paired: format-only against lightreasoner") and "in progress" in title
    assert header[3:5] == ["lightreasoner", "format-only"]
    assert row[:3] == ["arith", "toolkit", "2/4"] and row[5].startswith("-50.0 [") and row[6] == "+0/-1"

    # lightreasoner against sft, the paper's comparison, once sft's evaluation has its summary.
    (tmp_path / "sft" / "eval_after" / "summary.json").write_text(json.dumps({"benchmarks": {
        "arith": {"n": 6, "correct": 6, "accuracy": 1.0, "ci95": [0.6, 1.0]},
        "words": {"n": 3, "correct": 3, "accuracy": 1.0, "ci95": [0.4, 1.0]}}}))
    titles = [title for title, _, _ in accuracy_tables(tmp_path)]
    assert [t.split(" (")[0] for t in titles] == [
        "Paired: sft against baseline", "Paired: lightreasoner against baseline",
        "Paired: format-only against baseline", "Paired: lightreasoner against sft",
        "Paired: format-only against lightreasoner"]
    _, header, (arith, words) = accuracy_tables(tmp_path)[3]
    assert header[3:5] == ["sft", "lightreasoner"] and arith[:3] == ["arith", "toolkit", "4/6"]
    assert arith[3].startswith("100.0 [") and arith[4].startswith("75.0 [") and arith[5].startswith("-25.0 [")
    assert arith[6] == "+0/-1" and words[4] == "not evaluated yet"


def test_the_gains_figure_pairs_each_arm_with_the_baseline_question_by_question(tmp_path):
    from lightreasoner.figures import gains_plot
    from lightreasoner.paired import paired_gains

    answers = {"eval_before": {"arith": [True, False, True, False], "words": [False, False]},
               "sft/eval_after": {"arith": [True, True, False, True], "words": [True, False]},
               "eval_after": {"arith": [False, False, True, True]}}  # words not answered yet
    for folder, benchmarks in answers.items():
        (tmp_path / folder).mkdir(parents=True)
        for name, correct in benchmarks.items():  # the arms' answers in reverse order: pairing is by id
            answered = list(enumerate(correct)) if folder == "eval_before" else list(enumerate(correct))[::-1]
            (tmp_path / folder / f"{name}.jsonl").write_text("".join(
                json.dumps({"id": f"q{i}", "correct": c}) + "\n" for i, c in answered))
    (tmp_path / "eval_before" / "summary.json").write_text(json.dumps({"benchmarks": {
        name: {"n": len(c), "accuracy": sum(c) / len(c), "ci95": [0.0, 1.0]}
        for name, c in answers["eval_before"].items()}}))

    gains = paired_gains(tmp_path)
    assert list(gains) == ["sft", "lightreasoner"]  # format-only has no folder: no entry
    before, sft = answers["eval_before"], answers["sft/eval_after"]
    assert gains["sft"] == [("arith", paired_difference(before["arith"], sft["arith"])),
                            ("words", paired_difference(before["words"], sft["words"])),
                            ("all questions", paired_difference(before["arith"] + before["words"],
                                                                sft["arith"] + sft["words"]))]
    assert gains["lightreasoner"] == [("arith", paired_difference(before["arith"], answers["eval_after"]["arith"]))]
    assert gains["sft"][2][1]["gained"] == 3 and gains["sft"][2][1]["lost"] == 1
    assert gains_plot(gains)[:4] == b"\x89PNG" and gains_plot({}) is None
    outside = {"diff": 0.1, "low": 0.2, "high": 0.3, "gained": 1, "lost": 0}  # may miss the estimate
    assert gains_plot({"sft": [("arith", outside)]})[:4] == b"\x89PNG"


def test_kept_step_statistics_against_a_direct_count():
    import random

    rng = random.Random(3)
    records, beta = [], 0.4
    for _ in range(7):
        length = rng.randint(0, 12)
        completion = [rng.randrange(50) for _ in range(length)]
        kl = [rng.choice([0.0, 0.01, 0.3, 0.5, 1.7, 2.4]) for _ in range(length)]
        steps = []
        for step in range(length):
            if kl[step] >= beta:
                others = sorted(rng.sample([i for i in range(50) if i != completion[step]], rng.randint(0, 3)))
                ids = sorted(others + [completion[step]])
                raw = [rng.random() + 0.01 for _ in ids]
                steps.append({"step": step, "kl": kl[step], "ids": ids, "weights": [w / sum(raw) for w in raw]})
        records.append({"completion_ids": completion, "kl": kl, "steps": steps})

    stats = kept_step_statistics(records, beta)
    all_kl = sorted(v for r in records for v in r["kl"])
    kept = [(r, s) for r in records for s in r["steps"]]
    assert stats["steps"] == len(all_kl) and stats["kept_steps"] == len(kept) > 0
    assert stats["kept_share"] == pytest.approx(sum(v >= beta for v in all_kl) / len(all_kl))
    assert stats["kept_share"] == pytest.approx(len(kept) / len(all_kl))
    assert stats["kl_mean"] == pytest.approx(sum(all_kl) / len(all_kl))
    assert stats["questions_without_kept_step"] == sum(1 for r in records if not r["steps"])
    own, moved = [], 0
    for record, step in kept:
        token = record["completion_ids"][step["step"]]
        by_token = dict(zip(step["ids"], step["weights"]))
        own.append(by_token[token])
        moved += max(by_token, key=by_token.get) != token
    assert stats["own_token_weight"] == pytest.approx(sum(own) / len(own))
    assert stats["label_disagrees"] == pytest.approx(moved / len(kept))
    assert stats["plausible_set_size"] == pytest.approx(sum(len(s["ids"]) for _, s in kept) / len(kept))
    assert kept_step_statistics([], beta)["kept_steps"] == 0


@pytest.mark.slow
def test_micro_pipeline_on_the_real_embedded_pair(tmp_path):
    """The real offline pair (fetched on first use): a few questions, tokens, updates and eval questions.

    beta is lowered so that 48 steps surely keep some (at the paper's 0.4, about 9% of steps pass,
    and in float32 the first 24 tokens of these two questions happen to keep none)."""
    beta = 0.05
    config = RunConfig(questions=2, max_new_tokens=24, beta=beta, max_steps=1, eval_limit=2, eval_max_new_tokens=40,
                       batch_size=2)
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=lambda _: None)
    header, records = read_samples(out / "samples.jsonl")
    assert header["tokenizer"]["vocab_size"] == 151665  # Qwen2.5's real vocabulary, padding rows excluded
    assert sum(len(r["steps"]) for r in records) > 0
    for record in records:
        for step in record["steps"]:
            assert step["kl"] >= beta and abs(sum(step["weights"]) - 1) < 1e-4
            assert all(i < 151665 for i in step["ids"])
    before = json.loads((out / "eval_before" / "summary.json").read_text())["benchmarks"]["arith"]
    assert before["n"] == 2 and before["tokens"] > 0
    assert (out / "report.html").is_file() and json.loads((out / "efficiency.json").read_text())["optimizer_steps"] == 1


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    import argparse

    from lightreasoner.commands._settings import config_from_args
    from lightreasoner.config import load_yaml
    from lightreasoner.pipeline import stage_configs

    config = config_from_args(RunConfig, argparse.Namespace(config=path))
    sections = {k: v for k, v in load_yaml(path).items() if isinstance(v, dict)}
    sample_config, train_config, eval_config = stage_configs(config, sections)
    assert sample_config.expert == config.expert and train_config.max_steps == config.max_steps
    assert eval_config.benchmarks == config.benchmarks


def test_a_stage_command_given_a_run_file_takes_what_run_gives_that_stage(tmp_path):
    import argparse
    import dataclasses

    from lightreasoner.commands._settings import config_from_args, values_from_args
    from lightreasoner.evaluation import EvalConfig
    from lightreasoner.sampling import SampleConfig
    from lightreasoner.sft import SFTConfig
    from lightreasoner.training import TrainConfig

    path = tmp_path / "run.yaml"
    path.write_text("expert: some/expert\namateur: some/amateur\nquestions: 7\nmax_new_tokens: 33\n"
                    "eval_max_new_tokens: 99\nsft_samples_per_question: 3\nmax_steps: 5\n"
                    "sft: {temperature: 0.5, max_steps: 2}\neval: {batch_size: 4}\n")
    args = argparse.Namespace(config=path)
    sample = config_from_args(SampleConfig, args, section="sample")
    assert (sample.expert, sample.amateur, sample.limit, sample.max_new_tokens) == \
        ("some/expert", "some/amateur", 7, 33)
    assert config_from_args(TrainConfig, args, section="train").max_steps == 5
    evaluate = config_from_args(EvalConfig, args, section="eval")
    assert (evaluate.model, evaluate.max_new_tokens, evaluate.batch_size) == ("some/expert", 99, 4)
    sft = config_from_args(SFTConfig, args, section="sft")
    assert (sft.model, sft.limit, sft.max_new_tokens, sft.samples_per_question, sft.temperature) == \
        ("some/expert", 7, 99, 3, 0.5)
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    sft_names = {f.name for f in dataclasses.fields(SFTConfig)}
    sft_train, _ = values_from_args(args, train_names, section="sft", also=sft_names)
    assert sft_train["max_steps"] == 2  # what `lightreasoner sft` trains with
    # The command line still wins over the file.
    assert config_from_args(SampleConfig, argparse.Namespace(config=path, limit=2), section="sample").limit == 2
    # A file of the stage's own settings is read as before: its section, or its top level.
    own = tmp_path / "sample.yaml"
    own.write_text("expert: some/expert\nlimit: 4\n")
    assert config_from_args(SampleConfig, argparse.Namespace(config=own), section="sample").limit == 4


def test_the_default_run_folder_keeps_each_models_whole_name():
    from lightreasoner.commands.run import default_run_dir

    assert default_run_dir(RunConfig()) == Path("runs/coder-1.5b-coder-0.5b-arith")
    config = RunConfig(expert="Qwen/Qwen2.5-Math-1.5B", amateur="/m/qwen2.5-0.5b.gguf", data="/d/questions.jsonl")
    assert default_run_dir(config) == Path("runs/Qwen2.5-Math-1.5B-qwen2.5-0.5b-questions")
