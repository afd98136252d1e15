"""The ``llamacpp`` backend: many sequences decoded at once by llama.cpp on a GGUF file (CPU speed).

:class:`LlamaCppBackend` is a backend of :mod:`lightreasoner.backends` (requests in, outputs out);
:class:`LlamaCppModel` is the engine under it. llama-cpp-python (the optional extra
``pip install -e ".[test,llamacpp]"``, compiled for the installing CPU) is used through its
low-level API, as llama.cpp's own ``batched`` and ``parallel`` examples do: one context with a KV
cache stream per sequence (``n_seq_max`` = the batch width); each step one ``llama_decode`` call
with the last token of every running sequence, then one call per sequence admitted at that moment
with its whole prompt (logits for its last token only), each token tagged with its sequence id and
position. A sequence that ends frees its cache cells and the next prompt takes its sequence id:
continuous batching, as :mod:`lightreasoner.decoding` does for a torch model.

What is fed and chosen is the same as there: token ids of the Hugging Face tokenizer (llama.cpp
never tokenizes), the next token picked by a :data:`lightreasoner.decoding.Chooser` (greedy by
default; seeded per-prompt sampling for SFT) from the raw logits of the first ``vocab_size`` rows
only, so padding rows are never generated, and the same end conditions. What differs is the
engine: quantized weights (the GGUF's own), activations quantized on the fly for the matrix
products, and llama.cpp's kernels, so near-ties can resolve differently than in torch
(benchmarks/README.md measures how often answers agree).
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .backends import Output, Request, Sampling, chooser, decoding_problem, finish_reason, stop_text_check
from .decoding import Chooser, Finished, greedy
from .errors import LightReasonerError

INSTALL_HINT = 'pip install -e ".[test,llamacpp]" (builds llama.cpp for this CPU; docs/EVALUATION.md)'
CONTEXT_STEP = 256  # llama.cpp pads each sequence's cache to a multiple of this


# ggml's log levels (ggml.h of the llama.cpp llama-cpp-python 0.3.36 builds). That package's own log
# callback maps them by an older numbering: it shows every warning as an error and hides the errors.
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_log_state = {"error": False}  # whether the last message was an error (a CONT line continues it)


def llama_log(level: int, text: bytes) -> None:
    """llama.cpp's log line: printed if it is (or continues) an error; the rest (every tensor it
    loads, each adapter matrix it places) is not the user's concern."""
    if level != GGML_LOG_LEVEL_CONT:
        _log_state["error"] = level == GGML_LOG_LEVEL_ERROR
    if _log_state["error"]:
        print((text or b"").decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)


_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, with llama.cpp's own log kept to errors."""
    global _log_callback
    try:
        import llama_cpp
    except ImportError:
        raise LightReasonerError(f"--backend llamacpp: llama-cpp-python is not installed ({INSTALL_HINT})") from None
    if _log_callback is None:
        _log_callback = llama_cpp.llama_log_callback(lambda level, text, _: llama_log(level, text))
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


def available() -> bool:
    """Whether llama-cpp-python can be imported here."""
    try:
        import_llama_cpp()
    except (LightReasonerError, OSError, RuntimeError):  # not installed, or its shared library fails to load
        return False
    return True


@dataclass
class _Sequence:
    index: int  # position of the prompt in the list given to decode()
    seq_id: int
    limit: int  # max new tokens
    position: int = 0  # position of the next token fed
    token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    output: int = -1  # row of the current llama_batch whose logits choose its next token


