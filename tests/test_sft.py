"""SFT baseline, format-only control and the arms comparison, on tiny random models.

Where a test needs sampled answers to be right, ``sft.generate_samples`` is replaced by a function
returning chosen completions; grading, the sample file, the accounting and training are the real ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lightreasoner.controls as controls
import lightreasoner.pipeline as pipeline
import lightreasoner.sft as sft_module
from lightreasoner import models
from lightreasoner.arms import ARM_EVAL_DIRS, find_arms
from lightreasoner.batching import Piece, collate, packed_kl
from lightreasoner.backends import HFBackend
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.pipeline import RunConfig, run_pipeline, stage_configs
from lightreasoner.sampling import SampleConfig, sample
from lightreasoner.sft import (Completion, SFTConfig, generate_samples, read_sft_samples, sample_solutions, sft,
                               sft_examples, sft_train_config)
from lightreasoner.tables import ACCURACY_TITLE, EFFICIENCY_TITLE, arms_report, format_seconds

from tiny import save_pair

# (question, gold, the completions the "model" returns, and which of them SFT must keep)
# Completions: (text, finished). A kept one is graded correct, finished and not a repeat.
SCRIPT = [
    ("Natalia sold 48 clips in April and 24 in May. How many clips?", "72",
     [("48 + 24 = 72. The answer is 72.", True, True),
      ("The answer is 70.", True, False),              # wrong
      ("48 + 24 = 72. The answer is 72.", True, False),  # a repeat of a kept one
      ("So the total is \\boxed{72}", True, True)]),
    ("Weng earns $12 an hour. How much for 50 minutes?", "10",
     [("The answer is 12.", True, False),
      ("The answer is 10", False, False),               # right, but cut off at the token limit
      ("12 / 60 * 50 = 10", True, True),
      ("10 / 2 = 5", True, False)]),                    # the last number decides: wrong
    ("What is 3 + 4?", "7",
     [("3 + 4 = 8", True, False), ("answer 9", True, False), ("no idea", True, False), ("7 - 1", True, False)]),
]
K = 4


def write_questions(path: Path, items=SCRIPT) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": gold}) + "\n"
                            for i, (q, gold, *_) in enumerate(items)))
    return path


def scripted_generation(tokenizer, items=SCRIPT):
    """A stand-in for ``generate_samples`` returning each question's scripted completions."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    by_question = {q: [(t, f) for t, f, *_ in completions] for q, _, completions in items}
    calls = []

    def generate(backend, prompts, *, num_samples, temperature, top_p, max_new_tokens, seeds):
        tok = backend.tokenizer
        calls.append((len(prompts), num_samples, seeds, backend.slots))
        for index, prompt in enumerate(prompts):
            text = tok.decode(prompt)
            question = next(q for q in by_question if q in text)
            out = []
            for completion, finished in by_question[question][:num_samples]:
                ids = tok(completion, add_special_tokens=False)["input_ids"]
                out.append(Completion(ids + [end] if finished else ids, completion, "eos" if finished else "length"))
            yield index, out

    return generate, calls


def small_config(pair, data: Path, **train) -> SFTConfig:
    values = dict(dtype="float32", steps_per_update=16, save_steps=0, learning_rate=1e-2, lora_dropout=0.0)
    values.update(train)
    return SFTConfig(model=str(pair[0]), data=str(data), samples_per_question=K, max_new_tokens=16, batch_size=8,
                     device="cpu", train=sft_train_config(values))


