"""Growing an evaluation's token budget: only the answers cut off at the old limit are continued, from
where they stopped, and the folder ends equal to a fresh evaluation at the new limit (float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

from lightreasoner import answers, cli, data, evaluation, prompts
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation import EvalConfig, evaluate
from lightreasoner.models import encode_prompt, load_model, load_tokenizer, real_vocab_size, stop_token_ids
from lightreasoner.publish import published_record
from tiny import make_model, make_tokenizer

QUESTIONS = [("Natalia sold 48 clips in April and half as many in May. How many clips?", "72"),
             ("Weng earns $12 an hour. How much for 50 minutes?", "10"),
             ("Let x be the number of apples. 3 + 4 = ?", "7"),
             ("How many clips did Natalia sell in April?", "48"),
             ("What is 10 - 9?", "1")]
SMALL, LARGE = 12, 40  # budgets: at 12 most answers are cut off; at 40 some of them end, some do not
# What must be equal between a grown answer and a fresh one (seconds are wall time).
ANSWER = ("completion", "completion_ids", "tokens", "finish", "pred", "source", "correct", "correct_strict")


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory) -> Path:
    """The tiny pair's expert (tests/tiny.py) with its end token's output row scaled up, so that its
    answers end at varied lengths (a random model otherwise never ends)."""
    folder = tmp_path_factory.mktemp("growth") / "expert"
    tokenizer, model = make_tokenizer(), make_model(1, layers=3)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.lm_head.weight[end] *= 3.0
    model.generation_config.eos_token_id = end
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class Made:
    data_dir: Path
    fresh: Path  # a fresh evaluation at the large budget
    small: Path  # one at the small budget, for each test to grow a copy of


@pytest.fixture(scope="module")
def made(tmp_path_factory, expert_dir) -> Made:
    root = tmp_path_factory.mktemp("made")
    data_dir = root / "data"
    (data_dir / "gsm8k").mkdir(parents=True)
    (data_dir / "gsm8k" / "test.jsonl").write_text("".join(
        json.dumps({"question": q, "answer": f"Reasoning.\n#### {a}"}) + "\n" for q, a in QUESTIONS))
    (data_dir / "mmlu_stem").mkdir()
    (data_dir / "mmlu_stem" / "test.jsonl").write_text("".join(
        json.dumps({"question": f"Pick {i}", "choices": ["a", "b", "c", "d"], "answer": i}) + "\n"
        for i in range(3)))
    evaluate(settings(expert_dir, data_dir, LARGE), root / "fresh", progress=False)
    evaluate(settings(expert_dir, data_dir, SMALL), root / "small", progress=False)
    return Made(data_dir, root / "fresh", root / "small")


def settings(expert_dir: Path, data_dir: Path, max_new_tokens: int, **overrides) -> EvalConfig:
    values = dict(model=str(expert_dir), benchmarks=["gsm8k", "mmlu_stem"], data_dir=str(data_dir),
                  max_new_tokens=max_new_tokens, batch_size=3, device="cpu", dtype="float32")
    return EvalConfig(**{**values, **overrides})


def lines(folder: Path, benchmark: str) -> list[str]:
    return (folder / f"{benchmark}.jsonl").read_text().splitlines()


def records(folder: Path, benchmark: str) -> dict[str, dict]:
    found = [json.loads(line) for line in lines(folder, benchmark)]
    assert len({r["id"] for r in found}) == len(found), "a question is in the file twice"
    return {r["id"]: r for r in found}


def assert_equal_answers(folder: Path, fresh: Path) -> None:
    """Every answer of ``folder`` as ``fresh`` has it, and summaries alike but for time and the settings."""
    for benchmark in ("gsm8k", "mmlu_stem"):
        mine, theirs = records(folder, benchmark), records(fresh, benchmark)
        assert mine.keys() == theirs.keys()
        for key, record in mine.items():
            assert {f: record[f] for f in ANSWER} == {f: theirs[key][f] for f in ANSWER}, key
    summaries = [json.loads((f / "summary.json").read_text()) for f in (folder, fresh)]
    for summary in summaries:
        for result in summary["benchmarks"].values():
            del result["seconds"]
        del summary["seconds"]
    assert summaries[0]["benchmarks"] == summaries[1]["benchmarks"]


def test_a_grown_budget_continues_only_the_cut_off_answers_and_ends_as_a_fresh_evaluation(expert_dir, made, tmp_path,
                                                                                          monkeypatch, capsys):
    data_dir, fresh, out = made.data_dir, made.fresh, shutil.copytree(made.small, tmp_path / "out")
    before = {name: lines(out, name) for name in ("gsm8k", "mmlu_stem")}
    small = {name: records(out, name) for name in before}
    cut = {name: [key for key, r in found.items() if r["finish"] == "length"] for name, found in small.items()}
    ended = {name: [key for key in found if key not in cut[name]] for name, found in small.items()}
    large = {name: records(fresh, name) for name in before}
    # The questions exercise every case: ended within the small budget, ended within the large one
    # only, cut off at both.
    assert all(r["tokens"] == SMALL for name in cut for key, r in small[name].items() if key in cut[name])
    assert any(ended.values())
    assert any(large[name][key]["finish"] == "eos" for name in cut for key in cut[name])
    assert any(large[name][key]["finish"] == "length" for name in cut for key in cut[name])

    real, asked = evaluation._generate, {}

    def counting(config, backend, benchmark, todo, template, progress, begun):
        asked[benchmark] = ([p.id for p in todo], sorted(begun))
        yield from real(config, backend, benchmark, todo, template, progress, begun)

    monkeypatch.setattr(evaluation, "_generate", counting)
    summary = evaluate(settings(expert_dir, data_dir, LARGE), out, progress=False)
    for name in before:  # only the cut-off answers were asked for, each continued from its own ids
        assert sorted(asked[name][0]) == sorted(cut[name]) == asked[name][1]
    assert_equal_answers(out, fresh)
    for name, old_lines in before.items():
        new_lines = lines(out, name)
        assert [json.loads(line)["id"] for line in new_lines] == [json.loads(line)["id"] for line in old_lines]
        for old, new in zip(old_lines, new_lines):  # the answers that had ended stay byte for byte
            record = json.loads(old)
            if record["id"] in ended[name]:
                assert new == old
            else:
                grown = json.loads(new)
                assert grown["continued_from"] == "ids" and grown["seconds"] > record["seconds"]
                assert grown["completion_ids"][:SMALL] == record["completion_ids"]
    assert json.loads((out / "run.json").read_text())["max_new_tokens"] == LARGE
    assert summary["settings"]["max_new_tokens"] == LARGE

    # Run again at the same budget: nothing is left to do (the answers cut off at 40 reached it).
    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
    evaluate(settings(expert_dir, data_dir, LARGE), out, progress=False)
    grown = {name: lines(out, name) for name in before}
    # A smaller budget is refused with one line naming the folder's, and nothing is touched.
    with pytest.raises(LightReasonerError, match=f"made with max_new_tokens={LARGE}; a budget can grow, not shrink"):
        evaluate(settings(expert_dir, data_dir, SMALL), out, progress=False)
    capsys.readouterr()
    code = cli.main(["eval", "--model", str(expert_dir), "--benchmarks", "gsm8k,mmlu_stem", "--data-dir",
                     str(data_dir), "--out", str(out), "--max-new-tokens", str(SMALL), "--device", "cpu",
                     "--dtype", "float32", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and f"max_new_tokens={LARGE}" in error
    assert {name: lines(out, name) for name in before} == grown
    assert json.loads((out / "run.json").read_text())["max_new_tokens"] == LARGE


KILL_SCRIPT = """
import json, os, signal, sys
from lightreasoner import evaluation
from lightreasoner.evaluation import EvalConfig, evaluate

