"""The benchmarks' HF `generate` baselines: decoding with the passed generation config alone."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from transformers import GenerationConfig, PreTrainedModel


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
