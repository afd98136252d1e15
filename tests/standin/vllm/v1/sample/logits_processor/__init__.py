"""Stand-in of vllm/v1/sample/logits_processor (0.32.0): the batch-level logits processor interface
(interface.py) and the loader of processors given by class or "module:Class" name (__init__.py)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: Sequence[int]
    added: Sequence[Any]
    moved: Sequence[Any]


class LogitsProcessor(ABC):
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None

    @abstractmethod
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        raise NotImplementedError

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def is_argmax_invariant(self) -> bool:
        raise NotImplementedError

    @abstractmethod
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        raise NotImplementedError


def load_logitsprocs(entries: Sequence[str | type] | None) -> list[type[LogitsProcessor]]:
    """As _load_logitsprocs_by_fqcns: a class, or "<module>:<type>" imported by name."""
    classes = []
    for entry in entries or ():
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) != 2:
                raise ValueError(f"Invalid logits processor FQCN {entry!r}. Expected format: '<module>:<type>'")
            entry = importlib.import_module(parts[0])
            for attr in parts[1].split("."):
                entry = getattr(entry, attr)
        if not (isinstance(entry, type) and issubclass(entry, LogitsProcessor)):
            raise ValueError(f"{entry!r} must be a subclass of LogitsProcessor")
        classes.append(entry)
    return classes