class LlamaCppModel:
    """A GGUF model (and optionally one LoRA adapter in llama.cpp's format) loaded by llama.cpp."""

    def __init__(self, gguf: str | Path, *, adapter: str | Path | None = None, threads: int | None = None):
        self.lib = import_llama_cpp()
        self.lib.llama_backend_init()
        self.path = Path(gguf)
        self.model = self.lib.llama_model_load_from_file(str(self.path).encode(), self.lib.llama_model_default_params())
        if not self.model:
            raise LightReasonerError(f"{self.path}: llama.cpp cannot load this GGUF file (its log above says why)")
        self.rows = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.model))
        self.adapter = None
        if adapter is not None:
            self.adapter = self.lib.llama_adapter_lora_init(self.model, str(adapter).encode())
            if not self.adapter:
                self.close()
                raise LightReasonerError(f"{adapter}: llama.cpp cannot apply this LoRA adapter to {self.path.name} "
                                         "(its log above says why)")
        # The threads torch uses (one per physical core by default), so both backends run alike.
        self.threads = threads or torch.get_num_threads()

    def close(self) -> None:
        if self.model:
            self.lib.llama_model_free(self.model)  # frees its adapters too
            self.model = None

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _context(self, slots: int, context: int, capacity: int) -> Any:
        params = self.lib.llama_context_default_params()
        params.n_seq_max = slots
        params.n_ctx = slots * (-(-context // CONTEXT_STEP) * CONTEXT_STEP)
        params.n_batch = capacity
        params.n_outputs_max = slots  # logits of at most one token per sequence per call
        params.kv_unified = False  # a cache stream per sequence: attention never reads another's keys
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        ctx = self.lib.llama_init_from_model(self.model, params)
        if not ctx:
            raise LightReasonerError(f"{self.path.name}: llama.cpp cannot make a context of {params.n_ctx} tokens "
                                     f"for {slots} sequences (out of memory? lower --batch-size)")
        if self.adapter is not None:
            adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            if self.lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)) != 0:
                self.lib.llama_free(ctx)
                raise LightReasonerError(f"{self.path.name}: llama.cpp refused to set the LoRA adapter")
        return ctx

    def decode(self, prompts: Sequence[list[int]], *, slots: int, max_new_tokens: int | Sequence[int],
               stop_ids: Sequence[int], vocab_size: int, choose: Chooser = greedy,
               stop_text: Callable[[list[int]], bool] | None = None) -> Iterator[Finished]:
        """Completions of ``prompts`` (token ids), at most ``slots`` decoded together, yielded as each
        one ends: on a token of ``stop_ids``, after its ``max_new_tokens`` (one limit for all or one
        per prompt), or when ``stop_text(token_ids)`` says so. Tokens are picked by ``choose`` from
        the raw logits of the first ``vocab_size`` vocabulary rows only (as
        :func:`lightreasoner.decoding.decode` does)."""
        if not prompts:
            return
        if not all(prompts):
            raise LightReasonerError("llama.cpp cannot decode an empty prompt")
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        vocab_size = min(vocab_size, self.rows)
        slots = min(slots, len(prompts))
        # A call holds either one prompt or the last token of every running sequence: with the prompts
        # of 3 or more sequences in one call, the first one's tokens changed from its first token on in
        # llama-cpp-python 0.3.36 (tests/test_llamacpp.py: batched equals single-sequence decoding).
        capacity = max(max(len(p) for p in prompts), slots)
        ctx = self._context(slots, max(len(p) for p in prompts) + max(limits), capacity)
        batch = self.lib.llama_batch_init(capacity, 0, 1)
        try:
            yield from self._decode(ctx, batch, prompts, limits, slots, set(stop_ids), vocab_size, choose, stop_text)
        finally:
            self.lib.llama_batch_free(batch)
            self.lib.llama_free(ctx)

    def _decode(self, ctx: Any, batch: Any, prompts: Sequence[list[int]], limits: list[int], slots: int,
                stops: set[int], vocab_size: int, choose: Chooser,
                stop_text: Callable[[list[int]], bool] | None) -> Iterator[Finished]:
        lib = self.lib
        memory = lib.llama_get_memory(ctx)
        queue, free = deque(range(len(prompts))), list(range(slots - 1, -1, -1))
        running: list[_Sequence] = []

        def add(token: int, position: int, seq_id: int, output: bool) -> None:
            n = batch.n_tokens
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, position, 1, output
            batch.seq_id[n][0] = seq_id
            batch.n_tokens = n + 1

        def decode(sequences: list[_Sequence]) -> list[np.ndarray]:
            """Run the batch; the logits (a copy: the next call overwrites them) of each sequence's output row."""
            status = lib.llama_decode(ctx, batch)
            if status != 0:
                raise LightReasonerError(f"{self.path.name}: llama_decode failed with status {status} "
                                         f"({len(sequences)} sequences; out of context or memory?)")
            return [np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, s.output), shape=(self.rows,))[:vocab_size]
                    .copy() for s in sequences]

        def ended(sequence: _Sequence) -> bool:
            return (sequence.token_ids[-1] in stops or len(sequence.token_ids) >= sequence.limit
                    or (stop_text is not None and stop_text(sequence.token_ids)))

        while queue or running:
            began = time.perf_counter()
            logits = []
            if running:  # one step of every running sequence
                # In rising seq id order: with a cache stream per sequence llama.cpp puts only rising,
                # consecutive ids in one ubatch, and each ubatch reads all the weights again.
                running.sort(key=lambda s: s.seq_id)
                batch.n_tokens = 0
                for sequence in running:
                    sequence.output = batch.n_tokens
                    add(sequence.token_ids[-1], sequence.position, sequence.seq_id, True)
                    sequence.position += 1
                logits = decode(running)
            while queue and free:  # free slots take the next prompts, one call each
                index = queue.popleft()
                sequence = _Sequence(index, free.pop(), limits[index])
                batch.n_tokens = 0
                for position, token in enumerate(prompts[index]):
                    add(token, position, sequence.seq_id, False)
                batch.logits[batch.n_tokens - 1] = True
                sequence.output, sequence.position = batch.n_tokens - 1, len(prompts[index])
                logits += decode([sequence])
                running.append(sequence)
            for sequence, token in zip(running, choose([s.index for s in running], torch.from_numpy(np.stack(logits)))):
                sequence.token_ids.append(int(token))
            share = (time.perf_counter() - began) / len(running)
            still = []
            for sequence in running:
                sequence.seconds += share
                if ended(sequence):
                    lib.llama_memory_seq_rm(memory, sequence.seq_id, -1, -1)
                    free.append(sequence.seq_id)
                    yield Finished(sequence.index, sequence.token_ids, sequence.seconds)
                else:
                    still.append(sequence)
            running = still


