"""Load expert/amateur models and their tokenizer; check that a pair shares one vocabulary.

A model argument is a short name of the embedded pair (``coder-1.5b``, see :mod:`lightreasoner.zoo`),
a local model folder, a local ``.gguf`` file (converted once to a safetensors folder), or a
Hugging Face Hub id. Weights load from safetensors only and remote code never runs unless the
caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from .errors import LightReasonerError
from .records import read_json

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
        chosen = torch.device(device)
    except RuntimeError:
        raise LightReasonerError(f"--device: unknown device {device!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        raise LightReasonerError(f"--device {device}: CUDA is not available ({why}); use --device cpu or auto")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise LightReasonerError(f"--device {device}: there are {torch.cuda.device_count()} GPUs here")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise LightReasonerError(f"--device {device}: Apple MPS is not available here; use --device cpu or auto")
    return chosen


def cpu_has_native_bf16(flags: str | None = None, capability: str | None = None) -> bool:
    """Whether torch computes bf16 in hardware on this CPU: it has AVX512-BF16 or AMX (``flags``: those of
    /proc/cpuinfo) and torch's kernels run at AVX-512 (``capability``: torch's own level, which
    ``ATEN_CPU_CAPABILITY=avx2`` caps). Elsewhere bf16 is emulated."""
    if (capability or torch.backends.cpu.get_cpu_capability()) != "AVX512":
        return False
    if flags is None:
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


DTYPE_HELP = "auto (bf16 where the hardware computes it, else fp16 on GPU / fp32 on CPU), bfloat16, float16, float32"


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


def model_location(spec: str | Path) -> str:
    """What files record for a model argument: an existing local folder or file as an absolute path (so
    that later commands find it from any folder), a short name or Hub id as it is."""
    from . import zoo

    text = str(spec)
    path = Path(text).expanduser()
    if not text or text in zoo.MODELS or not path.exists():
        return text
    return str(path.resolve())


def same_model(a: Any, b: Any) -> bool:
    """Whether two recorded model arguments name the same model (``expert`` and ``/abs/expert`` do)."""
    return a == b or (isinstance(a, str) and isinstance(b, str) and model_location(a) == model_location(b))


# Files a tokenizer is saved in; a folder with none of them has no tokenizer (transformers would
# then build an empty one rather than fail).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def _remote_tokenizer_class(path: str) -> str | None:
    """The tokenizer class a model folder or Hub repo names in an ``auto_map`` (Python code shipped
    with the model), if it names one."""
    from transformers.utils import cached_file

    for name in ("tokenizer_config.json", "config.json"):
        try:
            found = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)
            settings = json.loads(Path(found).read_text(encoding="utf-8")) if found else {}
        except (OSError, ValueError):
            continue
        entry = settings.get("auto_map", {}).get("AutoTokenizer") if isinstance(settings, dict) else None
        if entry:
            classes = [c for c in (entry if isinstance(entry, list) else [entry]) if c]
            return f"{', '.join(classes)} in {name}"
    return None


def tokenizer_from(path: str, *, name: str | Path | None = None, trust_remote_code: bool = False
                   ) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path`` (a folder or Hub id; ``name`` is what the user called it), set
    up for left-padded generation. Code shipped with it runs only with ``trust_remote_code``."""
    name = name or path
    folder = Path(path)
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise LightReasonerError(f"{name}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES)})")
    remote = None if trust_remote_code else _remote_tokenizer_class(path)
    if remote:
        raise LightReasonerError(f"{name}: its tokenizer needs remote code ({remote}); pass --trust-remote-code "
                                 "to run that code, if you trust where the model comes from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise LightReasonerError(f"{name}: cannot load tokenizer: {_first_line(exc)}") from None
    tokenizer.padding_side = "left"  # generation pads on the left; packed training builds its own batches
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return tokenizer_from(resolve_model_path(spec), name=spec, trust_remote_code=trust_remote_code)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _damaged_weights(path: str) -> str:
    """The first safetensors file of a model folder that cannot be opened (else the folder)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError):
            return str(file)
    return path


def load_model_settings(spec: str | Path, *, trust_remote_code: bool = False) -> SimpleNamespace:
    """A model's ``config`` and ``generation_config`` without its weights, shaped like a loaded model
    for :func:`stop_token_ids` and :func:`real_vocab_size`: for engines that load the weights themselves."""
    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LightReasonerError(f"{spec}: cannot load model config: {str(exc).splitlines()[0]}") from None
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives one from the config, as here
        generation = GenerationConfig.from_model_config(config)
    return SimpleNamespace(config=config, generation_config=generation)


def load_model(spec: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               trust_remote_code: bool = False) -> PreTrainedModel:
    from safetensors import SafetensorError

    path = resolve_model_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except SafetensorError as exc:
        raise LightReasonerError(f"{_damaged_weights(path)}: cannot read the model's weights: {exc}") from None
    except (OSError, ValueError) as exc:
        raise LightReasonerError(f"{spec}: cannot load model: {_first_line(exc)}") from None
    return model.to(device).eval()


def check_adapter(folder: str | Path) -> Path:
    """Refuse, naming the file, a folder that is not a readable peft adapter (before any model loads)."""
    from safetensors import SafetensorError, safe_open

    from .records import read_json

    folder = Path(folder)
    settings, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not settings.is_file():
        raise LightReasonerError(f"{folder}: no adapter_config.json here, so it is not a peft adapter folder")
    if not isinstance(read_json(settings), dict):
        raise LightReasonerError(f"{settings}: expected a JSON object of adapter settings")
    if not weights.is_file():
        raise LightReasonerError(f"{folder}: no adapter_model.safetensors (the adapter's weights) here")
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise LightReasonerError(f"{weights}: not a readable safetensors file ({exc})") from None
    return folder


def load_adapter(model: PreTrainedModel, folder: str | Path) -> PreTrainedModel:
    """``model`` with the peft adapter in ``folder`` loaded on it; a bad adapter is one line naming it."""
    from peft import PeftModel
    from safetensors import SafetensorError

    check_adapter(folder)
    try:
        return PeftModel.from_pretrained(model, str(folder), use_safetensors=True)
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise LightReasonerError(f"{folder}: cannot load this adapter on {model.name_or_path}: "
                                 f"{_first_line(exc)}") from None


def context_length(spec: str | Path | PreTrainedModel, *, trust_remote_code: bool = False) -> int | None:
    """The longest sequence a model's position embeddings cover (prompt and new tokens), if its config says."""
    if isinstance(spec, PreTrainedModel):
        config = spec.config
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolve_model_path(spec), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise LightReasonerError(f"{spec}: cannot read the model's config: {_first_line(exc)}") from None
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def check_prompts_fit(lengths: dict[str, int], max_new_tokens: int, context: int | None, *, model: str,
                      source: str) -> None:
    """Refuse, before any model work, questions whose prompt (``lengths``: tokens by question id) plus
    ``max_new_tokens`` does not fit the model's context, naming the first."""
    if context is None:
        return
    too_long = [(qid, n) for qid, n in lengths.items() if n + max_new_tokens > context]
    if too_long:
        qid, n = too_long[0]
        more = f" (and {len(too_long) - 1} more questions)" if len(too_long) > 1 else ""
        raise LightReasonerError(
            f"{source}: question {qid!r}: its prompt of {n:,} tokens plus --max-new-tokens {max_new_tokens} is past "
            f"the {context:,}-token context of {model}{more}; shorten or leave out the question, or lower "
            "--max-new-tokens")


def real_vocab_size(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None, *,
                    rows: int | None = None) -> int:
    """Number of leading vocabulary rows that are real tokens.

    Rows past ``len(tokenizer)`` are padding rows of the embedding matrix. GGUF-rebuilt Qwen
    tokenizers also name those rows ``[PAD151665]``...; they are no token either. The model's row
    count comes from ``model``, or from ``rows`` (its config's ``vocab_size``) when another engine
    holds the weights.
    """
    size = len(tokenizer)
    if model is not None:
        rows = model.get_output_embeddings().weight.shape[0]
    if rows is not None:
        size = min(size, rows)
    while size > 0 and _is_filler(tokenizer.convert_ids_to_tokens(size - 1), size - 1):
        size -= 1
    return size


def _is_filler(token: str | None, index: int) -> bool:
    return token is None or token == f"[PAD{index}]"


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | SimpleNamespace | None = None
                   ) -> list[int]:
    """End-of-turn tokens: the configured EOS ids (of a loaded model or :func:`load_model_settings`)
    plus Qwen's <|im_end|> and <|endoftext|>."""
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


def adapter_fingerprint(adapter: str | Path, *, as_written: bool = False) -> str:
    """sha256 of a peft adapter's weights and its settings (paths left out): equal iff it is the same adapter.
    ``as_written`` keeps target_modules/exclude_modules in the file's order: the fingerprint folders record
    that were evaluated before the lists were sorted (one adapter then hashed two ways, by process)."""
    folder = Path(adapter)
    weights = folder / "adapter_model.safetensors"
    if not (folder / "adapter_config.json").is_file() or not weights.is_file():
        raise LightReasonerError(f"{folder}: no adapter_config.json and adapter_model.safetensors here, "
                                 "so it is not a peft adapter folder")
    settings = {k: v for k, v in read_json(folder / "adapter_config.json").items()
                if k not in ("base_model_name_or_path", "revision")}
    for key in ("target_modules", "exclude_modules"):  # peft writes these sets in the process's hash order
        if isinstance(settings.get(key), list) and not as_written:
            settings[key] = sorted(settings[key])
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
