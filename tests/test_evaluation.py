"""The evaluation loop end to end on a tiny random model: files, table, resume, bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from lightreasoner import cli, evaluation, prompts
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation import EvalConfig, evaluate, score, wilson_interval
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
        assert set(record) >= {"id", "prompt", "completion", "pred", "gold", "correct", "tokens", "finish"}
        assert record["prompt"].startswith("<|im_start|>system\n" + prompts.COT_SYSTEM_PROMPT)
        assert 1 <= record["tokens"] <= 12
    assert {r["gold"] for r in records} == {answer for _, answer in GSM8K}

    summary = json.loads((out / "summary.json").read_text())
    for name in ("gsm8k", "mmlu_stem"):
        rows = read_lines(out / f"{name}.jsonl")
        result = summary["benchmarks"][name]
        assert result["n"] == len(rows)
        assert result["correct"] == sum(r["correct"] for r in rows)
        assert result["tokens"] == sum(r["tokens"] for r in rows)
    assert summary["average"] == pytest.approx(
        (summary["benchmarks"]["gsm8k"]["accuracy"] + summary["benchmarks"]["mmlu_stem"]["accuracy"]) / 2)
    assert results_table(summary).splitlines()[0].split()[:3] == ["benchmark", "n", "accuracy"]


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

    real = evaluation.hf_generate
    asked: list[int] = []

    def killed_after_two_answers(model, tokenizer, texts, **kwargs):
        asked.append(len(texts))
        for number, answers in enumerate(real(model, tokenizer, texts, **kwargs)):
            yield answers
            if number == 1:
                raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(evaluation, "hf_generate", killed_after_two_answers)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), out, progress=False)
    assert len(read_lines(out / "gsm8k.jsonl")) == 2
    with (out / "gsm8k.jsonl").open("a") as handle:  # and a torn line from a kill mid-write
        handle.write('{"id": "4", "completion": "hal')

    def counting(model, tokenizer, texts, **kwargs):
        asked.append(len(texts))
        yield from real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(evaluation, "hf_generate", counting)
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["gsm8k"]), out, progress=False)
    assert asked == [5, 3]  # the resumed run generated only the 3 unfinished questions
    resumed = read_lines(out / "gsm8k.jsonl")
    assert sorted(r["id"] for r in resumed) == ["0", "1", "2", "3", "4"]
    clean = {r["id"]: r for r in read_lines(reference / "gsm8k.jsonl")}
    for record in resumed:
        assert record["completion"] == clean[record["id"]]["completion"]
    assert summary["benchmarks"]["gsm8k"]["n"] == 5


def test_the_summary_of_an_unfinished_eval_lists_its_pending_benchmarks(tiny_dir, data_dir, tmp_path, monkeypatch):
    real = evaluation.hf_generate

    def killed_on_the_second_benchmark(model, tokenizer, texts, **kwargs):
        if kwargs["desc"] == "mmlu_stem":
            raise KeyboardInterrupt
        yield from real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(evaluation, "hf_generate", killed_on_the_second_benchmark)
    settings = config(tiny_dir, data_dir, benchmarks=["gsm8k", "mmlu_stem"])
    with pytest.raises(KeyboardInterrupt):
        evaluate(settings, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["benchmarks"]) == ["gsm8k"] and summary["pending"] == ["mmlu_stem"]
    monkeypatch.setattr(evaluation, "hf_generate", real)
    assert evaluate(settings, tmp_path, progress=False)["pending"] == []


def test_changed_settings_are_refused(tiny_dir, data_dir, tmp_path):
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)
    with pytest.raises(LightReasonerError, match="max_new_tokens"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], max_new_tokens=5), tmp_path / "out")


def test_the_data_folder_may_move_but_its_answers_may_not_change(tiny_dir, data_dir, tmp_path, monkeypatch):
    first = evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "out", progress=False)
    moved = tmp_path / "elsewhere"
    shutil.copytree(data_dir, moved)
    monkeypatch.setattr(evaluation, "hf_generate", lambda *a, **k: pytest.fail("an answer was generated again"))
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


def test_wilson_interval_matches_its_definition():
    """The interval's ends are the p where |p_hat - p| = z sqrt(p (1 - p) / n), found by bisection."""
    def root(f, low, high):
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if f(low) * f(mid) > 0 else (low, mid)
        return (low + high) / 2

    z = 1.959963984540054
    for correct, n in [(0, 10), (3, 10), (10, 10), (36, 60), (1, 1319), (700, 1319)]:
        p_hat = correct / n
        f = lambda p: abs(p_hat - p) - z * math.sqrt(p * (1 - p) / n)  # noqa: E731
        # f < 0 just beside p_hat (> 0 at the far end), so each side holds one root
        low = 0.0 if correct == 0 else root(f, 0.0, p_hat - 1e-12)
        high = 1.0 if correct == n else root(f, p_hat + 1e-12, 1.0)
        assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-9)


