"""Hub model ids resolve through a pre-filled Hugging Face cache with the Hub switched off (HF_HUB_OFFLINE=1).

The tiny model is written into the cache layout huggingface_hub itself uses
(``hub/models--<org>--<name>/{blobs,snapshots/<commit>,refs/main}``); a fresh Python process with
``HF_HOME`` pointing there and every network path closed then loads it by its id and evaluates it with the
command-line entry point. huggingface_hub reads its offline switch when imported, hence the subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tiny import make_model, make_tokenizer

REPO_ID = "tiny-org/tiny-math"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import hashlib, json, sys
from lightreasoner import cli, models

repo_id, data_dir, out = sys.argv[1:4]
tokenizer = models.load_tokenizer(repo_id)
model = models.load_model(repo_id)
weights = b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())
print(json.dumps({"vocab": len(tokenizer), "padding_side": tokenizer.padding_side,
                  "chat_template": tokenizer.chat_template, "sha256": hashlib.sha256(weights).hexdigest()}))
sys.stdout.flush()
sys.exit(cli.main(["eval", "--model", repo_id, "--benchmarks", "gsm8k", "--data-dir", data_dir, "--out", out,
                   "--max-new-tokens", "4", "--batch-size", "2", "--device", "cpu", "--dtype", "float32", "--quiet"]))
"""


def fill_hub_cache(hub_cache: Path, source: Path) -> Path:
    """Put the files of ``source`` into the cache as huggingface_hub lays out a downloaded snapshot."""
    repo = hub_cache / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        content = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_hub_id_loads_and_evaluates_from_the_cache_offline(tmp_path):
    tokenizer, model = make_tokenizer(), make_model(5, layers=1)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    home = tmp_path / "hf"
    snapshot = fill_hub_cache(home / "hub", tmp_path / "saved")
    assert (snapshot / "model.safetensors").is_symlink() and (snapshot / "config.json").is_file()
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (tmp_path / "data" / "gsm8k" / "test.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_ENDPOINT="http://127.0.0.1:9",  # a closed port: any request that slips through fails
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", SCRIPT, REPO_ID, str(tmp_path / "data"), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    loaded = json.loads(result.stdout.splitlines()[0])
    weights = b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())
    assert loaded == {"vocab": len(tokenizer), "padding_side": "left", "chat_template": tokenizer.chat_template,
                      "sha256": hashlib.sha256(weights).hexdigest()}
    records = [json.loads(line) for line in (tmp_path / "out" / "gsm8k.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["0", "1", "2"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model"] == REPO_ID
    assert all(r["gold"] == str(int(r["id"]) + 1) and r["tokens"] >= 1 for r in records)
    # Nothing was written outside the pre-filled snapshot: no download happened.
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in (tmp_path / "saved").iterdir())
