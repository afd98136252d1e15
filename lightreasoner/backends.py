"""Generation backends: prompts as token ids in; per prompt its generated ids, why it ended and its seconds out.

Evaluation (greedy) and SFT sampling (seeded temperature sampling) talk to a backend, never to a
generation library directly:

* :class:`HFBackend`: a loaded transformers model, decoded by :func:`lightreasoner.decoding.decode`
  (continuous batching with a KV cache). Runs anywhere torch runs.
* :class:`VLLMBackend`: one vLLM engine (the optional extra), started from the model folder. This
  process loads only the tokenizer and the model's config files, never its weights.
* :class:`lightreasoner.llamacpp.LlamaCppBackend`: llama.cpp (the optional extra) on the model's GGUF
  file, on the CPU: continuous batching like hf, quantized weights.

``generate`` yields outputs in chunks, and the caller stores each chunk durably before asking for
the next, so a crash loses at most one chunk: one answer with hf, one engine call with vLLM. Every
request carries its own token budget, so a cut-off answer can be continued later as a new request
(prompt ids + the answer's ids so far, with what is left of the budget). ``close`` frees the
backend's memory; a backend is also a context manager.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from .errors import LightReasonerError

BACKENDS = ("auto", "hf", "llamacpp", "vllm")
# The vLLM logits processor that masks the padding rows, by the "module:Class" name vLLM loads it from
# (in its engine process), and the key of vLLM's additional_config that tells it the real vocabulary.
PADDING_MASK = "lightreasoner.vllm_processors:MaskPaddingRows"
VOCAB_SIZE_KEY = "lightreasoner_vocab_size"
VLLM_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
# The hf backend looks for a stop string in the text of a sequence's newest tokens, decoded at every step.
STOP_STRING_TOKENS = 16


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int | None = None  # sampling: the seed of this request's own random stream


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Output:
    index: int  # position of the request in the list given to generate
    token_ids: list[int]  # generated ids, the end token included when it ended on one
    finish: str  # "eos" (an end token), "stop" (a stop string) or "length" (its budget)
    seconds: float  # its share of the wall time


class Backend(Protocol):
    tokenizer: Any

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[list[Output]]: ...

    def close(self) -> None: ...


def release_memory() -> None:
    """Return the memory of freed tensors to the device: vLLM measures free GPU memory when its
    engine starts, and memory cached by torch's allocator counts as used."""
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def resolve_backend(backend: str, device: str, *, llamacpp_model: str | None = None) -> str:
    """``auto``: vLLM on a CUDA device when it is installed (the hf loop's cache copies are costly on
    GPUs, docs/EVALUATION.md); on a CPU, llama.cpp when it is installed and ``llamacpp_model`` (given by
    callers that evaluate) is a GGUF model, which llama.cpp runs as it is (benchmarks/README.md);
    else hf, also where llama.cpp cannot decode on this CPU (checked in a child process, once). A device
    index (``cuda:1``) stays with hf, see :func:`check_vllm_device`."""
    if backend != "auto":
        return backend
    from .models import resolve_device

    kind = resolve_device(device).type
    if device in ("auto", "cuda") and kind == "cuda":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if kind == "cpu" and llamacpp_model is not None and is_gguf_model(llamacpp_model) \
            and importlib.util.find_spec("llama_cpp") is not None:
        from .gguf_export import model_gguf

        problem = decoding_problem(str(model_gguf(llamacpp_model, progress=False)))
        if problem is None:
            return "llamacpp"
        print(f"lightreasoner: evaluating with the hf backend: llama.cpp {problem} on this CPU "
              "(docs/EVALUATION.md#the-llamacpp-backend)", file=sys.stderr)
    return "hf"


# One token of a 3-token prompt, in a child process: a build whose kernels this machine cannot run
# crashes the process instead of raising (ggml's AMX matrix product in a VM, docs/EVALUATION.md).
_PROBE = ("import sys\nfrom lightreasoner.llamacpp import LlamaCppModel\nwith LlamaCppModel(sys.argv[1]) as model:\n"
          "    list(model.decode([[0, 1, 2]], slots=1, max_new_tokens=1, stop_ids=[], vocab_size=model.rows))\n")