def check_device(device: str) -> None:
    """llama.cpp runs here on the CPU (the extra builds it without GPU support)."""
    if device not in ("auto", "cpu"):
        raise LightReasonerError(f"--device {device}: the llamacpp backend runs on the CPU; use --device cpu, or "
                                 "--backend hf or vllm on a GPU")


class LlamaCppBackend:
    """The model's GGUF file in llama.cpp (a folder of safetensors is written as GGUF once, an adapter
    converted to llama.cpp's LoRA format once: :mod:`lightreasoner.gguf_export`), ``slots`` sequences
    decoded together; each output is yielded as its sequence ends (chunks of one)."""

    def __init__(self, model: str, tokenizer: Any, *, slots: int, adapter: str | None = None, device: str = "auto",
                 trust_remote_code: bool = False, progress: bool = True):
        from .gguf_export import adapter_gguf, model_gguf
        from .models import load_model_settings, real_vocab_size, stop_token_ids

        check_device(device)
        import_llama_cpp()  # a missing extra is refused before any conversion
        settings = load_model_settings(model, trust_remote_code=trust_remote_code)
        self.tokenizer, self.slots = tokenizer, slots
        self.stop_ids = stop_token_ids(tokenizer, settings)
        self.vocab_size = real_vocab_size(tokenizer, rows=settings.config.vocab_size)
        gguf = model_gguf(model, progress=progress)
        problem = decoding_problem(str(gguf))  # a crash here would kill the whole run without a word
        if problem is not None:
            raise LightReasonerError(f"--backend llamacpp: llama.cpp {problem} of {gguf} on this CPU; rebuild it "
                                     "(docs/EVALUATION.md#the-llamacpp-backend) or use --backend hf")
        self.engine: LlamaCppModel | None = LlamaCppModel(gguf, adapter=adapter_gguf(adapter, gguf) if adapter else None)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[list[Output]]:
        if self.engine is None:
            raise RuntimeError("the llama.cpp model was closed")
        for done in self.engine.decode([r.prompt_ids for r in requests], slots=self.slots,
                                       max_new_tokens=[r.max_new_tokens for r in requests], stop_ids=self.stop_ids,
                                       vocab_size=self.vocab_size, choose=chooser(requests, sampling),
                                       stop_text=stop_text_check(self.tokenizer, sampling.stop_strings)):
            yield [Output(done.index, done.token_ids,
                          finish_reason(self.tokenizer, done.token_ids, self.stop_ids, sampling.stop_strings),
                          done.seconds)]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> "LlamaCppBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