def test_rejection_sampling_keeps_exactly_the_graded_correct(pair, tokenizer, tmp_path, monkeypatch):
    generate, calls = scripted_generation(tokenizer)
    monkeypatch.setattr(sft_module, "generate_samples", generate)
    data = write_questions(tmp_path / "q.jsonl")
    config = small_config(pair, data)
    out = tmp_path / "sft"
    record = sft(config, out, progress=False, say=lambda _: None)

    header, lines = read_sft_samples(out / "samples.jsonl")
    assert header["settings"]["samples_per_question"] == K and len(lines) == len(SCRIPT)
    assert [where for where, _ in lines] == [f"{out / 'samples.jsonl'}:{n}" for n in (2, 3, 4)]  # lines after the header
    for (_, line), (question, gold, completions) in zip(lines, SCRIPT):
        assert line["question"] == question and line["gold"] == gold
        assert [s["kept"] for s in line["samples"]] == [kept for _, _, kept in completions]
        assert [s["completion"] for s in line["samples"]] == [text for text, _, _ in completions]
    assert [s["correct"] for s in lines[1][1]["samples"]] == [False, True, True, False]  # the cut-off one is right
    assert [(n, k, slots) for n, k, _, slots in calls] == [(3, K, 8)]  # one stream of every question
    assert len(set(calls[0][2])) == 3  # a seed per question

    # The accounting, counted here independently of the code under test.
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def token_count(text: str, finished: bool) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + finished

    generated = sum(token_count(t, f) for _, _, c in SCRIPT for t, f, _ in c)
    kept = [(q, t) for q, _, c in SCRIPT for t, f, k in c if k]
    tuned = sum(token_count(t, True) for _, t in kept)
    assert record == json.loads((out / "efficiency.json").read_text())
    assert record["arm"] == "sft" and record["problems_sampled"] == 3 and record["tokens_generated"] == generated
    assert record["examples_kept"] == len(kept) == 3
    summary = json.loads((out / "adapter" / "train_summary.json").read_text())
    assert record["tokens_tuned"] == summary["tokens_tuned"] == tuned  # one epoch: every kept token, once
    assert record["optimizer_steps"] == summary["optimizer_steps"] == math.ceil(tuned / 16)
    stages = json.loads((out / "stages.json").read_text())
    assert record["total_seconds"] == pytest.approx(stages["sample"]["seconds"] + stages["train"]["seconds"], abs=0.02)
    assert (out / "adapter" / "adapter_config.json").is_file()

    # Only completion tokens carry loss: each example is the prompt (masked) + the kept completion.
    examples = sft_examples(out / "samples.jsonl", tokenizer).examples
    assert len(examples) == 3
    for example, (question, text) in zip(examples, kept):
        prompt = models.encode_prompt(tokenizer, models.chat_prompt(tokenizer, question, "Please reason step by step."))
        completion = tokenizer(text, add_special_tokens=False)["input_ids"] + [end]
        assert example.input_ids == prompt + completion[:-1]
        assert example.positions == list(range(len(prompt) - 1, len(prompt) + len(completion) - 1))
        assert example.label_ids == [[t] for t in completion] and example.label_weights == [[1.0]] * len(completion)

    # The trained loss is the completion-only cross-entropy of a plain full forward (slow reference).
    model = models.load_model(pair[0]).float()
    vocab = models.real_vocab_size(tokenizer)
    pieces = [Piece(i, 0, e.num_labels) for i, e in enumerate(examples)]
    packed = packed_kl(model, collate(pieces, examples, tokenizer.pad_token_id), vocab)
    reference = []
    for example in examples:
        full = example.input_ids + [example.label_ids[-1][0]]
        start = example.positions[0] + 1
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0, :, :vocab].double(), -1)
        reference += [-logp[p, full[p + 1]] for p in range(start - 1, len(full) - 1)]
    torch.testing.assert_close(packed.double(), torch.stack(reference), atol=1e-5, rtol=1e-5)

    # A rerun with the same settings does nothing again; other settings are refused.
    monkeypatch.setattr(sft_module, "generate_samples", lambda *a, **k: pytest.fail("sampled again"))
    assert sft(config, out, progress=False, say=lambda _: None) == record
    with pytest.raises(LightReasonerError, match="temperature=0.7, now 0.9"):
        sft(SFTConfig(**{**config.__dict__, "temperature": 0.9}), out, progress=False, say=lambda _: None)


def test_no_correct_solution_is_a_clear_error(pair, tokenizer, tmp_path, monkeypatch):
    items = [SCRIPT[2]]
    generate, _ = scripted_generation(tokenizer, items)
    monkeypatch.setattr(sft_module, "generate_samples", generate)
    with pytest.raises(LightReasonerError, match="no sampled solution was graded correct"):
        sft(small_config(pair, write_questions(tmp_path / "q.jsonl", items)), tmp_path / "out", progress=False,
            say=lambda _: None)


