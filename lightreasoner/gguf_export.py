"""Models and LoRA adapters as GGUF files for llama.cpp (the ``llamacpp`` evaluation backend).

* The embedded pair's models are GGUF files already (:mod:`lightreasoner.zoo`): used as they are,
  as is any local ``.gguf`` file and a folder converted from one by the zoo (its marker names the source).
* Any other Qwen2 model (a local folder or a Hub id) is written once to GGUF with the ``gguf``
  package: matrices in Q8_0 (8-bit blocks: the smallest type the package quantizes, near-lossless),
  norms and biases in float32, and the tokenizer's vocabulary so the file is complete (the backend
  feeds llama.cpp the token ids of the Hugging Face tokenizer and never tokenizes with the file's).
  Other architectures are refused: llama.cpp's ``convert_hf_to_gguf.py`` converts them, and its
  output can be passed as a ``.gguf`` model.
* A peft LoRA adapter is written once to llama.cpp's adapter format: ``general.type = adapter``,
  ``adapter.type = lora``, ``adapter.lora.alpha`` and, per adapted matrix ``W`` of the base GGUF,
  the tensors ``<W>.lora_a`` (peft's ``lora_A``, [r, in]) and ``<W>.lora_b`` (``lora_B``, [out, r])
  in float32. llama.cpp adds ``alpha / r * B (A x)`` to ``W x``: peft's scaling; rsLoRA's
  ``alpha / sqrt(r)`` is written as the alpha that gives it.

Files are cached under ``<cache>/llamacpp/`` by the sha256 of what they are made from (the model
folder's files, or the adapter's fingerprint), so an unchanged model or adapter is converted once;
each is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import LightReasonerError

# Bump when the files written here change, so that cached conversions are made again.
FORMAT_VERSION = 1
ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2"}  # Hugging Face class -> llama.cpp architecture
# Files of a model folder that decide its GGUF (weights, shapes, vocabulary, special tokens).
SOURCE_PATTERNS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "*.safetensors")
Q8_0_BLOCK = 32


def cache_folder() -> Path:
    from .zoo import cache_dir

    return cache_dir() / "llamacpp"


# ---------------------------------------------------------------------------------- models


def model_gguf(spec: str | Path, *, progress: bool = True) -> Path:
    """The GGUF file llama.cpp runs for a model argument (short name, .gguf file, folder or Hub id),
    converting a Qwen2 folder once."""
    from . import zoo

    text = str(spec)
    if text in zoo.MODELS:
        return zoo.fetch(text, progress=progress)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LightReasonerError(f"{path}: model file not found")
        return path
    folder = path if path.is_dir() else _hub_folder(text)
    source = _zoo_source(folder)
    if source is not None:
        return source
    out = cache_folder() / f"{folder.name}-{_folder_sha256(folder)[:12]}-q8_0.gguf"
    with zoo._lock(f"gguf-{out.name}"):
        if not out.is_file():
            print(f"writing {folder} as GGUF for llama.cpp (once) ...", flush=True)
            write_model_gguf(folder, out)
    return out


def _hub_folder(repo_id: str) -> Path:
    """The local snapshot of a Hub model's config, tokenizer and safetensors files."""
    from .models import resolve_model_path

    resolved = Path(resolve_model_path(repo_id))  # refuses paths that do not exist and malformed ids
    if resolved.is_dir():
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(SOURCE_PATTERNS)))
    except Exception as exc:  # offline, gated, ...: one line
        raise LightReasonerError(f"{repo_id}: cannot download it from the Hub: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _zoo_source(folder: Path) -> Path | None:
    """The cached GGUF a zoo-converted folder was made from, if it is still there unchanged."""
    from . import zoo

    marker = folder / zoo.CONVERTED_MARKER
    if not marker.is_file():
        return None
    made_from = json.loads(marker.read_text())
    source = zoo.cache_dir() / "gguf" / made_from.get("source", "")
    if source.is_file() and zoo.cached_sha256(source, progress=False) == made_from.get("sha256"):
        return source
    return None


def _folder_sha256(folder: Path) -> str:
    from .zoo import cached_sha256

    files = sorted({f for pattern in SOURCE_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    if not any(f.suffix == ".safetensors" for f in files):
        raise LightReasonerError(f"{folder}: no .safetensors weights here to write as GGUF")
    digests = {f.name: cached_sha256(f, progress=False) for f in files}
    return hashlib.sha256(json.dumps([FORMAT_VERSION, digests], sort_keys=True).encode()).hexdigest()


def check_architecture(config: Any, where: str) -> str:
    """llama.cpp's name of a supported architecture, or a one-line refusal."""
    names = list(getattr(config, "architectures", None) or [])
    arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
    if arch is None:
        raise LightReasonerError(
            f"{where}: the llamacpp backend writes only {', '.join(ARCHITECTURES)} models as GGUF, not "
            f"{', '.join(names) or 'an unnamed architecture'}; convert it with llama.cpp's convert_hf_to_gguf.py "
            "and pass the .gguf file as the model, or use --backend hf")
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise LightReasonerError(f"{where}: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not "
                                 "written to GGUF here; use --backend hf")
    if getattr(config, "use_sliding_window", False):
        raise LightReasonerError(f"{where}: sliding-window attention is not written to GGUF here; use --backend hf")
    return arch


def write_model_gguf(folder: Path, out: Path) -> Path:
    """Write the Qwen2 model in ``folder`` as one GGUF file ``out`` (atomically)."""
    import gguf
    import torch

    from .models import load_model, load_tokenizer

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    arch = check_architecture(config, str(folder))
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=torch.float32)
    rows = model.get_input_embeddings().weight.shape[0]
    with _gguf_file(out, arch) as writer:
        writer.add_name(folder.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head_dim != config.hidden_size // config.num_attention_heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        _add_vocabulary(writer, folder, tokenizer, rows)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp reads the output matrix from token_embd when output is missing
            if name.endswith("rotary_emb.inv_freq"):
                continue  # computed from rope.freq_base
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise LightReasonerError(f"{folder}: no GGUF name for the tensor {name}")
            _add_tensor(writer, target, tensor.numpy())
    return out


@contextmanager
def _gguf_file(out: Path, arch: str) -> Iterator[Any]:
    """A ``gguf.GGUFWriter`` for ``out``: written to a temporary file beside it and moved into place
    only once complete, so a kill never leaves a torn file under the cached name."""
    import gguf

    work = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(work, arch)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(work, out)
    finally:
        work.unlink(missing_ok=True)


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _add_tensor(writer: Any, name: str, data: Any) -> None:
    """Matrices whose rows fill whole Q8_0 blocks in Q8_0, everything else in float32."""
    import gguf

    if data.ndim == 2 and data.shape[1] % Q8_0_BLOCK == 0:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype("float32"))


def _add_vocabulary(writer: Any, folder: Path, tokenizer: Any, rows: int) -> None:
    """The byte-level BPE vocabulary in llama.cpp's "gpt2" layout, one token per embedding row
    (rows past the tokenizer are ``[PAD<id>]``, as llama.cpp's converter names them)."""
    import gguf

    vocab = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(rows):
        if index not in vocab:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(vocab[index])
            types.append(gguf.TokenType.NORMAL if index not in added else
                         gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=rows)
    if not special.merges:
        raise LightReasonerError(f"{folder}: no BPE merges in the tokenizer files; only byte-level BPE "
                                 "tokenizers (Qwen2's) are written to GGUF here")
    special.add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------------------------- adapters


def adapter_gguf(adapter: str | Path, base: Path, *, out: Path | None = None) -> Path:
    """The llama.cpp LoRA adapter file of a peft adapter folder, for the GGUF model ``base``: cached by
    the adapter's content, or written to ``out``."""
    from . import zoo
    from .models import adapter_fingerprint

    metadata = _gguf_fields(base)
    arch = metadata["general.architecture"]

    def write(path: Path) -> Path:
        return write_adapter_gguf(Path(adapter), path, arch, int(metadata[f"{arch}.block_count"]),
                                  _gguf_tensor_shapes(base))

    if out is not None:
        return write(out)
    key = hashlib.sha256(f"{FORMAT_VERSION}:{arch}:{adapter_fingerprint(adapter)}".encode()).hexdigest()
    cached = cache_folder() / f"lora-{key[:16]}.gguf"
    with zoo._lock(f"gguf-{cached.name}"):
        if not cached.is_file():
            write(cached)
    return cached


def write_adapter_gguf(adapter: Path, out: Path, arch: str, blocks: int,
                       base_shapes: dict[str, tuple[int, ...]]) -> Path:
    """Write the peft LoRA adapter in ``adapter`` as a llama.cpp LoRA adapter ``out`` (atomically),
    checking every matrix against the base model's tensor shapes (ggml order: [in, out])."""
    import gguf
    from safetensors.numpy import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text())
    alpha = _llamacpp_alpha(settings, adapter)
    names = gguf.get_tensor_name_map(_arch_enum(arch), blocks)
    pairs: dict[str, dict[str, Any]] = {}
    for name, array in load_file(str(adapter / "adapter_model.safetensors")).items():
        module, part = _lora_part(name, adapter)
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None or target not in base_shapes:
            raise LightReasonerError(f"{adapter}: the adapter's module {module} has no matrix in the base GGUF")
        pairs.setdefault(target, {})[part] = array.astype("float32")
    with _gguf_file(out, arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for target, parts in sorted(pairs.items()):
            if set(parts) != {"a", "b"}:
                raise LightReasonerError(f"{adapter}: {target} has lora_{'A' if 'a' not in parts else 'B'} missing")
            a, b = parts["a"], parts["b"]  # [r, in], [out, r]
            if (a.shape[1], b.shape[0]) != base_shapes[target] or a.shape[0] != b.shape[1]:
                raise LightReasonerError(f"{adapter}: {target} is [{b.shape[0]} x {a.shape[1]}] (rank {a.shape[0]}) "
                                         f"in the adapter, {list(reversed(base_shapes[target]))} in the base model: "
                                         "not an adapter of this model")
            writer.add_tensor(f"{target}.lora_a", a)
            writer.add_tensor(f"{target}.lora_b", b)
    return out


def _llamacpp_alpha(settings: dict[str, Any], adapter: Path) -> float:
    """The ``adapter.lora.alpha`` that makes llama.cpp's ``alpha / r`` equal peft's scaling, or a refusal
    of what one alpha per file cannot express."""
    if settings.get("peft_type", "LORA") != "LORA":
        raise LightReasonerError(f"{adapter}: a {settings.get('peft_type')} adapter, not LoRA")
    for key, what in (("use_dora", "DoRA"), ("alpha_pattern", "per-module alpha"),
                      ("modules_to_save", "fully trained modules"), ("lora_bias", "LoRA biases"),
                      ("fan_in_fan_out", "fan-in/fan-out weights")):
        if settings.get(key):
            raise LightReasonerError(f"{adapter}: {what} ({key}) cannot be written as a llama.cpp LoRA adapter; "
                                     "use --backend hf")
    alpha, rank = float(settings["lora_alpha"]), int(settings["r"])
    if settings.get("use_rslora"):
        if settings.get("rank_pattern"):
            raise LightReasonerError(f"{adapter}: rsLoRA with per-module ranks cannot be written as a llama.cpp "
                                     "LoRA adapter; use --backend hf")
        return alpha * math.sqrt(rank)  # (alpha sqrt(r)) / r = alpha / sqrt(r)
    return alpha


def _lora_part(name: str, adapter: Path) -> tuple[str, str]:
    """``base_model.model.<module>.lora_A.weight`` -> (``<module>``, ``a``)."""
    for suffix, part in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
        if name.endswith(suffix):
            return name.removeprefix("base_model.model.").removesuffix(suffix), part
    raise LightReasonerError(f"{adapter}: tensor {name} is not a LoRA A or B matrix; only plain LoRA adapters "
                             "are written for llama.cpp")


def _arch_enum(arch: str) -> Any:
    import gguf

    for enum, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return enum
    raise LightReasonerError(f"llama.cpp architecture {arch!r} is unknown to the gguf package")


def _gguf_fields(path: Path) -> dict[str, Any]:
    """The string and number metadata of a GGUF file (arrays left out)."""
    import gguf

    reader = gguf.GGUFReader(path)
    values = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            values[name] = field.contents()
    return values


def _gguf_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import gguf

    return {t.name: tuple(int(n) for n in t.shape) for t in gguf.GGUFReader(path).tensors}

