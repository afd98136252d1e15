"""Load expert/amateur models and their tokenizer; check that a pair shares one vocabulary.

A model argument is a short name of the embedded pair (``coder-1.5b``, see :mod:`lightreasoner.zoo`),
a local model folder, a local ``.gguf`` file (converted once to a safetensors folder), or a
Hugging Face Hub id. Weights load from safetensors only and remote code never runs unless the
caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from .errors import LightReasonerError

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (or None) picks CUDA, then Apple MPS, then CPU."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise LightReasonerError(f"--device: unknown device {device!r}") from None


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 (the paper's precision) where the hardware has it; float16 on a GPU without
    bf16; float32 on a CPU without native bf16, where emulated bf16 decoding was measured 1.65x
    slower than float32 (benchmarks/README.md)."""
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and not cpu_has_native_bf16():
            return torch.float32
        return torch.bfloat16
    if dtype not in DTYPES:
        raise LightReasonerError(f"--dtype: unknown dtype {dtype!r} (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_model_path(spec: str | Path) -> str:
    """Turn a model argument into something ``from_pretrained`` accepts (a folder or a Hub id)."""
    text = str(spec)
    from . import zoo

    if text in zoo.MODELS:
        return str(zoo.ensure_model(text))
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LightReasonerError(f"{path}: model file not found")
        return str(zoo.convert_gguf_cached(path))
    if path.exists():
        if not path.is_dir():
            raise LightReasonerError(f"{path}: not a model folder or .gguf file")
        if not (path / "config.json").is_file():
            raise LightReasonerError(f"{path}: no config.json in this folder, so it is not a model folder")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise LightReasonerError(f"{text}: model path not found (and not a Hub id or a known short name: "
                                 f"{', '.join(zoo.MODELS)})")
    return text


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LightReasonerError(f"{spec}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None
    tokenizer.padding_side = "left"  # generation pads on the left; packed training builds its own batches
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               trust_remote_code: bool = False) -> PreTrainedModel:
    path = resolve_model_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LightReasonerError(f"{spec}: cannot load model: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def model_configs(spec: str | Path, *, trust_remote_code: bool = False) -> SimpleNamespace:
    """A model's ``config`` and ``generation_config`` without its weights: what :func:`stop_token_ids`
    reads, for a backend that runs the model elsewhere (llama.cpp)."""
    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LightReasonerError(f"{spec}: cannot load model config: {str(exc).splitlines()[0]}") from None
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the config's own eos ids count
        generation = None
    return SimpleNamespace(config=config, generation_config=generation)


def real_vocab_size(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> int:
    """Number of leading vocabulary rows that are real tokens.

    Rows past ``len(tokenizer)`` are padding rows of the embedding matrix. GGUF-rebuilt Qwen
    tokenizers also name those rows ``[PAD151665]``...; they are no token either.
    """
    size = len(tokenizer)
    if model is not None:
        size = min(size, model.get_output_embeddings().weight.shape[0])
    while size > 0 and _is_filler(tokenizer.convert_ids_to_tokens(size - 1), size - 1):
        size -= 1
    return size


def _is_filler(token: str | None, index: int) -> bool:
    return token is None or token == f"[PAD{index}]"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """End-of-turn tokens: the configured EOS ids plus Qwen's <|im_end|> and <|endoftext|>."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab)
    return sorted(ids)


def _template_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(tokenizer.added_tokens_decoder.keys())
    return sorted(ids)


def check_same_vocabulary(expert: PreTrainedTokenizerBase, amateur: PreTrainedTokenizerBase,
                          *, expert_name: str = "expert", amateur_name: str = "amateur") -> int:
    """Check that both tokenizers map the shared ids to the same tokens; return the shared size.

    The ids that matter are the shared range (what the contrast is computed over) and every
    special/added token of either tokenizer (what the chat template uses).
    """
    shared = min(real_vocab_size(expert), real_vocab_size(amateur))
    expert_tokens = expert.convert_ids_to_tokens(list(range(shared)))
    amateur_tokens = amateur.convert_ids_to_tokens(list(range(shared)))
    for index, (a, b) in enumerate(zip(expert_tokens, amateur_tokens)):
        if a != b:
            raise LightReasonerError(
                f"tokenizers differ at id {index}: {expert_name} has {a!r}, {amateur_name} has {b!r}; "
                "the contrast needs one shared vocabulary")
    for index in sorted(set(_template_special_ids(expert)) | set(_template_special_ids(amateur))):
        a, b = expert.convert_ids_to_tokens(index), amateur.convert_ids_to_tokens(index)
        if a != b:
            raise LightReasonerError(
                f"tokenizers differ at special id {index}: {expert_name} has {a!r}, {amateur_name} has {b!r}")
    return shared


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the real vocabulary (token -> id) and the special tokens: equal iff ids mean the same."""
    size = real_vocab_size(tokenizer)
    payload = {
        "tokens": tokenizer.convert_ids_to_tokens(list(range(size))),
        "special": {str(i): tokenizer.convert_ids_to_tokens(i) for i in _template_special_ids(tokenizer)},
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str, system_prompt: str | None) -> str:
    """The chat-templated prompt text ending with the assistant's generation prompt."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": question})
    if tokenizer.chat_template is None:
        # Base models without a template: plain question-then-answer text.
        prefix = f"{system_prompt}\n\n" if system_prompt else ""
        return f"{prefix}Question: {question}\nAnswer:"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of an already-templated prompt (the template supplies any BOS/special tokens)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@contextmanager
def only_this_generation_config(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    """Make ``generate`` use ``config`` and nothing of the checkpoint's own generation config.

    transformers fills every field left unset in a passed config from ``model.generation_config``,
    so a checkpoint's ``repetition_penalty`` or ``top_k`` (Qwen2.5-Instruct ships both) would leak
    into what should be plain greedy decoding or plain temperature sampling.
    """
    get_base = getattr(model, "get_base_model", None)  # a peft model generates with its base model
    owner = get_base() if callable(get_base) else model
    saved = owner.generation_config
    owner.generation_config = config
    try:
        yield
    finally:
        owner.generation_config = saved
