"""Writing models and LoRA adapters as GGUF for llama.cpp, read back with the gguf package's reader
(no llama.cpp needed here; tests/test_llamacpp.py runs the files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from lightreasoner import gguf_export, zoo
from lightreasoner.errors import LightReasonerError
from tiny import VOCAB_ROWS, make_model, make_tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(zoo.CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_model(5, layers=2).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def save_lora(model_dir: Path, out: Path, **settings) -> Path:
    """A LoRA adapter on the tiny model's q/v projections with random, non-zero A and B."""
    from lightreasoner.models import load_model

    model = load_model(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **settings)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(11)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.15)
    peft_model.save_pretrained(out)
    return out


def fields(path: Path) -> dict:
    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}


def tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as float32 in numpy's (row-major) shape."""
    out = {}
    for tensor in gguf.GGUFReader(path).tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = np.asarray(data, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
    return out


def test_model_gguf_holds_the_weights_settings_and_vocabulary(tiny_dir, cache):
    path = gguf_export.model_gguf(tiny_dir)
    meta = fields(path)
    model = make_model(5, layers=2)
    config = model.config
    assert meta["general.architecture"] == "qwen2"
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert (meta["qwen2.block_count"], meta["qwen2.embedding_length"], meta["qwen2.feed_forward_length"],
            meta["qwen2.attention.head_count"], meta["qwen2.attention.head_count_kv"]) == (
        2, config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads)
    assert meta["qwen2.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])
    assert meta["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    tokenizer = make_tokenizer()
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB_ROWS  # one token per embedding row
    assert tokens[:len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert tokens[len(tokenizer):] == [f"[PAD{i}]" for i in range(len(tokenizer), VOCAB_ROWS)]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.token_type"][im_end] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.eos_token_id"] == im_end
    assert meta["tokenizer.ggml.merges"]

    # Every weight, under llama.cpp's name; matrices within Q8_0's rounding: half a step d = max|block| / 127,
    # plus up to 127 steps times d's own rounding to float16 (2^-11 relative).
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    written = tensors(path)
    state = model.state_dict()
    assert set(written) == {names.get_name(n, try_suffixes=(".weight", ".bias")) for n in state}
    for name, weight in state.items():
        target = written[names.get_name(name, try_suffixes=(".weight", ".bias"))]
        weight = weight.numpy()
        if weight.ndim == 1:
            assert np.array_equal(target, weight)
        else:
            blocks = np.abs(weight.reshape(weight.shape[0], -1, 32)).max(-1, keepdims=True)
            step = np.repeat(blocks / 127, 32, axis=-1).reshape(weight.shape)
            assert np.all(np.abs(target - weight) <= step * (0.5 + 127 / 2048) + 1e-7), name


def test_model_gguf_is_written_once_and_again_when_the_weights_change(tiny_dir, cache, tmp_path, monkeypatch):
    calls = []
    write = gguf_export.write_model_gguf
    monkeypatch.setattr(gguf_export, "write_model_gguf", lambda folder, out: calls.append(out) or write(folder, out))
    first = gguf_export.model_gguf(tiny_dir)
    assert gguf_export.model_gguf(tiny_dir) == first and len(calls) == 1
    other = tmp_path / "model"
    make_model(6, layers=2).save_pretrained(other)  # same name, other weights
    make_tokenizer().save_pretrained(other)
    assert gguf_export.model_gguf(other) != first and len(calls) == 2
    assert [p.name for p in (cache / "llamacpp").iterdir() if p.name.startswith(".tmp")] == []


def test_gguf_and_zoo_models_are_used_as_they_are(tmp_path, cache, monkeypatch):
    file = tmp_path / "any.gguf"
    file.write_bytes(b"GGUF")
    assert gguf_export.model_gguf(file) == file
    with pytest.raises(LightReasonerError, match="model file not found"):
        gguf_export.model_gguf(tmp_path / "missing.gguf")
    monkeypatch.setattr(zoo, "fetch", lambda name, progress=True: tmp_path / f"{name}.gguf")
    assert gguf_export.model_gguf("coder-1.5b") == tmp_path / "coder-1.5b.gguf"
    # A folder the zoo converted from a cached GGUF: its source file, not a second conversion.
    source = cache / "gguf" / "tiny-q.gguf"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"GGUF source bytes")
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / zoo.CONVERTED_MARKER).write_text(json.dumps({"source": source.name,
                                                           "sha256": zoo.file_sha256(source)}))
    assert gguf_export.model_gguf(folder) == source


def test_other_architectures_are_refused_in_one_line(tmp_path, cache):
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB_ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    with pytest.raises(LightReasonerError, match=r"only Qwen2ForCausalLM models .* not LlamaForCausalLM") as error:
        gguf_export.model_gguf(folder)
    assert "\n" not in str(error.value)
    assert not (cache / "llamacpp").exists() or not any((cache / "llamacpp").glob("*.gguf"))


def test_adapter_gguf_holds_peft_matrices_under_llamacpp_names(tiny_dir, cache, tmp_path):
    adapter = save_lora(tiny_dir, tmp_path / "adapter")
    base = gguf_export.model_gguf(tiny_dir)
    path = gguf_export.adapter_gguf(adapter, base)
    meta = fields(path)
    assert (meta["general.type"], meta["adapter.type"], meta["general.architecture"]) == ("adapter", "lora", "qwen2")
    assert meta["adapter.lora.alpha"] == 8.0
    from safetensors.numpy import load_file

    peft_tensors = load_file(str(adapter / "adapter_model.safetensors"))
    written = tensors(path)
    assert len(written) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for layer in range(2):
        for module, target in (("q_proj", "attn_q"), ("v_proj", "attn_v")):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a, b = peft_tensors[f"{prefix}.lora_A.weight"], peft_tensors[f"{prefix}.lora_B.weight"]
            assert np.array_equal(written[f"blk.{layer}.{target}.weight.lora_a"], a)  # [r, in]
            assert np.array_equal(written[f"blk.{layer}.{target}.weight.lora_b"], b)  # [out, r]
            assert np.abs(b).max() > 0
    assert gguf_export.adapter_gguf(adapter, base) == path  # cached by content


def test_rslora_scaling_becomes_an_equivalent_alpha(tiny_dir, cache, tmp_path):
    adapter = save_lora(tiny_dir, tmp_path / "adapter", use_rslora=True)
    path = gguf_export.adapter_gguf(adapter, gguf_export.model_gguf(tiny_dir))
    alpha = fields(path)["adapter.lora.alpha"]
    assert alpha / 4 == pytest.approx(8 / math.sqrt(4))  # llama.cpp's alpha / r == peft's alpha / sqrt(r)


def test_adapters_llamacpp_cannot_express_are_refused(tiny_dir, cache, tmp_path):
    base = gguf_export.model_gguf(tiny_dir)
    dora = save_lora(tiny_dir, tmp_path / "dora", use_dora=True)
    with pytest.raises(LightReasonerError, match="DoRA"):
        gguf_export.adapter_gguf(dora, base)
    other = tmp_path / "wider"  # an adapter of a model with another hidden size
    model = make_model(5, layers=2, hidden=64)
    model.save_pretrained(other)
    make_tokenizer().save_pretrained(other)
    wrong = save_lora(other, tmp_path / "wrong")
    with pytest.raises(LightReasonerError, match="not an adapter of this model"):
        gguf_export.adapter_gguf(wrong, base)
    assert not any(p.name.startswith("lora-") for p in (cache / "llamacpp").iterdir())