def test_sft_refuses_questions_without_gold(pair, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n\n"
                    + json.dumps({"question": "2 + 2?"}) + "\n")
    with pytest.raises(LightReasonerError, match=rf"{data}:3: no gold answer \(1 of 2 questions"):
        sample_solutions(small_config(pair, data), tmp_path / "s.jsonl", progress=False)
    assert main(["sft", "--model", str(pair[0]), "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:3: no gold answer" in err and "LightReasoner sampling needs no answers" in err
    assert len(err.strip().splitlines()) == 1


def test_real_sampling_is_seeded_batched_and_resumes_identically(pair, tokenizer, tmp_path, monkeypatch):
    model = models.load_model(pair[0])
    prompts = [models.encode_prompt(tokenizer, models.chat_prompt(tokenizer, q, None)) for q, *_ in SCRIPT]
    kwargs = dict(num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seeds=[5, 6, 7])

    def sampled(slots: int) -> list[list[Completion]]:
        streamed = list(generate_samples(HFBackend(model, tokenizer, slots=slots), prompts, **kwargs))
        assert [i for i, _ in streamed] == [0, 1, 2]  # in prompt order
        return [completions for _, completions in streamed]

    first = sampled(4)
    # Every sample has its own seeded generator: the same draws whatever shares its batch.
    assert sampled(4) == first == sampled(1) == sampled(9)
    # The checkpoint's own generation config (Qwen2.5-Instruct ships top-k and a repetition penalty)
    # must not leak into plain temperature sampling.
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.top_k = 2
    assert sampled(4) == first
    assert [len(c) for c in first] == [3, 3, 3]
    stops, vocab = models.stop_token_ids(tokenizer, model), models.real_vocab_size(tokenizer)
    flat = [c for row in first for c in row]
    assert len({tuple(c.ids) for c in flat}) > 1  # sampling, not greedy
    for c in flat:
        assert all(t < vocab for t in c.ids) and len(c.ids) <= 8
        assert (c.finish == "eos") == (c.ids[-1] in stops) and not any(t in stops for t in c.ids[:-1])
        assert c.text == tokenizer.decode([t for t in c.ids if t not in stops], skip_special_tokens=True)

    data = write_questions(tmp_path / "q.jsonl")
    config = SFTConfig(model=str(pair[0]), data=str(data), samples_per_question=2, max_new_tokens=6, batch_size=2,
                       device="cpu", train=sft_train_config({"dtype": "float32"}))
    sample_solutions(config, tmp_path / "whole.jsonl", progress=False)
    real_grade = sft_module.grade_samples
    graded = []

    def crash_on_second_batch(*args, **kwargs):
        graded.append(1)
        if len(graded) == 2:
            raise KeyboardInterrupt
        return real_grade(*args, **kwargs)

    monkeypatch.setattr(sft_module, "grade_samples", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        sample_solutions(config, tmp_path / "resumed.jsonl", progress=False)
    assert len(read_sft_samples(tmp_path / "resumed.jsonl")[1]) == 1
    monkeypatch.setattr(sft_module, "grade_samples", real_grade)
    counts = sample_solutions(config, tmp_path / "resumed.jsonl", progress=False)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert counts["problems_sampled"] == 3 and counts["solutions_sampled"] == 6
    changed = [(question + " Twice?" if i == 1 else question, *rest) for i, (question, *rest) in enumerate(SCRIPT)]
    write_questions(data, changed)  # the same ids asking other questions
    with pytest.raises(LightReasonerError, match="resumed.jsonl: the question of question q1 differs from the data"):
        sample_solutions(config, tmp_path / "resumed.jsonl", progress=False)


# ------------------------------------------------------------------------------------ tables


def write_eval(folder: Path, accuracies: dict[str, float]) -> None:
    """An evaluation's summary: each benchmark's accuracy by the toolkit, and 0.1 less by the strict verdict."""
    folder.mkdir(parents=True)
    benchmarks = {k: {"n": 10, "correct": round(10 * v), "accuracy": v, "ci95": [0, 1],
                      "correct_strict": round(10 * v) - 1, "accuracy_strict": round(v - 0.1, 2), "ci95_strict": [0, 1],
                      "cut_off": 1, "tokens": 1, "seconds": 1} for k, v in accuracies.items()}
    (folder / "summary.json").write_text(json.dumps({"benchmarks": benchmarks, "average": 0, "tokens": 0,
                                                     "seconds": 0}))
    (folder / "run.json").write_text(json.dumps({"model": "m"}))  # evaluate writes one too


def efficiency(arm: str, seconds: float, problems: int, tuned: int) -> str:
    return json.dumps({"arm": arm, "seconds": {"sample": seconds / 2, "train": seconds / 2}, "total_seconds": seconds,
                       "problems_sampled": problems, "tokens_generated": 10 * problems, "examples_kept": problems,
                       "tokens_tuned": tuned, "optimizer_steps": 7})


def saved_run(root: Path) -> Path:
    (root / "run").mkdir(parents=True)
    (root / "run" / "run.json").write_text(json.dumps({"settings": {}, "sample": {}, "train": {}, "eval": {}}))
    write_eval(root / "run" / "eval_before", {"gsm8k": 0.4, "math": 0.3})
    write_eval(root / "run" / "eval_after", {"gsm8k": 0.7, "math": 0.6})
    (root / "run" / "efficiency.json").write_text(efficiency("lightreasoner", 1800, 1000, 20000))
    write_eval(root / "run" / "sft" / "eval_after", {"gsm8k": 0.6, "math": 0.4})
    (root / "run" / "sft" / "efficiency.json").write_text(efficiency("sft", 14400, 4000, 1_770_000))
    write_eval(root / "run" / "format-only" / "eval_after", {"gsm8k": 0.5, "math": 0.3})
    (root / "run" / "format-only" / "efficiency.json").write_text(efficiency("format-only", 1700, 1000, 20000))
    return root / "run"


def test_compare_renders_both_tables_from_saved_runs(tmp_path, capsys):
    folder = saved_run(tmp_path)
    assert [a.label for a in find_arms([folder])] == ["baseline", "sft", "lightreasoner", "format-only"]
    text = arms_report(find_arms([folder]))
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[1].split() == ["benchmark", "arm", "accuracy", "[95%", "CI]", "gain", "strict", "[95%", "CI]", "gain",
                                "cut", "off"]
    assert [line.split()[:2] for line in lines[3:7]] == [["gsm8k", "(10)"], ["sft", "60.0"], ["lightreasoner", "70.0"],
                                                         ["format-only", "50.0"]]
    assert lines[3].split()[3:] == ["40.0", "[0.0,", "100.0]", "30.0", "[0.0,", "100.0]", "1", "(10%)"]
    assert lines[5].split()[1:] == ["70.0", "[0.0,", "100.0]", "+30.0", "60.0", "[0.0,", "100.0]", "+30.0", "1",
                                    "(10%)"]
    assert lines[11].split() == ["average", "(2)", "baseline", "35.0", "25.0"]
    assert lines[12].split() == ["sft", "50.0", "+15.0", "40.0", "+15.0"]
    start = lines.index(EFFICIENCY_TITLE)
    table = {line.split()[0]: line.split() for line in lines[start + 1:-2]}
    assert table["arm"] == ["arm", "time", "problems", "generated", "kept", "tuned", "updates", "gain", "strict"]
    assert table["sft"][1:] == ["4.00", "h", "4,000", "40,000", "4,000", "solutions", "1,770,000", "7", "+15.0", "+15.0"]
    assert table["lightreasoner"][1:] == ["30.0", "min", "1,000", "10,000", "1,000", "steps", "20,000", "7", "+30.0", "+30.0"]
    assert table["format-only"][-2:] == ["+5.0", "+5.0"]
    assert " ".join(lines[-2:]) == ("lightreasoner vs sft: 88% less time, 75% fewer sampled problems, 99% fewer "
                                    "tuned tokens (paper: about 90%, 80%, 99%)")

    # The command, with a bar chart; an arm folder given on its own joins in; two runs get prefixes.
    plot = tmp_path / "arms.png"
    assert main(["compare", str(folder), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert ACCURACY_TITLE in printed and "fewer tuned tokens" in printed
    assert plot.read_bytes()[:4] == b"\x89PNG"
    other = saved_run(tmp_path / "again")
    labels = [a.label for a in find_arms([folder, other])]
    assert labels[:2] == [f"{tmp_path.name}/run/baseline", f"{tmp_path.name}/run/sft"] and len(set(labels)) == 8
    assert [a.label for a in find_arms([folder / "sft", folder / "eval_before"])] == ["sft", "eval_before"]
    assert main(["compare", str(tmp_path)]) == 2
    assert "neither a `lightreasoner run` folder" in capsys.readouterr().err
    assert format_seconds(59) == "59.0 s" and format_seconds(600) == "10.0 min"


def test_plain_evaluation_folders_still_compare_plainly(tmp_path, capsys):
    write_eval(tmp_path / "a", {"gsm8k": 0.4})
    write_eval(tmp_path / "b", {"gsm8k": 0.5})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["benchmark", "folder"] and lines[3].split()[:5] == ["b", "50.0", "[0.0,", "100.0]",
                                                                                        "+10.0"]


# ------------------------------------------------------------------------------ run --arms


def test_run_with_all_arms_end_to_end(tmp_path, tokenizer, monkeypatch):
    pair = save_pair(tmp_path / "pair")
    generate, _ = scripted_generation(tokenizer)
    monkeypatch.setattr(sft_module, "generate_samples", generate)
    data = write_questions(tmp_path / "q.jsonl")
    config = RunConfig(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), questions=None, max_new_tokens=8,
                       max_steps=2, eval_limit=3, eval_max_new_tokens=6, batch_size=8, dtype="float32", device="cpu",
                       arms=["baseline", "sft", "lightreasoner", "format-only", "random-positions", "entropy-one-hot",
                             "kept-expert"],
                       sft_samples_per_question=K)
    out = tmp_path / "run"
    run_pipeline(config, out, progress=False, say=lambda _: None)

    lr = json.loads((out / "efficiency.json").read_text())
    arm_names = ("sft", "format-only", "random-positions", "entropy-one-hot", "kept-expert")
    arms = {name: json.loads((out / name / "efficiency.json").read_text()) for name in arm_names}
    assert arms["sft"]["arm"] == "sft" and arms["sft"]["problems_sampled"] == lr["problems_sampled"] == 3
    assert arms["sft"]["examples_kept"] == 3  # the scripted keepers, graded for real
    stages = json.loads((out / "stages.json").read_text())
    for name in arm_names[1:]:
        assert arms[name]["optimizer_steps"] == lr["optimizer_steps"] == 2
        assert arms[name]["tokens_tuned"] == lr["tokens_tuned"] and arms[name]["examples_kept"] == lr["examples_kept"]
        assert arms[name]["seconds"]["sample"] == stages["sample"]["seconds"]
        assert (out / name / "examples.jsonl").is_file()
    assert "examples" in arms["entropy-one-hot"]["seconds"] and "examples" not in arms["format-only"]["seconds"]
    for name in arm_names:
        after = json.loads((out / name / "eval_after" / "run.json").read_text())
        assert after["adapter"] == str(out / name / "adapter") and stages[name]["done"]
        assert json.loads((out / name / "eval_after" / "summary.json").read_text())["benchmarks"]["arith"]["n"] == 3
    sft_train = json.loads((out / "run.json").read_text())["sft"]["train"]
    assert sft_train["learning_rate"] == config.learning_rate  # shared with the other arms; not the micro-batching
    assert sft_train["gradient_accumulation_steps"] == sft_module.SFT_MICRO_BATCHES
    report = (out / "report.md").read_text()
    # The headline first (every trained arm against the baseline), then the details.
    headline = report.index("## Each arm against the baseline")
    assert headline < report.index(f"## {ACCURACY_TITLE}") < report.index(f"## {EFFICIENCY_TITLE}")
    assert all(f"| {arm} | 3 |" in report[headline:report.index(f"## {ACCURACY_TITLE}")]
               for arm in ("sft", "lightreasoner", "format-only", "random-positions", "entropy-one-hot", "kept-expert"))
    assert "| format-only |" in report and (out / "arms.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Paired: random-positions against format-only" in report
    assert "## Paired: lightreasoner against sft" in report and "| strict |" in report
    assert "## What the contrast finds" in report and "- The contrast keeps" in report
    assert "## Kept positions and the expert's own uncertainty" in report  # cached by the entropy-one-hot arm
    assert "cached in entropy-one-hot/examples.jsonl" in report
    for title in ("entropy-one-hot against format-only", "entropy-one-hot against lightreasoner",
                  "kept-expert against lightreasoner", "kept-expert against baseline"):
        assert f"## Paired: {title}" in report

    # Published and restored elsewhere, every arm retrains and reuses every sample and answer.
    from lightreasoner import evaluation
    from lightreasoner.publish import publish, restore

    restored = tmp_path / "restored"
    publish(out, tmp_path / "published")
    restore(tmp_path / "published", restored)
    for name in ("samples.jsonl", "sft/samples.jsonl", "entropy-one-hot/examples.jsonl"):
        assert (restored / name).read_bytes() == (out / name).read_bytes()
    restored_stages = json.loads((restored / "stages.json").read_text())  # the sft stage's sampling is kept
    sft_sampling = json.loads((out / "sft" / "stages.json").read_text())["sample"]["seconds"]
    assert restored_stages["sft"]["seconds"] == sft_sampling > 0
    assert not restored_stages["sft"]["done"] and not restored_stages["entropy-one-hot"]["done"]
    examples_seconds = json.loads((out / "entropy-one-hot" / "stages.json").read_text())["examples"]["seconds"]
    assert restored_stages["entropy-one-hot"]["seconds"] == examples_seconds > 0  # the examples are restored
    with monkeypatch.context() as patched:
        patched.setattr(sft_module, "generate_samples", lambda *a, **k: pytest.fail("sft sampled again"))
        patched.setattr(pipeline, "sample", lambda *a, **k: pytest.fail("sampled again"))
        patched.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
        patched.setattr(controls, "teacher_forced_log_probs", lambda *a, **k: pytest.fail("examples written again"))
        run_pipeline(config, restored, progress=False, say=lambda _: None)
    for name in arm_names:
        assert (restored / name / "adapter" / "adapter_model.safetensors").is_file()
        assert json.loads((restored / name / "eval_after" / "summary.json").read_text())["benchmarks"] == \
            json.loads((out / name / "eval_after" / "summary.json").read_text())["benchmarks"]

    # Every arm is a finished stage now: a rerun loads and trains nothing.
    for name in ("load_pair", "sample", "train_from_file", "evaluate", "sft", "control"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: pytest.fail("a finished stage ran again"))
    run_pipeline(config, out, progress=False, say=lambda _: None)
    assert (out / "report.md").read_text() == report
    # How the work is done may change in a started folder (the micro-batching is a memory knob to
    # raise after running out of memory); what it computes may not.
    run_pipeline(config, out, overrides={"sft": {"gradient_accumulation_steps": 3}}, progress=False, say=lambda _: None)
    with pytest.raises(LightReasonerError, match=r"made with sft\.train\.lora_r=8, now 4"):
        run_pipeline(config, out, overrides={"sft": {"lora_r": 4}}, progress=False, say=lambda _: None)

    # A larger evaluation budget grows every arm's evaluation, to what a fresh one at that budget gives,
    # and runs nothing else again (the sft solutions keep the length they were sampled at).
    monkeypatch.undo()
    for name in ("load_pair", "sample", "train_from_file", "sft", "control"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: pytest.fail("a finished stage ran again"))
    grown = replace(config, eval_max_new_tokens=10)
    run_pipeline(grown, out, progress=False, say=lambda _: None)
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["eval"]["max_new_tokens"] == 10 and recorded["sft"]["max_new_tokens"] == 6
    for arm, folder in ARM_EVAL_DIRS.items():
        if arm not in config.arms:  # the control cells this run did not ask for
            continue
        assert json.loads((out / folder / "run.json").read_text())["max_new_tokens"] == 10
        adapter = None if arm == "baseline" else str((out / folder).parent / "adapter")
        fresh = evaluation.evaluate(replace(stage_configs(grown)[2], adapter=adapter), tmp_path / "fresh" / arm,
                                    progress=False)
        assert {k: v for k, v in json.loads((out / folder / "summary.json").read_text())["benchmarks"]["arith"].items()
                if k != "seconds"} == {k: v for k, v in fresh["benchmarks"]["arith"].items() if k != "seconds"}
        answers = [(path / "arith.jsonl").read_text().splitlines() for path in (out / folder, tmp_path / "fresh" / arm)]
        assert [json.loads(line)["completion_ids"] for line in answers[0]] == \
            [json.loads(line)["completion_ids"] for line in answers[1]]
        assert any(json.loads(line)["tokens"] > 6 for line in answers[0])  # grown past the old budget
    with pytest.raises(LightReasonerError, match="made with eval.max_new_tokens=10; a budget can grow, not shrink"):
        run_pipeline(config, out, progress=False, say=lambda _: None)


def test_sft_and_control_commands(pair, tokenizer, tmp_path, monkeypatch, capsys):
    generate, calls = scripted_generation(tokenizer)
    monkeypatch.setattr(sft_module, "generate_samples", generate)
    data = write_questions(tmp_path / "q.jsonl")
    # max_new_tokens: the tiny expert's context is 512 tokens, prompt included (a longer ask is refused)
    (tmp_path / "sft.yaml").write_text("sft:\n  samples_per_question: 3\n  lora_r: 4\n  temperature: 0.5\n"
                                       "  max_new_tokens: 64\n")
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(pair[0]), "--data", str(data), "--out", str(out), "--config",
                 str(tmp_path / "sft.yaml"), "--max-steps", "1", "--dtype", "float32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sampled 9 solutions to 3 questions" in printed and "trained 1 steps" in printed
    settings = json.loads((out / "arm.json").read_text())
    assert settings["temperature"] == 0.5 and settings["train"]["lora_r"] == 4
    assert settings["train"]["max_steps"] == 1 and settings["train"]["epochs"] is None  # --max-steps replaces 1 epoch
    assert settings["train"]["steps_per_update"] == sft_module.SFT_TOKENS_PER_UPDATE
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert sft_train_config().epochs == 1.0 and sft_train_config({"epochs": 2}).epochs == 2
    sampled = len(calls)  # where the data is read from may change; the finished arm is left as it is
    assert main(["sft", "--model", str(pair[0]), "--data", str(data), "--data-dir", str(tmp_path), "--out", str(out),
                 "--config", str(tmp_path / "sft.yaml"), "--max-steps", "1", "--dtype", "float32", "--quiet"]) == 0
    assert len(calls) == sampled and "trained 1 steps" in capsys.readouterr().out

    samples = tmp_path / "samples.jsonl"
    sample(SampleConfig(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), max_new_tokens=8, beta=0.05,
                        dtype="float32", device="cpu"), samples, progress=False)
    assert main(["control", "--model", str(pair[0]), "--samples", str(samples), "--out", str(tmp_path / "c"),
                 "--max-steps", "2", "--steps-per-update", "2", "--dtype", "float32", "--save-steps", "0"]) == 0
    assert "format-only control: trained 2 steps on 4 labelled positions" in capsys.readouterr().out
    assert main(["control", "--model", str(pair[0]), "--samples", str(samples), "--out", str(tmp_path / "r"),
                 "--positions", "random", "--max-steps", "2", "--steps-per-update", "2", "--dtype", "float32",
                 "--save-steps", "0"]) == 0
    assert "random-positions control: trained 2 steps on 4 labelled positions" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "adapter" / "train_summary.json").read_text())["format"] == "random-positions"
    assert main(["control", "--model", str(pair[0]), "--samples", str(samples), "--out", str(tmp_path / "c"),
                 "--max-steps", "3", "--steps-per-update", "2", "--dtype", "float32", "--save-steps", "0"]) == 2
    assert "train.max_steps=2, now 3" in capsys.readouterr().err
    moved = tmp_path / "moved" / "samples.jsonl"  # the same samples under another path: the finished arm is kept
    moved.parent.mkdir()
    moved.write_bytes(samples.read_bytes())
    moved.with_name("samples.jsonl.meta.json").write_bytes(samples.with_name("samples.jsonl.meta.json").read_bytes())
    assert main(["control", "--model", str(pair[0]), "--samples", str(moved), "--out", str(tmp_path / "c"),
                 "--max-steps", "2", "--steps-per-update", "2", "--dtype", "float32", "--save-steps", "0"]) == 0
    assert "[train] already done" in capsys.readouterr().out
    moved.write_text("".join(samples.read_text().splitlines(keepends=True)[:-1]))  # one trajectory fewer
    assert main(["control", "--model", str(pair[0]), "--samples", str(moved), "--out", str(tmp_path / "c"),
                 "--max-steps", "2", "--steps-per-update", "2", "--dtype", "float32", "--save-steps", "0"]) == 2
    assert "samples_sha256=" in capsys.readouterr().err
    assert main(["run", "--arms", "baseline,sft,contrast", "--out", str(tmp_path / "r")]) == 2
    assert "unknown arm 'contrast'" in capsys.readouterr().err