@functools.cache
def decoding_problem(gguf: str) -> str | None:
    """Why llama.cpp cannot decode the GGUF file ``gguf`` on this machine, or None when it can."""
    return child_problem([sys.executable, "-c", _PROBE, gguf])


def child_problem(command: list[str]) -> str | None:
    """None when ``command`` succeeds; else how it failed: the signal that killed it, or its last line."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"crashed ({signal.Signals(-done.returncode).name}) decoding one token"
    lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
    return f"failed decoding one token: {lines[-1]}"


def is_gguf_model(spec: str) -> bool:
    """A model whose own weights are a GGUF file: an embedded short name or a .gguf path."""
    from . import zoo

    return spec in zoo.MODELS or str(spec).endswith(".gguf")


# --------------------------------------------------------------------------- hf


class HFBackend:
    """Continuous batching of ``slots`` sequences with a loaded model (:func:`lightreasoner.decoding.decode`)."""

    def __init__(self, model: Any, tokenizer: Any, *, slots: int, owns_model: bool = False):
        from .models import real_vocab_size, stop_token_ids

        self.model, self.tokenizer, self.slots, self.owns_model = model, tokenizer, slots, owns_model
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.vocab_size = real_vocab_size(tokenizer, model)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[list[Output]]:
        """Each output as soon as its sequence ends (chunks of one)."""
        from .decoding import decode

        for done in decode(self.model, [r.prompt_ids for r in requests], slots=self.slots,
                           max_new_tokens=[r.max_new_tokens for r in requests], stop_ids=self.stop_ids,
                           vocab_size=self.vocab_size, pad_id=self.tokenizer.pad_token_id,
                           choose=chooser(requests, sampling),
                           stop_text=stop_text_check(self.tokenizer, sampling.stop_strings)):
            yield [Output(done.index, done.token_ids,
                          finish_reason(self.tokenizer, done.token_ids, self.stop_ids, sampling.stop_strings),
                          done.seconds)]

    def close(self) -> None:
        if self.owns_model:
            self.model = None
            release_memory()

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chooser(requests: Sequence[Request], sampling: Sampling) -> Any:
    """The decoding loop's token chooser for ``sampling``: greedy, or each request's own seeded stream."""
    from .decoding import greedy, seeded_sampler

    return greedy if sampling.greedy else seeded_sampler(_seeds(requests), temperature=sampling.temperature,
                                                         top_p=sampling.top_p)


def stop_text_check(tokenizer: Any, stop_strings: Sequence[str]) -> Callable[[list[int]], bool] | None:
    """Whether a sequence's newest tokens' text holds a stop string (None when there are none)."""
    if not stop_strings:
        return None

    def stop_text(ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-STOP_STRING_TOKENS:], skip_special_tokens=True)
        return any(stop in tail for stop in stop_strings)

    return stop_text


def finish_reason(tokenizer: Any, ids: list[int], stop_ids: Sequence[int], stop_strings: Sequence[str]) -> str:
    """Why a sequence the decoding loop returned ended: "eos", "stop" or "length"."""
    if ids[-1] in stop_ids:
        return "eos"
    text = tokenizer.decode(ids, skip_special_tokens=True) if stop_strings else ""
    return "stop" if any(stop in text for stop in stop_strings) else "length"


def _seeds(requests: Sequence[Request]) -> list[int]:
    if any(r.seed is None for r in requests):
        raise ValueError("sampling needs a seed on every request")
    return [int(r.seed) for r in requests]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- vLLM


def check_vllm_device(device: str) -> None:
    """vLLM runs on the GPUs that ``CUDA_VISIBLE_DEVICES`` shows; it has no device argument."""
    if device in ("auto", "cuda"):
        return
    if device.startswith("cuda:"):
        raise LightReasonerError(f"--device {device}: the vllm backend uses the GPUs CUDA_VISIBLE_DEVICES shows; "
                                 f"run with CUDA_VISIBLE_DEVICES={device.split(':', 1)[1]} and --device cuda")
    raise LightReasonerError(f"--device {device}: the vllm backend runs on CUDA GPUs; use --backend hf on {device}")


def vllm_dtype(dtype: str) -> str:
    """Our dtype names (``auto`` resolved as for the hf backend on a GPU, bf16/fp16/fp32 aliases) as vLLM's literals."""
    from .models import resolve_dtype

    return VLLM_DTYPES[resolve_dtype(dtype, torch.device("cuda"))]


