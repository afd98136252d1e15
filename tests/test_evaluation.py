"""The evaluation loop end to end on a tiny random model: files, table, resume, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from lightreasoner import cli, data, evaluation, grading, models, prompts, stats
from lightreasoner.answers import regrade, score
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation import EvalConfig, evaluate
from lightreasoner.models import encode_prompt, load_model, load_tokenizer, real_vocab_size, stop_token_ids
from lightreasoner.tables import compare_table, results_table
from tiny import make_model, make_tokenizer

GSM8K = [("Natalia sold 48 clips in April and half as many in May. How many clips?", "72"),
         ("Weng earns $12 an hour. How much for 50 minutes?", "10"),
         ("Let x be the number of apples. 3 + 4 = ?", "7"),
         ("How many clips did Natalia sell in April?", "48"),
         ("What is 10 - 9?", "1")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny model folder whose padding rows would win every argmax if they were not masked."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = make_tokenizer()
    model = make_model(3, layers=2)
    vocab = len(tokenizer)
    with torch.no_grad():  # padding rows = 50x a real row: unmasked, greedy would pick them
        model.lm_head.weight[vocab:] = 50 * model.lm_head.weight[:vocab].mean(0, keepdim=True).abs().sign() \
            * model.lm_head.weight[:vocab].abs().max()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.do_sample = True  # must be ignored: evaluation is greedy
    # Hub checkpoints ship processors (Qwen2.5-Instruct: repetition_penalty 1.1); transformers applies a
    # model's generation config under any generation_config passed in: they must be neutralised too.
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 1
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "gsm8k").mkdir(parents=True)
    with (folder / "gsm8k" / "test.jsonl").open("w") as handle:
        for question, answer in GSM8K:
            handle.write(json.dumps({"question": question, "answer": f"Reasoning.\n#### {answer}"}) + "\n")
    (folder / "mmlu_stem").mkdir()
    with (folder / "mmlu_stem" / "test.jsonl").open("w") as handle:
        for index in range(3):
            handle.write(json.dumps({"question": f"Pick {index}", "choices": ["a", "b", "c", "d"],
                                     "answer": index}) + "\n")
    return folder


def config(tiny_dir: Path, data_dir: Path, **overrides) -> EvalConfig:
    values = dict(model=str(tiny_dir), benchmarks=["gsm8k", "mmlu_stem"], data_dir=str(data_dir),
                  max_new_tokens=12, batch_size=2, device="cpu", dtype="float32")
    values.update(overrides)
    return EvalConfig(**values)


def slow_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """Batch-1 greedy decoding by full forward passes, over real-vocabulary rows only."""
    ids = encode_prompt(tokenizer, prompt)
    vocab, stops = real_vocab_size(tokenizer, model), stop_token_ids(tokenizer, model)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits[0, -1, :vocab]
            token = int(torch.argmax(logits))
            new.append(token)
            if token in stops:
                return tokenizer.decode(new[:-1], skip_special_tokens=True), len(new)
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_writes_records_summary_and_table(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k,mmlu_stem", "--data-dir", str(data_dir),
                     "--out", str(out), "--max-new-tokens", "12", "--batch-size", "2", "--device", "cpu",
                     "--dtype", "float32", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "95% CI" in printed and "gsm8k" in printed and "mmlu_stem" in printed and "average" in printed

    records = read_lines(out / "gsm8k.jsonl")
    assert [r["id"] for r in records] != [] and sorted(r["id"] for r in records) == ["0", "1", "2", "3", "4"]
    for record in records:
        assert set(record) >= {"id", "prompt", "completion", "pred", "source", "gold", "correct", "correct_strict",
                               "tokens", "finish"}
        assert record["prompt"].startswith("<|im_start|>system\n" + prompts.COT_SYSTEM_PROMPT)
        assert 1 <= record["tokens"] <= 12
        graded = grading.grade(record["completion"], record["gold"], "gsm8k", finish=record["finish"])
        assert (record["pred"], record["source"], record["correct"], record["correct_strict"]) == (
            graded.pred, graded.source, graded.correct, graded.correct_strict)
    assert {r["gold"] for r in records} == {answer for _, answer in GSM8K}

    summary = json.loads((out / "summary.json").read_text())
    for name in ("gsm8k", "mmlu_stem"):
        rows = read_lines(out / f"{name}.jsonl")
        result = summary["benchmarks"][name]
        assert result["n"] == len(rows)
        assert result["correct"] == sum(r["correct"] for r in rows)
        assert result["correct_strict"] == sum(r["correct_strict"] for r in rows)
        assert result["cut_off"] == sum(r["finish"] == "length" for r in rows)
        assert result["tokens"] == sum(r["tokens"] for r in rows)
    for key in ("accuracy", "accuracy_strict"):
        assert summary[key.replace("accuracy", "average")] == pytest.approx(
            (summary["benchmarks"]["gsm8k"][key] + summary["benchmarks"]["mmlu_stem"][key]) / 2)
    table = results_table(summary).splitlines()
    assert table[0].split() == ["benchmark", "n", "accuracy", "[95%", "CI]", "strict", "[95%", "CI]", "cut", "off",
                                "tokens", "seconds"]
    assert all(len(line) <= 100 for line in table)


def test_completions_equal_slow_greedy_and_skip_padding_rows(tiny_dir, data_dir, tmp_path):
    """Batched left-padded generate == batch-1 greedy over real rows, though padding rows dominate."""
    model, tokenizer = load_model(tiny_dir), load_tokenizer(tiny_dir)
    vocab = real_vocab_size(tokenizer, model)
    prompt = prompts.build_prompt("qwen25-math-cot", GSM8K[0][0], tokenizer)
    unmasked = model(torch.tensor([encode_prompt(tokenizer, prompt)])).logits[0, -1]
    assert int(torch.argmax(unmasked)) >= vocab  # the test model really does prefer a padding row

    evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), tmp_path / "out", progress=False)
    for record in read_lines(tmp_path / "out" / "gsm8k.jsonl"):
        text, tokens = slow_greedy(model, tokenizer, record["prompt"], 12)
        assert (record["completion"], record["tokens"]) == (text, tokens)


def test_interrupted_eval_resumes_without_redoing(tiny_dir, data_dir, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), reference, progress=False)

    real = evaluation._generate
    asked: list[int] = []

    def killed_after_two_answers(config, backend, benchmark, todo, *args):
        asked.append(len(todo))
        for number, answers in enumerate(real(config, backend, benchmark, todo, *args)):
            yield answers
            if number == 1:
                raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(evaluation, "_generate", killed_after_two_answers)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), out, progress=False)
    assert len(read_lines(out / "gsm8k.jsonl")) == 2
    with (out / "gsm8k.jsonl").open("a") as handle:  # and a torn line from a kill mid-write
        handle.write('{"id": "4", "completion": "hal')

    def counting(config, backend, benchmark, todo, *args):
        asked.append(len(todo))
        yield from real(config, backend, benchmark, todo, *args)

    monkeypatch.setattr(evaluation, "_generate", counting)
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), out, progress=False)
    assert asked == [5, 3]  # the resumed run generated only the 3 unfinished questions
    resumed = read_lines(out / "gsm8k.jsonl")
    assert sorted(r["id"] for r in resumed) == ["0", "1", "2", "3", "4"]
    clean = {r["id"]: r for r in read_lines(reference / "gsm8k.jsonl")}
    for record in resumed:
        assert record["completion"] == clean[record["id"]]["completion"]
    assert summary["benchmarks"]["gsm8k"]["n"] == 5


def test_the_summary_of_an_unfinished_eval_lists_its_pending_benchmarks(tiny_dir, data_dir, tmp_path, monkeypatch):
    real = evaluation._generate

    def killed_on_the_second_benchmark(config, backend, benchmark, *args):
        if benchmark == "mmlu_stem":
            raise KeyboardInterrupt
        yield from real(config, backend, benchmark, *args)

    monkeypatch.setattr(evaluation, "_generate", killed_on_the_second_benchmark)
    settings = config(tiny_dir, data_dir, benchmarks=["gsm8k", "mmlu_stem"])
    with pytest.raises(KeyboardInterrupt):
        evaluate(settings, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["benchmarks"]) == ["gsm8k"] and summary["pending"] == ["mmlu_stem"]
    monkeypatch.setattr(evaluation, "_generate", real)
    assert evaluate(settings, tmp_path, progress=False)["pending"] == []


def test_changed_settings_are_refused(tiny_dir, data_dir, tmp_path):
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)
    with pytest.raises(LightReasonerError, match="max_new_tokens"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], max_new_tokens=5), tmp_path / "out")


def test_the_data_folder_may_move_but_its_answers_may_not_change(tiny_dir, data_dir, tmp_path, monkeypatch):
    first = evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)
    moved = tmp_path / "elsewhere"
    shutil.copytree(data_dir, moved)
    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
    again = evaluate(config(tiny_dir, moved, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)
    assert again["benchmarks"] == first["benchmarks"]
    rows = (moved / "mmlu_stem" / "test.jsonl").read_text().splitlines()
    rows[0] = rows[0].replace('"answer": 0', '"answer": 1')
    (moved / "mmlu_stem" / "test.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(LightReasonerError, match="mmlu_stem.jsonl: the gold of question .* differs from the data"):
        evaluate(config(tiny_dir, moved, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)


def test_adapter_is_loaded(tiny_dir, data_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    model, _ = evaluation.load_for_eval(config(tiny_dir, data_dir, adapter=str(tmp_path / "adapter")))
    assert type(model).__name__.startswith("Peft")
    x = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model(x).logits, peft_model(x).logits, atol=1e-5)
    with pytest.raises(LightReasonerError, match="adapter"):
        evaluation.load_for_eval(config(tiny_dir, data_dir, adapter=str(tmp_path)))


def test_compare_table(tmp_path):
    def write(name, results, pending=()):
        """Each benchmark: (toolkit accuracy, strict accuracy or None for a folder graded before it)."""
        folder = tmp_path / name
        folder.mkdir()
        benchmarks = {}
        for benchmark, (toolkit, strict) in results.items():
            benchmarks[benchmark] = {"n": 10, "correct": int(toolkit * 10), "accuracy": toolkit, "ci95": [0.1, 0.9],
                                     "cut_off": 2, "tokens": 1, "seconds": 1}
            if strict is not None:
                benchmarks[benchmark].update(correct_strict=int(strict * 10), accuracy_strict=strict,
                                             ci95_strict=[0.05, 0.85])
        (folder / "summary.json").write_text(json.dumps({"benchmarks": benchmarks, "pending": list(pending),
                                                         "average": 0, "tokens": 0, "seconds": 0}))
        return folder

    base = write("base", {"gsm8k": (0.4, 0.3), "math": (0.3, 0.2)})
    tuned = write("tuned", {"gsm8k": (0.7, 0.7), "math": (0.6, 0.4), "svamp": (0.5, 0.5)})
    lines = compare_table([base, tuned]).splitlines()
    assert lines[0].split() == ["benchmark", "folder", "accuracy", "[95%", "CI]", "diff", "strict", "[95%", "CI]",
                                "diff", "cut", "off"]
    assert lines[2].split() == ["gsm8k", "(10)", "base", "40.0", "[10.0,", "90.0]", "30.0", "[5.0,", "85.0]", "2",
                                "(20%)"]
    assert lines[3].split() == ["tuned", "70.0", "[10.0,", "90.0]", "+30.0", "70.0", "[5.0,", "85.0]", "+40.0", "2",
                                "(20%)"]
    assert lines[6].split()[:4] == ["svamp", "(10)", "base", "-"] and lines[7].split()[:2] == ["tuned", "50.0"]
    assert lines[8].split() == ["average", "(2)", "base", "35.0", "25.0"]
    assert lines[9].split() == ["tuned", "65.0", "+30.0", "55.0", "+30.0"]
    halfway = write("halfway", {"gsm8k": (0.5, None)}, pending=["math", "svamp"])  # still evaluating, graded before
    lines = compare_table([base, halfway]).splitlines()  # the strict verdict existed
    assert lines[3].split() == ["halfway", "50.0", "[10.0,", "90.0]", "+10.0", "-", "-", "2", "(20%)"]
    assert lines[5].split() == ["halfway", "running", "-", "-", "-", "-"]
    assert lines[6].split() == ["average", "(1)", "base", "40.0", "30.0"]
    assert lines[7].split() == ["halfway", "50.0", "+10.0", "-", "-"]
    with pytest.raises(LightReasonerError, match="summary.json"):
        compare_table([tmp_path])


def test_compare_command(tmp_path, tiny_dir, data_dir, capsys):
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "a", progress=False)
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], prompt="plain"), tmp_path / "b", progress=False)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "mmlu_stem (3)" in capsys.readouterr().out
    assert read_lines(tmp_path / "b" / "mmlu_stem.jsonl")[0]["prompt"].startswith("Question: Pick")


# --------------------------------------------------------------------------- score and bad input


def test_score_grades_in_input_order(tmp_path, data_dir, capsys):
    source = tmp_path / "in.jsonl"
    lines = [{"completion": "so \\boxed{72}", "gold": "72", "extra": 1},
             {"completion": "The answer is 9", "id": "1"},  # gold 10 from the data by id
             {"completion": "", "gold": 18},  # an empty completion is graded wrong, not an error
             {"completion": "The answer is 10.0", "id": "1"},
             {"completion": "so 60 + 12 = 72", "gold": "72", "finish": "eos"},  # the last number: toolkit only
             {"completion": "so \\boxed{72} and then", "gold": "72", "finish": "length"}]  # cut off: toolkit only
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = score("gsm8k", source, tmp_path / "out.jsonl", data_dir=data_dir, progress=False)
    graded = read_lines(tmp_path / "out.jsonl")
    assert [g["correct"] for g in graded] == [True, False, False, True, True, True]
    assert [g["correct_strict"] for g in graded] == [True, False, False, True, False, False]
    assert [g["pred"] for g in graded] == ["72", "9", "", "10.0", "72", "72"]
    assert [g["source"] for g in graded] == ["boxed", "answer-is", "none", "answer-is", "last-number", "boxed"]
    assert graded[0]["extra"] == 1 and graded[1]["id"] == "1" and graded[5]["finish"] == "length"
    assert (summary["n"], summary["correct"], summary["correct_strict"], summary["cut_off"]) == (6, 4, 2, 1)
    assert summary["accuracy_strict"] == pytest.approx(2 / 6)
    assert cli.main(["score", "--benchmark", "gsm8k", "--input", str(source), "--out", str(tmp_path / "cli.jsonl"),
                     "--data-dir", str(data_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4/6 correct" in printed and "strict 2/6" in printed and "cut off 1" in printed
    assert read_lines(tmp_path / "cli.jsonl") == graded


@pytest.mark.parametrize("content, message", [
    ('{"completion": "1", "gold": "1"}\n{"completion": \n', "in.jsonl:2: not valid JSON"),
    ('{"gold": "1"}\n', "in.jsonl:1: field 'completion'"),
    ('{"completion": "1"}\n', "in.jsonl:1: needs 'gold' or an 'id'"),
    ('{"completion": "1", "id": "nope"}\n', "in.jsonl:1: id 'nope' is not in"),
    ('{"completion": "1", "gold": "1", "finish": 3}\n', "in.jsonl:1: field 'finish' must be a string"),
    ("", "no records"),
])
def test_score_bad_input(tmp_path, data_dir, content, message):
    (tmp_path / "in.jsonl").write_text(content)
    with pytest.raises(LightReasonerError, match=message):
        score("gsm8k", tmp_path / "in.jsonl", tmp_path / "out.jsonl", data_dir=data_dir, progress=False)


def test_bad_benchmark_and_missing_data(tiny_dir, data_dir, tmp_path, capsys):
    with pytest.raises(LightReasonerError, match="unknown benchmark 'gsm9k'"):
        score("gsm9k", tmp_path / "x.jsonl", tmp_path / "y.jsonl")
    code = cli.main(["eval", "--model", str(tiny_dir), "--benchmarks", "gsm9k", "--out", str(tmp_path / "o")])
    assert code == 2 and "unknown benchmark 'gsm9k'" in capsys.readouterr().err
    with pytest.raises(LightReasonerError, match="svamp/test.jsonl: benchmark file not found"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["svamp"]), tmp_path / "o2", progress=False)
    (data_dir / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(LightReasonerError, match="gsm8k/test.jsonl:2: not valid JSON"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), tmp_path / "o3", progress=False)


def test_sample_sizes_per_benchmark_and_nested_subsets(tiny_dir, data_dir, tmp_path, capsys):
    """--sample gsm8k=3 evaluates a seeded 3 of gsm8k and all of mmlu_stem; a smaller seeded sample
    is a subset of a larger one, so an evaluation can grow without redoing answers."""
    from lightreasoner.data import load_problems

    out = tmp_path / "out"
    code = cli.main(["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k,mmlu_stem", "--data-dir", str(data_dir),
                     "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32",
                     "--sample", "gsm8k=3", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert (summary["gsm8k"]["n"], summary["mmlu_stem"]["n"]) == (3, 3)
    chosen = {p.id for p in load_problems("gsm8k", data_dir=data_dir, sample=3, seed=0)}
    assert {r["id"] for r in read_lines(out / "gsm8k.jsonl")} == chosen

    for seed in range(20):
        sizes = [1, 2, 3, 4]
        subsets = [{p.id for p in load_problems("gsm8k", data_dir=data_dir, sample=n, seed=seed)} for n in sizes]
        assert all(small <= large for small, large in zip(subsets, subsets[1:]))
        assert [len(s) for s in subsets] == sizes

    command = ["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k,mmlu_stem", "--out", str(out), "--sample"]
    for bad, message in (("svamp=3", "'svamp' is not one of the benchmarks"), ("gsm8k=0", "at least 1")):
        assert cli.main([*command, bad]) == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "gsm8k:3"])
    assert exited.value.code == 2 and "expected N or NAME=N" in capsys.readouterr().err


def test_answers_resume_with_the_same_adapter_anywhere_and_not_with_another(tiny_dir, data_dir, tmp_path,
                                                                             monkeypatch):
    """An evaluation folder is tied to its adapter's content: a copy elsewhere (a rebuilt run on
    another machine) resumes it, a different adapter is refused."""
    from peft import LoraConfig, get_peft_model

    def save_adapter(path, seed):
        torch.manual_seed(seed)
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(load_model(tiny_dir), lora).save_pretrained(path)
        return str(path)

    first = save_adapter(tmp_path / "a", 0)
    out = tmp_path / "out"
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=first), out, progress=False)
    assert json.loads((out / "run.json").read_text())["adapter_sha256"] == models.adapter_fingerprint(first)
    shutil.copytree(first, tmp_path / "copy")
    shutil.rmtree(first)
    # The same adapter saved by another process: peft writes target_modules (a set) in hash order.
    written = json.loads((tmp_path / "copy" / "adapter_config.json").read_text())
    written["target_modules"] = sorted(written["target_modules"], reverse=True)  # not sorted, whatever peft wrote
    (tmp_path / "copy" / "adapter_config.json").write_text(json.dumps(written))
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=str(tmp_path / "copy")), out,
                       progress=False)  # every answer is there: nothing to load or generate
    assert summary["benchmarks"]["mmlu_stem"]["n"] == 3
    # A folder evaluated before the fingerprint sorted those lists recorded the file's order: still accepted.
    recorded = json.loads((out / "run.json").read_text())
    legacy = models.adapter_fingerprint(tmp_path / "copy", as_written=True)
    assert legacy != models.adapter_fingerprint(tmp_path / "copy")
    (out / "run.json").write_text(json.dumps({**recorded, "adapter_sha256": legacy}))
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=str(tmp_path / "copy")), out,
                       progress=False)
    assert summary["benchmarks"]["mmlu_stem"]["n"] == 3
    other = save_adapter(tmp_path / "b", 1)
    with pytest.raises(LightReasonerError, match=f"adapter_sha256.*delete {re.escape(str(out))} to answer again"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=other), out, progress=False)
    (out / "run.json").write_text(json.dumps({**recorded, "adapter_sha256": legacy}))  # another's legacy hash neither
    with pytest.raises(LightReasonerError, match="adapter_sha256"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=other), out, progress=False)
    shutil.rmtree(out)  # what the message offers: the other adapter's answers from scratch
    assert evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=other), out,
                    progress=False)["benchmarks"]["mmlu_stem"]["n"] == 3
    monkeypatch.setattr("lightreasoner.models.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(LightReasonerError, match="not a peft adapter folder"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=str(tmp_path)), tmp_path / "o2")


# --------------------------------------------------------------------------- grading a folder again


def published_eval(folder: Path, data_dir: Path, answers: list[tuple[str, str, str]], **settings) -> Path:
    """An evaluation folder as `lightreasoner publish` leaves it: answers (id, completion, finish)
    without prompt or gold, graded by an older grader (every answer marked wrong, no strict verdict)."""
    folder.mkdir(parents=True)
    values = {"benchmarks": ["gsm8k"], "split": "test", "data_dir": str(data_dir), "limit": None, "sample": None,
              "seed": 0, **settings}
    (folder / "run.json").write_text(json.dumps({"model": "m", "max_new_tokens": 12, "adapter_sha256": None}))
    (folder / "summary.json").write_text(json.dumps({"model": "m", "adapter": None, "settings": values,
                                                     "benchmarks": {"gsm8k": {}}, "pending": []}))
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(
        {"id": i, "benchmark": "gsm8k", "completion": c, "pred": "", "correct": False, "tokens": 12 if f == "length"
         else 5, "finish": f, "seconds": 0.5}) + "\n" for i, c, f in answers))
    return folder


def test_regrade_a_published_folder_from_the_data(tmp_path, data_dir, capsys):
    """Gold answers come back from the data by id, both verdicts are written, nothing else is added
    (a published folder stays free of the benchmark's text), and the summary is rebuilt."""
    answers = [("0", "48 / 2 = 24, 48 + 24 = \\boxed{72}", "eos"),  # right, stated, finished
               ("1", "She earns 12 / 60 * 50 = 10", "eos"),  # right by its last number only
               ("2", "3 + 4 = \\boxed{7} and then we", "length"),  # right, stated, but cut off
               ("3", "The answer is 47.", "eos"),  # wrong
               ("4", "We compute 10 - 9 = 1 and", "length")]  # right by the last number of a cut-off text
    folder = published_eval(tmp_path / "eval", data_dir, answers)
    before = read_lines(folder / "gsm8k.jsonl")
    summary = regrade(folder, progress=False)  # the data folder its settings name
    records = read_lines(folder / "gsm8k.jsonl")
    assert [r["correct"] for r in records] == [True, True, True, False, True]
    assert [r["correct_strict"] for r in records] == [True, False, False, False, False]
    assert [r["source"] for r in records] == ["boxed", "last-number", "boxed", "answer-is", "last-number"]
    for old, new in zip(before, records):
        assert set(new) == set(old) | {"source", "correct_strict"}
        assert {k: v for k, v in new.items() if k not in grading.Grade.__dataclass_fields__} == {
            k: v for k, v in old.items() if k not in grading.Grade.__dataclass_fields__}
    result = summary["benchmarks"]["gsm8k"]
    assert (result["n"], result["correct"], result["correct_strict"], result["cut_off"]) == (5, 4, 1, 2)
    assert result["ci95_strict"] == pytest.approx(list(stats.wilson_interval(1, 5)))
    assert summary["average_strict"] == pytest.approx(0.2) and summary["tokens"] == 5 + 5 + 12 + 5 + 12
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert regrade(folder, progress=False) == summary  # again: nothing changes

    moved = tmp_path / "moved"  # the data elsewhere: --data-dir
    shutil.move(data_dir, moved)
    with pytest.raises(LightReasonerError, match="benchmark file not found"):
        regrade(folder, progress=False)
    assert cli.main(["regrade", str(folder), "--data-dir", str(moved), "--quiet"]) == 0
    assert "20.0 [3.6, 62.4]" in capsys.readouterr().out  # the strict accuracy, 1 of 5, in the printed table


def test_regrade_selects_the_evaluations_subset_and_refuses_a_stranger(tmp_path, data_dir):
    chosen = [p.id for p in data.load_problems("gsm8k", data_dir=data_dir, sample=2, seed=3)]
    golds = {"0": "72", "1": "10", "2": "7", "3": "48", "4": "1"}
    answers = [(i, f"\\boxed{{{golds[i]}}}", "eos") for i in chosen]
    folder = published_eval(tmp_path / "eval", data_dir, answers, sample={"gsm8k": 2}, seed=3)
    assert regrade(folder, progress=False)["benchmarks"]["gsm8k"]["correct_strict"] == 2
    stranger = next(i for i in golds if i not in chosen)  # a question this evaluation's subset leaves out
    with (folder / "gsm8k.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": stranger, "completion": "1", "finish": "eos"}) + "\n")
    with pytest.raises(LightReasonerError, match=f"gsm8k.jsonl:3: question '{stranger}' is not among"):
        regrade(folder, progress=False)


