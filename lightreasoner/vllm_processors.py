"""The vLLM logits processor that keeps padding rows from ever being generated.

Qwen2.5 checkpoints have 151,936 vocabulary rows for 151,665 real tokens; the rows past the real
vocabulary must never be chosen. vLLM (V1 engine) builds this processor once per engine, in its own
process, by the name :data:`lightreasoner.backends.PADDING_MASK`, and applies it to the whole
batch's logits before sampling (greedy included): one slice per step instead of a token list
copied into every request. The real vocabulary size comes through the engine's ``additional_config``.
Imported only by vLLM, so it may import vLLM at the top.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from .backends import VOCAB_SIZE_KEY


class MaskPaddingRows(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.vocab_size = int(vllm_config.additional_config[VOCAB_SIZE_KEY])

    def is_argmax_invariant(self) -> bool:
        return False  # it decides what greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass  # the same rows are masked for every request

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits[:, self.vocab_size:] = float("-inf")
        return logits
