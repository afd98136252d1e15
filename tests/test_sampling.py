"""The sampling stage on a tiny random model pair, against a slow one-forward-per-prefix reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightreasoner.cli import main
from lightreasoner.contrast import KeptStep
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import chat_prompt, encode_prompt, load_model, load_tokenizer
from lightreasoner.sampling import SampleConfig, read_samples, sample, sample_batch

from tiny import make_tokenizer

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April. How many clips?",
    "Weng earns $12 an hour. How much did she earn?",
    "How many apples?",
    "Let x be the number of clips sold in May, and then she sold half as many clips. What is x?",
    "What is 7 + 2?",
    "Natalia sold 10 clips.",
]


@pytest.fixture()
def questions(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "#### 1"}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    return path


def config(pair, data, **overrides) -> SampleConfig:
    settings = dict(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), max_new_tokens=14, beta=2.8,
                    batch_size=4, contrast_every=5, dtype="float32", device="cpu")
    settings.update(overrides)
    return SampleConfig(**settings)


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def reference_sample(expert_dir, amateur_dir, question: str, cfg: SampleConfig):
    """The method written the slow, obvious way: one full forward per prefix, loops over tokens."""
    tokenizer = load_tokenizer(expert_dir)
    expert = load_model(expert_dir)
    amateur = load_model(amateur_dir)
    vocab = len(tokenizer)
    stops = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    prompt_ids = encode_prompt(tokenizer, chat_prompt(tokenizer, question, cfg.system_prompt))
    completion, kept = [], []
    with torch.no_grad():
        for t in range(cfg.max_new_tokens):
            state = torch.tensor([prompt_ids + completion])
            e_row = expert(state).logits[0, -1, :vocab].double().tolist()
            a_row = amateur(state).logits[0, -1, :vocab].double().tolist()
            p_e, p_a = softmax(e_row), softmax(a_row)
            kl = sum(pe * (math.log(pe) - math.log(pa)) for pe, pa in zip(p_e, p_a))
            if kl >= cfg.beta:
                ids = [a for a in range(vocab) if p_e[a] >= cfg.alpha * max(p_e)]
                weights = softmax([math.log(p_e[a]) - math.log(p_a[a]) for a in ids])
                kept.append(KeptStep(t, kl, ids, weights))
            token = max(range(vocab), key=lambda a: e_row[a])
            completion.append(token)
            if token in stops:
                break
    return prompt_ids, completion, kept


def assert_same_steps(got: list[dict], expected: list[KeptStep]) -> None:
    assert [s["step"] for s in got] == [s.step for s in expected]
    for step, ref in zip(got, expected):
        assert step["kl"] == pytest.approx(ref.kl, abs=1e-5, rel=1e-5)
        assert step["ids"] == ref.token_ids
        assert step["weights"] == pytest.approx(ref.weights, abs=1e-5)


def test_sampling_matches_slow_reference(pair, questions, tmp_path):
    cfg = config(pair, questions)
    sample(cfg, tmp_path / "out.jsonl", progress=False)
    header, records = read_samples(tmp_path / "out.jsonl")
    assert header["tokenizer"]["vocab_size"] == len(make_tokenizer())  # padding rows excluded
    assert [r["id"] for r in records] == [f"q{i}" for i in range(len(QUESTIONS))]
    total_kept = 0
    for record, question in zip(records, QUESTIONS):
        prompt_ids, completion, kept = reference_sample(pair[0], pair[1], question, cfg)
        assert record["prompt_ids"] == prompt_ids
        assert record["completion_ids"] == completion
        assert_same_steps(record["steps"], kept)
        total_kept += len(kept)
    all_steps = sum(len(r["completion_ids"]) for r in records)
    assert 0 < total_kept < all_steps  # beta really selects


def test_stops_on_end_token(pair, questions, tmp_path):
    """An expert pushed towards <|im_end|> stops on it, each sequence of a batch at its own step."""
    tokenizer = load_tokenizer(pair[0])
    expert = load_model(pair[0])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        expert.lm_head.weight[im_end] = expert.model.norm.weight * 100  # dominates every step
    expert.save_pretrained(tmp_path / "eager")
    tokenizer.save_pretrained(tmp_path / "eager")
    cfg = config(pair, questions, expert=str(tmp_path / "eager"), beta=0.0)
    sample(cfg, tmp_path / "out.jsonl", progress=False)
    _, records = read_samples(tmp_path / "out.jsonl")
    lengths = set()
    for record in records:
        completion = record["completion_ids"]
        assert record["finish"] == "eos" and completion[-1] == im_end and im_end not in completion[:-1]
        assert [s["step"] for s in record["steps"]] == list(range(len(completion)))  # beta 0 keeps every step
        lengths.add(len(completion))
    assert max(lengths) < cfg.max_new_tokens and len(lengths) > 1


def test_batched_equals_batch_of_one(pair, questions, tmp_path):
    one = config(pair, questions, batch_size=1, contrast_every=1)
    many = config(pair, questions, batch_size=6, contrast_every=4)
    sample(one, tmp_path / "one.jsonl", progress=False)
    sample(many, tmp_path / "many.jsonl", progress=False)
    _, records_one = read_samples(tmp_path / "one.jsonl")
    _, records_many = read_samples(tmp_path / "many.jsonl")
    for a, b in zip(records_one, records_many, strict=True):
        assert a["completion_ids"] == b["completion_ids"]
        assert_same_steps(a["steps"], [KeptStep(s["step"], s["kl"], s["ids"], s["weights"]) for s in b["steps"]])


def test_resume_after_interruption_gives_identical_file(pair, questions, tmp_path, monkeypatch):
    cfg = config(pair, questions, batch_size=2)
    sample(cfg, tmp_path / "full.jsonl", progress=False)

    import lightreasoner.sampling as sampling

    calls = {"n": 0}

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return sample_batch(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample_batch", crash_on_second_batch)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sampling.sample(cfg, out, progress=False)
    monkeypatch.undo()
    assert len(out.read_text().splitlines()) == 1 + 2  # header + first batch, flushed
    with out.open("a") as handle:  # a kill -9 in the middle of a write leaves a torn line
        handle.write('{"type": "sample", "id": "q2", "question": "How ma')
    stats = sample(cfg, out, progress=False)
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert stats.questions == len(QUESTIONS) and stats.complete and stats.sessions == 2
    sample(cfg, out, progress=False)  # a finished file is left as it is
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()


def test_resume_refuses_other_settings(pair, questions, tmp_path, capsys):
    sample(config(pair, questions), tmp_path / "out.jsonl", progress=False)
    code = main(["sample", "--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", str(questions),
                 "--out", str(tmp_path / "out.jsonl"), "--beta", "0.1", "--dtype", "float32", "--quiet",
                 "--max-new-tokens", "14", "--batch-size", "4"])
    assert code == 2
    assert "beta=2.8" in capsys.readouterr().err
    # The same ids asking other questions would mix two datasets in one file.
    questions.write_text(questions.read_text().replace(QUESTIONS[1], QUESTIONS[1] + " Twice?"))
    with pytest.raises(LightReasonerError, match="out.jsonl: the question of question q1 differs from the data"):
        sample(config(pair, questions), tmp_path / "out.jsonl", progress=False)


def test_cli_and_yaml_config(pair, questions, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(f"expert: {pair[0]}\namateur: {pair[1]}\nmax_new_tokens: 6\n"
                                       "beta: 100\ndtype: float32\n")
    code = main(["sample", "--config", str(tmp_path / "run.yaml"), "--data", str(questions), "--limit", "2",
                 "--max-new-tokens", "3", "--out", str(tmp_path / "out.jsonl"), "--quiet"])
    assert code == 0
    header, records = read_samples(tmp_path / "out.jsonl")
    assert header["settings"]["max_new_tokens"] == 3  # the command line wins over YAML
    assert header["settings"]["beta"] == 100
    assert len(records) == 2 and all(r["steps"] == [] for r in records)
    assert "Sampled 2 questions" in capsys.readouterr().out


def test_export_reference_format(pair, questions, tmp_path, capsys):
    sample(config(pair, questions), tmp_path / "out.jsonl", progress=False)
    assert main(["export", "--samples", str(tmp_path / "out.jsonl"), "--out", str(tmp_path / "ref.jsonl")]) == 0
    _, records = read_samples(tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
    assert len(lines) == sum(len(r["steps"]) for r in records) > 0
    tokenizer = load_tokenizer(pair[0])
    first = next(r for r in records if r["steps"])
    step = first["steps"][-1]
    line = next(x for x in lines if x["prompt_id"] == first["question"] and x["step"] == step["step"])
    assert set(line) == {"prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence"}
    assert line["prefix"] == tokenizer.decode(first["completion_ids"][:step["step"]])
    assert line["tokens"] == [tokenizer.decode([i]) for i in step["ids"]]
    assert line["token_ids"] == step["ids"] and line["weights"] == step["weights"]
    other = tmp_path / "other"
    make_tokenizer(corpus=["Zebras quietly juggle seventy purple xylophones."] * 3).save_pretrained(other)
    (other / "config.json").write_text((pair[0] / "config.json").read_text())
    assert main(["export", "--samples", str(tmp_path / "out.jsonl"), "--out", str(tmp_path / "x.jsonl"),
                 "--tokenizer", str(other)]) == 2
    assert "made with another tokenizer" in capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("content,message", [
    ('{"question": "a"}\n{"question": \n', "questions.jsonl:2: not valid JSON"),
    ('{"question": "a"}\n{"id": 3, "text": "b"}\n', "questions.jsonl:2: missing field 'question'"),
    ("", "no problems in file"),
])
def test_bad_question_files(pair, tmp_path, capsys, content, message):
    data = write(tmp_path / "questions.jsonl", content)
    out = tmp_path / "out.jsonl"
    code = main(["sample", "--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", str(data),
                 "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_settings(pair, questions, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    base = ["sample", "--out", str(out), "--quiet"]
    cases = [
        (["--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", "gsm9k"], "unknown data source 'gsm9k'"),
        (["--expert", str(tmp_path / "nope"), "--amateur", str(pair[1]), "--data", str(questions)],
         "model path not found"),
        (["--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", "gsm8k", "--data-dir", str(tmp_path)],
         "gsm8k/train.jsonl: benchmark file not found"),
        (["--expert", str(pair[0]), "--amateur", str(pair[1]), "--data", str(questions), "--alpha", "0"],
         "--alpha: must be in (0, 1], got 0.0"),
    ]
    for arguments, message in cases:
        assert main(base + arguments) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_incompatible_tokenizers(pair, questions, tmp_path, capsys):
    other = make_tokenizer(corpus=["Zebras quietly juggle seventy purple xylophones."] * 3)  # other merges
    model = load_model(pair[1])
    model.save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    code = main(["sample", "--expert", str(pair[0]), "--amateur", str(tmp_path / "other"), "--data", str(questions),
                 "--out", str(tmp_path / "out.jsonl"), "--quiet"])
    assert code == 2
    assert "tokenizers differ at id" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_nan_logits(pair, questions, tmp_path, capsys):
    model = load_model(pair[1])
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    load_tokenizer(pair[1]).save_pretrained(tmp_path / "broken")
    out = tmp_path / "out.jsonl"
    code = main(["sample", "--expert", str(pair[0]), "--amateur", str(tmp_path / "broken"), "--data",
                 str(questions), "--out", str(out), "--dtype", "float32", "--quiet"])
    assert code == 2
    assert "NaN or infinite logits" in capsys.readouterr().err
    assert not out.exists()  # nothing half-made was written: the header goes in with the first results