def test_compare_table(tmp_path):
    def write(name, results, pending=()):
        folder = tmp_path / name
        folder.mkdir()
        benchmarks = {k: {"n": 10, "correct": int(v * 10), "accuracy": v, "ci95": [0, 1], "tokens": 1, "seconds": 1}
                      for k, v in results.items()}
        (folder / "summary.json").write_text(json.dumps({"benchmarks": benchmarks, "pending": list(pending),
                                                         "average": 0, "tokens": 0, "seconds": 0}))
        return folder

    base = write("base", {"gsm8k": 0.4, "math": 0.3})
    tuned = write("tuned", {"gsm8k": 0.7, "math": 0.6, "svamp": 0.5})
    lines = compare_table([base, tuned]).splitlines()
    assert lines[0].split() == ["benchmark", "base", "tuned", "diff"]
    assert lines[2].split() == ["gsm8k", "(10)", "40.0", "70.0", "+30.0"]
    assert lines[4].split() == ["svamp", "(10)", "-", "50.0", "-"]
    assert lines[5].split() == ["average", "(2", "benchmarks)", "35.0", "65.0", "+30.0"]
    halfway = write("halfway", {"gsm8k": 0.5}, pending=["math", "svamp"])  # still evaluating
    lines = compare_table([base, halfway]).splitlines()
    assert lines[3].split() == ["math", "(10)", "30.0", "running", "-"]
    assert lines[4].split() == ["average", "(1", "benchmarks)", "40.0", "50.0", "+10.0"]
    with pytest.raises(LightReasonerError, match="summary.json"):
        compare_table([tmp_path])


def test_compare_command(tmp_path, tiny_dir, data_dir, capsys):
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"]), tmp_path / "a", progress=False)
    evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], prompt="plain"), tmp_path / "b", progress=False)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "mmlu_stem (3)" in capsys.readouterr().out
    assert read_lines(tmp_path / "b" / "mmlu_stem.jsonl")[0]["prompt"].startswith("Question: Pick")


# --------------------------------------------------------------------------- score and bad input


def test_score_grades_in_input_order(tmp_path, data_dir):
    source = tmp_path / "in.jsonl"
    lines = [{"completion": "so \\boxed{72}", "gold": "72", "extra": 1},
             {"completion": "The answer is 9", "id": "1"},  # gold 10 from the data by id
             {"completion": "", "gold": 18},  # an empty completion is graded wrong, not an error
             {"completion": "The answer is 10.0", "id": "1"}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = score("gsm8k", source, tmp_path / "out.jsonl", data_dir=data_dir, progress=False)
    graded = read_lines(tmp_path / "out.jsonl")
    assert [g["correct"] for g in graded] == [True, False, False, True]
    assert [g["pred"] for g in graded] == ["72", "9", "", "10.0"]
    assert graded[0]["extra"] == 1 and graded[1]["id"] == "1"
    assert (summary["n"], summary["correct"]) == (4, 2)


@pytest.mark.parametrize("content, message", [
    ('{"completion": "1", "gold": "1"}\n{"completion": \n', "in.jsonl:2: not valid JSON"),
    ('{"gold": "1"}\n', "in.jsonl:1: field 'completion'"),
    ('{"completion": "1"}\n', "in.jsonl:1: needs 'gold' or an 'id'"),
    ('{"completion": "1", "id": "nope"}\n', "in.jsonl:1: id 'nope' is not in"),
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
    assert json.loads((out / "run.json").read_text())["adapter_sha256"] == evaluation.adapter_fingerprint(first)
    shutil.copytree(first, tmp_path / "copy")
    shutil.rmtree(first)
    summary = evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=str(tmp_path / "copy")), out,
                       progress=False)  # every answer is there: nothing to load or generate
    assert summary["benchmarks"]["mmlu_stem"]["n"] == 3
    other = save_adapter(tmp_path / "b", 1)
    with pytest.raises(LightReasonerError, match=f"adapter_sha256.*delete {re.escape(str(out))} to answer again"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=other), out, progress=False)
    shutil.rmtree(out)  # what the message offers: the other adapter's answers from scratch
    assert evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=other), out,
                    progress=False)["benchmarks"]["mmlu_stem"]["n"] == 3
    monkeypatch.setattr("lightreasoner.models.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(LightReasonerError, match="not a peft adapter folder"):
        evaluate(config(tiny_dir, data_dir, benchmarks=["mmlu_stem"], adapter=str(tmp_path)), tmp_path / "o2")


def test_llamacpp_backend_without_the_extra_is_a_one_line_error(tiny_dir, data_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the extra sees
    assert cli.main(["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k", "--data-dir", str(data_dir),
                     "--backend", "llamacpp", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "llama-cpp-python is not installed" in error and 'pip install -e ".[llamacpp]"' in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "run.json").exists()  # the folder does not record a backend that never ran


def test_compare_says_when_answers_come_from_different_backends(tmp_path, capsys):
    for name, backend in (("a", "hf"), ("b", "llamacpp"), ("c", "hf")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"settings": {"backend": backend}, "benchmarks": {
            "gsm8k": {"n": 4, "correct": 2, "accuracy": 0.5, "ci95": [0.15, 0.85], "tokens": 8, "seconds": 1.0}}}))
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 0
    assert "different backends" not in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "answers come from different backends (hf, llamacpp)" in capsys.readouterr().out
