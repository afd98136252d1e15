"""Run, arm and evaluation folders: what kind a folder is (run.json's ``kind``, and for folders written
before it, their keys), and the arms found in them."""

from __future__ import annotations

import json

import pytest

from lightreasoner.layout import EVAL_KIND, RUN_KIND, folder_kind


@pytest.mark.parametrize("record, kind", [
    ({"kind": "run", "settings": {}}, RUN_KIND),
    ({"kind": "eval", "model": "m", "max_new_tokens": 8}, EVAL_KIND),
    ({"kind": "eval", "settings": {}}, EVAL_KIND),  # the kind, not the keys, decides
    ({"settings": {"expert": "e"}, "sample": {}}, RUN_KIND),  # written before run.json had a kind
    ({"model": "m", "max_new_tokens": 8, "adapter_sha256": None}, EVAL_KIND),
    ({"model": "m"}, None),
    (["not", "a", "record"], None),
])
def test_a_folder_is_told_by_its_kind_and_an_older_one_by_its_keys(tmp_path, record, kind):
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert folder_kind(tmp_path) == kind


def test_a_folder_without_run_json_has_no_kind(tmp_path):
    assert folder_kind(tmp_path) is None
    assert folder_kind(tmp_path / "missing") is None