def test_regrade_of_a_fresh_evaluation_changes_nothing(tiny_dir, data_dir, tmp_path):
    """An evaluation's own records carry their gold answers (no data needed) and today's grades."""
    out = tmp_path / "out"
    summary = evaluate(config(tiny_dir, data_dir), out, progress=False)
    files = {name: (out / f"{name}.jsonl").read_bytes() for name in ("gsm8k", "mmlu_stem")}
    shutil.rmtree(data_dir)
    assert regrade(out, progress=False) == summary
    assert {name: (out / f"{name}.jsonl").read_bytes() for name in files} == files


def test_the_default_budget_is_the_toolkits():
    """2,048 new tokens per answer, as the Qwen2.5-Math toolkit and the paper, unless set."""
    from lightreasoner.pipeline import RunConfig, stage_configs

    assert EvalConfig().max_new_tokens == RunConfig().eval_max_new_tokens == 2048
    assert stage_configs(RunConfig())[2].max_new_tokens == 2048
    assert stage_configs(RunConfig(eval_max_new_tokens=512))[2].max_new_tokens == 512


def test_llamacpp_backend_without_the_extra_is_a_one_line_error(tiny_dir, data_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the extra sees
    assert cli.main(["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k", "--data-dir", str(data_dir),
                     "--backend", "llamacpp", "--max-new-tokens", "12", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "llama-cpp-python is not installed" in error and 'pip install -e ".[test,llamacpp]"' in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "run.json").exists()  # the folder does not record a backend that never ran


def test_the_llamacpp_backend_refuses_a_gpu_device_before_anything_loads(tiny_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("lightreasoner.llamacpp.import_llama_cpp", lambda: pytest.fail("checked after the device"))
    with pytest.raises(LightReasonerError, match="--device cuda:1: the llamacpp backend runs on the CPU"):
        evaluate(config(tiny_dir, data_dir, backend="llamacpp", device="cuda:1"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "run.json").exists()


def test_auto_keeps_the_backend_a_folder_has_answered_with(tiny_dir, data_dir, tmp_path, monkeypatch):
    """An extra installed between two runs into one folder must not mix two engines' answers there."""
    out = tmp_path / "out"
    evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"], limit=2, backend="hf"), out, progress=False)
    monkeypatch.setattr(evaluation, "resolve_backend", lambda *args, **kwargs: "llamacpp")  # as if installed since
    assert evaluation.answering_backend(config(tiny_dir, data_dir, backend="auto"), tmp_path / "new") == "llamacpp"
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"], backend="auto"), out, progress=False)
    assert summary["settings"]["backend"] == "hf" and summary["benchmarks"]["gsm8k"]["n"] == len(GSM8K)


def test_compare_says_when_answers_were_made_differently(tmp_path, capsys):
    """Different engines, dtypes or token budgets are named (a setting a folder does not record, or a
    dtype recorded as auto, is not compared; a missing backend is hf); folders made alike get no note."""
    for name, settings in (("a", {"backend": "hf", "max_new_tokens": 512}), ("b", {"backend": "llamacpp"}),
                           ("c", {"backend": "hf", "max_new_tokens": 512}), ("d", {"max_new_tokens": 1024, "dtype": "float32"}),
                           ("e", {"backend": "hf", "max_new_tokens": 512, "dtype": "bfloat16"}),
                           ("f", {"backend": "hf", "max_new_tokens": 512, "dtype": "auto"})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"settings": settings, "benchmarks": {
            "gsm8k": {"n": 4, "correct": 2, "accuracy": 0.5, "ci95": [0.15, 0.85], "tokens": 8, "seconds": 1.0}}}))
    for alike in ("c", "f"):  # "auto" is what was asked, not what ran: not compared
        assert cli.main(["compare", str(tmp_path / "e"), str(tmp_path / alike)]) == 0
        assert "Note:" not in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "made with different backends (hf, llamacpp);" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "d")]) == 0  # a folder without a backend is hf
    assert "made with different token budgets (512, 1024);" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "d"), str(tmp_path / "b"), str(tmp_path / "e")]) == 0
    assert "different backends (hf, llamacpp) and dtypes (bfloat16, float32) and token budgets (512, 1024);" in \
        capsys.readouterr().out