"""A GGUF file converted once into a plain safetensors model folder that ``from_pretrained`` loads in
seconds (the embedded pair, :mod:`lightreasoner.zoo`, and any local ``.gguf`` model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import LightReasonerError
from .records import write_json_atomic

CONVERTED_MARKER = "lightreasoner.json"  # written last into a converted folder


def convert_gguf(gguf: Path, out: Path, *, sha256: str, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file (whose SHA-256 is ``sha256``) into a safetensors model folder ``out`` (written
    elsewhere, then renamed; :data:`CONVERTED_MARKER`, written last, records what it was made from).

    transformers dequantizes a GGUF on load but keeps a quantizer that refuses training and
    saving; rebuilding the model from its config (without ``quantization_config``) and the
    dequantized state dict gives an ordinary model. Weights are stored in bfloat16: the source
    is 4/6-bit, bf16 is what runs by default, and it halves disk and load time (see docs/MODELS.md).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    gguf = Path(gguf).absolute()  # not resolve(): a GGUF linked from the Hugging Face cache keeps its name
    work = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # Dequantize in float32, then round once to the storage dtype.
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32, **_dequantize_option(gguf))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LightReasonerError(f"{gguf}: cannot load GGUF: {str(exc).splitlines()[0]}") from None
        state = loaded.state_dict()
        config_dict = loaded.config.to_dict()
        del loaded
        for key in list(state):  # one tensor at a time, so float32 and bf16 copies never coexist
            state[key] = state[key].to(torch_dtype)
        config_dict.pop("quantization_config", None)
        config_dict["dtype"] = dtype
        model_type = config_dict.pop("model_type")
        config = AutoConfig.for_model(model_type, **config_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.tie_weights()
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise LightReasonerError(f"{gguf}: converted weights do not fit the model "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        vocab = tokenizer.get_vocab()
        stops = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab.get("<|endoftext|>")
        # Greedy by default; Qwen chat turns end on <|im_end|>, raw text on <|endoftext|>.
        model.generation_config = GenerationConfig(do_sample=False, eos_token_id=stops or config.eos_token_id,
                                                   pad_token_id=pad, bos_token_id=config.bos_token_id)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        write_json_atomic(work / CONVERTED_MARKER, {"source": gguf.name, "sha256": sha256, "dtype": dtype})
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _dequantize_option(gguf: Path) -> dict:
    """transformers >= 5 can keep GGUF blocks packed; ask for a plain dense model (older ones always are)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=str(gguf), dequantize=True)}
