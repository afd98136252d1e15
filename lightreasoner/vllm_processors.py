"""The vLLM logits processor that keeps padding rows from ever being generated.

Qwen2.5 checkpoints have 151,936 vocabulary rows for 151,665 real tokens; the rows past the real
vocabulary must never be chosen. vLLM builds this processor once per engine, in its own process,
by the name :data:`lightreasoner.backends.PADDING_MASK`, and applies it to the whole batch's logits
before sampling (greedy included): one slice per step instead of a token list copied into every
request. The real vocabulary size comes through the engine's ``additional_config``.

vLLM 0.32 has two model runners with two processor interfaces: V2, its default on CUDA, builds a
processor as ``cls(vllm_config, req_states)`` and calls ``apply(logits, ctx)``; V1 (the fallback)
as ``cls(vllm_config, device, is_pin_memory)`` and ``apply(logits)``. Each runner only accepts a
subclass of its own interface, so this class implements both. Imported only by vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as RunnerV1Processor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as RunnerV2Processor

from .backends import VOCAB_SIZE_KEY


class MaskPaddingRows(RunnerV2Processor, RunnerV1Processor):
    def __init__(self, vllm_config: Any, *runner_state: Any) -> None:
        self.vocab_size = int(vllm_config.additional_config[VOCAB_SIZE_KEY])

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return True  # V2: every request needs it

    def is_argmax_invariant(self) -> bool:
        return False  # V1: it decides what greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass  # V1: the same rows are masked for every request

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        logits[:, self.vocab_size:] = float("-inf")
        return logits
