"""The resume protocol (lightreasoner/resume.py): headers checked by format and version, settings
compared by dotted name, the first difference named in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from lightreasoner.errors import LightReasonerError
from lightreasoner.resume import RUNTIME_SETTINGS, check_same_settings, first_difference, read_header, setting_names


def write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_read_header_checks_format_and_version_and_names_the_line(tmp_path):
    path = write(tmp_path / "f.jsonl", [{"type": "header", "format": "fmt", "version": 1}, {"a": 1}, {"a": 2}])
    where, header, lines = read_header(path, "fmt", 1, "test file")
    assert where == f"{path}:1" and header["format"] == "fmt"
    assert list(lines) == [(f"{path}:2", {"a": 1}), (f"{path}:3", {"a": 2})]
    with pytest.raises(LightReasonerError, match=rf"{path}:1: not a other file \(expected a 'other' header line\)"):
        read_header(path, "other", 1, "other file")
    with pytest.raises(LightReasonerError, match=rf"{path}:1: test file format version 1 is not supported .*version 2"):
        read_header(path, "fmt", 2, "test file")
    with pytest.raises(LightReasonerError, match=rf"{tmp_path / 'e.jsonl'}: empty test file"):
        read_header(write(tmp_path / "e.jsonl", []), "fmt", 1, "test file")
    headless = write(tmp_path / "h.jsonl", [{"format": "fmt", "version": 1}])  # no "type": "header"
    with pytest.raises(LightReasonerError, match="expected a 'fmt' header line"):
        read_header(headless, "fmt", 1, "test file")


def test_only_the_compared_settings_must_match_and_the_first_difference_is_named(tmp_path):
    before = {"seed": 1, "train": {"lr": 0.1, "workers": 2}, "extra": "x"}
    now = {"seed": 1, "train": {"lr": 0.2, "workers": 4}, "extra": "y"}
    assert first_difference(before, now, ["seed", "train.workers", "train.lr"]) == ("train.workers", 2, 4)
    assert first_difference(before, now, ["seed"]) is None  # extra and train.* not compared
    with pytest.raises(LightReasonerError) as error:
        check_same_settings(tmp_path / "run.json", before, now, ["seed", "train.lr"], hint="go elsewhere")
    assert str(error.value) == f"{tmp_path / 'run.json'}: made with train.lr=0.1, now 0.2; go elsewhere"
    # A setting missing from an old file: what it was made with before the setting existed.
    assert first_difference({}, {"backend": "hf"}, ["backend"], defaults={"backend": "hf"}) is None
    assert first_difference({}, {"backend": "vllm"}, ["backend"], defaults={"backend": "hf"}) == ("backend", "hf", "vllm")
    assert first_difference({}, {"a": {"b": 1}}, ["a.b"]) == ("a.b", None, 1)


def test_a_model_given_by_another_path_is_the_same_model(tmp_path, monkeypatch):
    (tmp_path / "expert").mkdir()
    monkeypatch.chdir(tmp_path)
    assert first_difference({"sft": {"model": str(tmp_path / "expert")}}, {"sft": {"model": "expert"}},
                            ["sft.model"]) is None
    assert first_difference({"model": "expert"}, {"model": "other"}, ["model"]) == ("model", "expert", "other")


def test_setting_names_leave_out_how_the_work_is_run():
    @dataclass
    class Config:
        lr: float = 0.1
        save_steps: int = 5
        data_dir: str = ""
        seed: int = field(default=0)

    assert {"save_steps", "data_dir"} <= RUNTIME_SETTINGS
    assert setting_names(Config, "train.") == ("train.lr", "train.seed")
    assert setting_names(Config, but={"seed"}) == ("lr", "save_steps", "data_dir")
