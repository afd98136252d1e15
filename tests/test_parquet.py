"""The Parquet export: loadable with `datasets`, and read back by `train` exactly as the JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lightreasoner import models
from lightreasoner.examples import load_samples, sample_examples
from lightreasoner.cli import main
from lightreasoner.controls import write_examples
from lightreasoner.sampling import SampleConfig, read_samples, sample


QUESTIONS = ["Natalia sold 48 clips in April and 24 in May. How many clips?", "What is 3 + 4?", "How many apples?"]
COLUMNS = ["id", "prompt_ids", "completion_ids", "finish", "kl", "steps"]
TEXT = ["question", "gold", "prompt"]


@pytest.fixture(scope="module")
def samples(pair, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    data = root / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": str(i)}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    sample(SampleConfig(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), max_new_tokens=10, beta=0.5,
                        dtype="float32", device="cpu"), root / "samples.jsonl", progress=False)
    return root / "samples.jsonl"


def test_parquet_round_trip_through_datasets_and_train(pair, samples, tmp_path, capsys):
    from datasets import load_dataset

    header, records = read_samples(samples)
    assert sum(len(r["steps"]) for r in records) > 0
    out = tmp_path / "labels.parquet"
    assert main(["export", "--format", "parquet", "--samples", str(samples), "--out", str(out)]) == 0
    assert f"Wrote {len(records)} trajectories as Parquet" in capsys.readouterr().out

    dataset = load_dataset("parquet", data_files=str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert dataset.column_names == COLUMNS and len(dataset) == len(records)
    for row, record in zip(dataset, records, strict=True):
        assert row == {key: record[key] for key in COLUMNS}
    assert json.loads(pq.read_schema(out).metadata[b"lightreasoner"]) == header

    tokenizer = models.load_tokenizer(pair[0])
    from_jsonl, from_parquet = sample_examples(samples, tokenizer), load_samples(out, tokenizer)
    assert from_parquet.vocab_size == from_jsonl.vocab_size and from_parquet.examples
    assert [(e.input_ids, e.positions, e.label_ids, e.label_weights) for e in from_parquet.examples] == \
        [(e.input_ids, e.positions, e.label_ids, e.label_weights) for e in from_jsonl.examples]
    assert from_parquet.examples[0].source == f"{out} row 1"
    assert read_samples(out)[1] == [{k: v for k, v in r.items() if k not in TEXT} for r in records]

    options = ["--dtype", "float32", "--steps-per-update", "2", "--max-steps", "2", "--save-steps", "0"]
    assert main(["train", "--model", str(pair[0]), "--samples", str(out), "--out", str(tmp_path / "p"), *options]) == 0
    assert main(["train", "--model", str(pair[0]), "--samples", str(samples), "--out", str(tmp_path / "j"),
                 *options]) == 0
    assert (tmp_path / "p" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "j" / "adapter_model.safetensors").read_bytes()


def test_parquet_text_only_on_request_and_a_controls_examples(pair, samples, tmp_path, capsys):
    from datasets import load_dataset

    _, records = read_samples(samples)
    out = tmp_path / "text.parquet"
    assert main(["export", "--format", "parquet", "--samples", str(samples), "--out", str(out), "--with-text"]) == 0
    dataset = load_dataset("parquet", data_files=str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert dataset.column_names == ["id", *TEXT, *COLUMNS[1:]]
    assert dataset["question"] == [r["question"] for r in records] and dataset["gold"] == [r["gold"] for r in records]
    assert read_samples(out)[1] == records  # nothing lost

    examples = write_examples(samples, tmp_path / "examples.jsonl", model=str(pair[0]), positions="entropy",
                              labels="expert", progress=False)
    exported = tmp_path / "examples.parquet"
    assert main(["export", "--format", "parquet", "--samples", str(examples), "--out", str(exported)]) == 0
    header, written = read_samples(examples)
    assert read_samples(exported) == (header, [{k: v for k, v in r.items() if k not in TEXT} for r in written])
    assert "entropy" in pq.read_schema(exported).names

    bad = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(out).replace_schema_metadata(None), bad)
    capsys.readouterr()
    assert main(["train", "--model", str(pair[0]), "--samples", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "no lightreasoner header in the Parquet schema metadata" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert main(["export", "--format", "parquet", "--samples", str(tmp_path / "junk.parquet"),
                 "--out", str(tmp_path / "y.parquet")]) == 2
    assert "junk.parquet: not a Parquet file" in capsys.readouterr().err