def lora_rank_limit(adapter: str | Path) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank (vLLM's default, 16,
    refuses any adapter with a larger ``r``)."""
    from vllm.config.lora import MaxLoRARanks

    path = Path(adapter) / "adapter_config.json"
    try:
        settings = json.loads(path.read_text())
        rank = max([int(settings["r"]), *map(int, (settings.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LightReasonerError(f"{path}: cannot read the adapter's LoRA rank r ({exc})") from None
    allowed = sorted(typing.get_args(MaxLoRARanks))
    fitting = [limit for limit in allowed if limit >= rank]
    if not fitting:
        raise LightReasonerError(f"{path}: LoRA rank {rank} is larger than vLLM supports ({allowed[-1]})")
    return fitting[0]


class VLLMBackend:
    """One vLLM engine for every ``generate`` call until :meth:`close`, which shuts it down.

    ``chunk_size`` requests go to the engine per call; vLLM schedules within a call by memory, and the
    call's outputs are yielded together when it returns. Vocabulary rows past the tokenizer's real
    vocabulary are masked once, by a logits processor of the engine (:mod:`lightreasoner.vllm_processors`),
    not by a token list on every request.
    """

    def __init__(self, model_path: str, tokenizer: Any, *, dtype: str, chunk_size: int, adapter: str | None = None,
                 device: str = "auto", trust_remote_code: bool = False, seed: int = 0):
        from .models import load_model_settings, real_vocab_size, stop_token_ids

        check_vllm_device(device)
        try:
            from vllm import LLM
        except ImportError:
            raise LightReasonerError("--backend vllm: vLLM is not installed (pip install -e '.[vllm]')") from None
        settings = load_model_settings(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer, self.chunk_size = tokenizer, chunk_size
        self.stop_ids = stop_token_ids(tokenizer, settings)
        self.vocab_size = real_vocab_size(tokenizer, rows=settings.config.vocab_size)
        engine: dict[str, Any] = dict(
            model=model_path, tokenizer=model_path, dtype=vllm_dtype(dtype), seed=seed,
            trust_remote_code=trust_remote_code,
            generation_config="vllm",  # the checkpoint's own sampling defaults play no part
            logits_processors=[PADDING_MASK], additional_config={VOCAB_SIZE_KEY: self.vocab_size})
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            engine.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank_limit(adapter))
            self.lora = LoRARequest("adapter", 1, str(adapter))
        release_memory()  # what this process freed before (models of earlier stages) leaves the GPU first
        self.llm: Any = LLM(**engine)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[list[Output]]:
        from vllm import SamplingParams, TokensPrompt

        if self.llm is None:
            raise RuntimeError("the vLLM engine was shut down")
        seeds = [None] * len(requests) if sampling.greedy else _seeds(requests)
        for start in range(0, len(requests), self.chunk_size):
            chunk = requests[start:start + self.chunk_size]
            params = [SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
                                     max_tokens=r.max_new_tokens, stop_token_ids=self.stop_ids,
                                     stop=list(sampling.stop_strings) or None, skip_special_tokens=True,
                                     detokenize=bool(sampling.stop_strings))  # we decode ids ourselves
                      for r, seed in zip(chunk, seeds[start:start + self.chunk_size])]
            began = time.perf_counter()
            results = self.llm.generate([TokensPrompt(prompt_token_ids=r.prompt_ids) for r in chunk], params,
                                        use_tqdm=False, lora_request=self.lora)
            share = (time.perf_counter() - began) / len(chunk)
            yield [Output(start + i, list(result.outputs[0].token_ids), _vllm_finish(result.outputs[0]), share)
                   for i, result in enumerate(results)]

    def close(self) -> None:
        """Shut the engine down (its worker process and the GPU memory it holds) and drop it."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        release_memory()

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _vllm_finish(choice: Any) -> str:
    """vLLM's finish_reason "stop" covers end tokens and stop strings; its stop_reason is the stop
    string for the latter, a token id or None (the EOS) for the former."""
    if choice.finish_reason == "length":
        return "length"
    if choice.finish_reason == "stop":
        return "stop" if isinstance(choice.stop_reason, str) else "eos"
    raise LightReasonerError(f"vLLM ended a request for an unexpected reason: {choice.finish_reason!r}")