real, chunks = evaluation._generate, []

def killed(*args):
    for chunk in real(*args):
        if chunks:  # one chunk of grown answers is on disk: kill -9 before the next
            os.kill(os.getpid(), signal.SIGKILL)
        chunks.append(chunk)
        yield chunk

evaluation._generate = killed
evaluate(EvalConfig(**json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_a_growth_killed_midway_resumes_without_losing_or_repeating_an_answer(expert_dir, made, tmp_path,
                                                                              monkeypatch):
    data_dir, fresh, out = made.data_dir, made.fresh, shutil.copytree(made.small, tmp_path / "out")
    before = {name: records(out, name) for name in ("gsm8k", "mmlu_stem")}

    grow = json.dumps(asdict(settings(expert_dir, data_dir, LARGE)))
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, grow, str(out)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9, killed.stderr
    # The budget was recorded before the first longer answer, which was appended beside the old one.
    assert json.loads((out / "run.json").read_text())["max_new_tokens"] == LARGE
    gsm8k = [json.loads(line) for line in lines(out, "gsm8k")]
    assert len(gsm8k) == len(before["gsm8k"]) + 1 and gsm8k[-1]["continued_from"] == "ids"
    # Meanwhile regrade counts each question once, by its last line (and writes one line each).
    stopped = shutil.copytree(out, tmp_path / "stopped")
    regraded = answers.regrade(stopped, progress=False)["benchmarks"]["gsm8k"]
    assert regraded["n"] == len(records(stopped, "gsm8k")) == len(before["gsm8k"])
    assert {f: records(stopped, "gsm8k")[gsm8k[-1]["id"]][f] for f in ANSWER} == {f: gsm8k[-1][f] for f in ANSWER}
    with (out / "gsm8k.jsonl").open("a") as handle:  # and a line torn by a kill mid-write
        handle.write('{"id": "4", "completion": "hal')

    # Stopped again once every answer has grown, before the last file is rewritten with one line per question.
    real = evaluation.keep_last_answers

    def stopped_before_the_last(path):
        if path.name == "mmlu_stem.jsonl":
            raise KeyboardInterrupt
        real(path)

    monkeypatch.setattr(evaluation, "keep_last_answers", stopped_before_the_last)
    with pytest.raises(KeyboardInterrupt):
        evaluate(settings(expert_dir, data_dir, LARGE), out, progress=False)
    assert len(lines(out, "mmlu_stem")) > len(before["mmlu_stem"])
    monkeypatch.setattr(evaluation, "keep_last_answers", real)
    monkeypatch.setattr(evaluation, "open_backend", lambda *a, **k: pytest.fail("an answer was generated again"))
    evaluate(settings(expert_dir, data_dir, LARGE), out, progress=False)
    assert_equal_answers(out, fresh)


def slow_continuation(model, tokenizer, prompt_ids: list[int], so_far: list[int], budget: int) -> list[int]:
    """Greedy decoding by full forward passes from ``prompt_ids + so_far`` up to ``budget`` answer tokens."""
    vocab, stops, ids = real_vocab_size(tokenizer, model), stop_token_ids(tokenizer, model), list(so_far)
    with torch.no_grad():
        while len(ids) < budget:
            ids.append(int(torch.argmax(model(torch.tensor([prompt_ids + ids])).logits[0, -1, :vocab])))
            if ids[-1] in stops:
                break
    return ids


def test_a_published_folder_grows_from_its_ids_or_else_from_its_text(expert_dir, made, tmp_path):
    """A published folder keeps each answer's ids (no prompt, no gold answer), and grows exactly. An
    older folder without ids continues from its completion text encoded again, and says so (the tiny
    model's random bytes encode to other ids, as a real model's text rarely does)."""
    data_dir, fresh, small = made.data_dir, made.fresh, made.small
    model, tokenizer = load_model(expert_dir), load_tokenizer(expert_dir)
    published, older = tmp_path / "published", tmp_path / "older"
    for folder, keep_ids in ((published, True), (older, False)):
        folder.mkdir()
        for name in ("run.json", "summary.json"):
            (folder / name).write_bytes((small / name).read_bytes())
        for benchmark in ("gsm8k", "mmlu_stem"):
            reduced = [published_record(json.loads(line)) for line in lines(small, benchmark)]
            assert all("prompt" not in r and "gold" not in r and "completion_ids" in r for r in reduced)
            if not keep_ids:
                reduced = [{k: v for k, v in r.items() if k != "completion_ids"} for r in reduced]
            (folder / f"{benchmark}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reduced))
    evaluate(settings(expert_dir, data_dir, LARGE), published, progress=False)
    assert_equal_answers(published, fresh)

    # A text that encodes to at least the new budget's tokens has nothing left to generate: it is kept,
    # counted by those tokens.
    evaluate(settings(expert_dir, data_dir, SMALL + 1), older, progress=False)
    full = 0
    for benchmark in ("gsm8k", "mmlu_stem"):
        old = records(small, benchmark)
        for key, kept in records(older, benchmark).items():
            so_far = tokenizer(old[key]["completion"], add_special_tokens=False)["input_ids"]
            if old[key]["finish"] == "length" and len(so_far) > SMALL:
                assert (kept["completion"], kept["completion_ids"], kept["tokens"], kept["finish"]) == (
                    old[key]["completion"], so_far, len(so_far), "length")
                assert kept["continued_from"] == "text"
                full += 1
    assert full > 0
    evaluate(settings(expert_dir, data_dir, LARGE), older, progress=False)

    for benchmark in ("gsm8k", "mmlu_stem"):
        old = records(small, benchmark)
        for key, grown in records(older, benchmark).items():
            if old[key]["finish"] != "length":
                assert "continued_from" not in grown and grown["completion"] == old[key]["completion"]
                continue
            assert grown["continued_from"] == "text"
            so_far = tokenizer(old[key]["completion"], add_special_tokens=False)["input_ids"]
            question = data.load_problems(benchmark, data_dir=data_dir)[int(key)]
            prompt = prompts.build_prompt("qwen25-math-cot", prompts.toolkit_question(question.question, question.gold),
                                          tokenizer)
            expected = slow_continuation(model, tokenizer, encode_prompt(tokenizer, prompt), so_far, LARGE)
            assert grown["completion_ids"] == expected and grown["tokens"] == len(expected)
            assert grown["completion"].startswith(old[key]["completion"])
    # Grown again, an answer that was once continued from its text still says so.
    evaluate(settings(expert_dir, data_dir, LARGE + 8), older, progress=False)
    assert all(r["continued_from"] == "text" for name in ("gsm8k", "mmlu_stem")
               for r in records(older, name).values() if r["tokens"] > SMALL)


def test_a_continuation_stops_on_a_stop_string_that_began_before_it():
    """A stop string across the old answer's end is where an answer generated in one go stops."""
    tokenizer = make_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    stops = prompts.get_template("plain").stop_strings
    so_far, new = encode("So the total is 72 clips.\nQues"), encode("tion: How many clips? 48 + 24 = 72")
    kept = evaluation._stop_across(tokenizer, so_far, new, stops)
    # The reference: the first new token after which the whole text holds a stop string.
    first = next(k for k in range(1, len(new) + 1)
                 if any(s in tokenizer.decode(so_far + new[:k]) for s in stops))
    assert kept == first and tokenizer.decode(new[:kept]).startswith("tion:")
    assert evaluation._stop_across(tokenizer, encode("So the total is 72."), new, stops) is None
    assert evaluation._stop_across(tokenizer, [], new, stops) is None
    assert evaluation._stop_across(tokenizer, so_far, new, ()) is None


def test_a_vllm_folder_grows_through_the_engine(expert_dir, made, tmp_path, standin_vllm):
    """The continuation requests (prompt ids + the answer's ids, the rest of the budget) through the
    vLLM backend (the stand-in generates with the same model) end as the hf backend's fresh answers."""
    out = tmp_path / "out"
    evaluate(settings(expert_dir, made.data_dir, SMALL, backend="vllm", device="auto"), out, progress=False)
    cut = sum(r["finish"] == "length" for name in ("gsm8k", "mmlu_stem") for r in records(out, name).values())
    evaluate(settings(expert_dir, made.data_dir, LARGE, backend="vllm", device="auto"), out, progress=False)
    assert sum(standin_vllm.ENGINES[-1].calls) == cut
    assert_equal_answers(out, made.fresh)
