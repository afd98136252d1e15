"""Stand-in of vllm/v1/worker/gpu/sample/logits_processor (0.32.0): the processor interface of the
V2 model runner, vLLM 0.32's default on CUDA (interface.py), and its loader, which accepts only
subclasses of this interface (loader.py, _load_v2_logitsprocs_by_fqcns)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class LogitsProcRequestState:
    device: torch.device
    max_num_reqs: int
    vocab_size: int


@dataclass(frozen=True)
class LogitsContext:
    expanded_idx_mapping: torch.Tensor


class LogitsProcessor(ABC):
    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState):  # noqa: B027
        pass

    @classmethod  # noqa: B027
    def validate_params(cls, sampling_params: Any) -> None:
        pass

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return True

    def apply_staged_writes(self) -> None:  # noqa: B027
        pass

    @abstractmethod
    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        raise NotImplementedError


def load_v2_logitsprocs(entries: Sequence[str | type] | None) -> list[type[LogitsProcessor]]:
    classes = []
    for entry in entries or ():
        if isinstance(entry, str):
            module, qualname = entry.split(":")
            entry = importlib.import_module(module)
            for attr in qualname.split("."):
                entry = getattr(entry, attr)
        if not (isinstance(entry, type) and issubclass(entry, LogitsProcessor)):
            raise ValueError(f"{entry!r} is not a subclass of vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor")
        classes.append(entry)
    return classes
