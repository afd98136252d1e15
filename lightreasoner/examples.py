"""Training examples: what every arm trains on, read from sample files.

Everything trains on one generic type, :class:`PackedExample`: a token sequence plus, at some of
its positions, a sparse label (ids and weights) for the *next* token. Readers turn files into
examples (a :class:`SampleSet`):

* :func:`sample_examples` - our sample file (``docs/FORMAT.md``, read by :func:`sampling.iter_samples`):
  one example per trajectory with all its kept steps, so one forward pass over prompt + trajectory
  trains every kept step (causal attention makes this equal to one forward per step);
* :func:`reference_examples` - the authors' per-step JSONL (``prompt_id``, ``prefix``,
  ``token_ids``, ``weights``); each line is tokenised as their trainer does it, and lines whose
  token sequences nest are packed into one example;
* :func:`one_hot_example` - one-hot labels (weight 1) on given tokens. KL to a one-hot label is
  cross-entropy, so this is how rejection-sampled SFT (every completion token), the "format-only"
  control (the expert's own greedy token at the kept steps) and the "random-positions" control (the
  same at random positions) reuse the trainer.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import models
from .errors import LightReasonerError
from .records import iter_jsonl

REFERENCE_SYSTEM_PROMPT = "Please reason step by step."
WEIGHT_TOLERANCE = 1e-3


@dataclass
class PackedExample:
    """A sequence and its labelled positions: logits at ``positions[i]`` should match label i.

    ``input_ids`` ends at the last labelled position (later tokens cannot influence any label).
    ``positions`` ascend; ``label_ids[i]``/``label_weights[i]`` are a sparse distribution.
    ``source`` names where it came from (``file:line``) for error messages.
    """

    input_ids: list[int]
    positions: list[int]
    label_ids: list[list[int]]
    label_weights: list[list[float]]
    source: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.positions)


@dataclass
class SampleSet:
    """Examples read from a file, with the vocabulary size the labels were computed over."""

    examples: list[PackedExample]
    vocab_size: int
    format: str
    dropped_too_long: int = 0

    @property
    def num_labels(self) -> int:
        """Labelled positions of all examples: LightReasoner's kept steps, SFT's completion tokens."""
        return sum(e.num_labels for e in self.examples)


def one_hot_example(prompt_ids: list[int], completion_ids: list[int], token_indices: Iterable[int] | None = None,
                    *, source: str = "") -> PackedExample:
    """One-hot labels on ``completion_ids[t]`` for each t of ``token_indices`` (default: every completion token).

    KL to a one-hot label is the cross-entropy of that token, so this is SFT on the completion
    with the prompt masked (``token_indices=None``), or the format-only control (the kept steps).
    """
    labelled = sorted(range(len(completion_ids)) if token_indices is None else set(token_indices))
    if not labelled:
        raise ValueError("no tokens to label")
    if not prompt_ids or labelled[0] < 0 or labelled[-1] >= len(completion_ids):
        raise ValueError("token_indices must index completion_ids and the prompt must not be empty")
    return PackedExample(
        input_ids=list(prompt_ids) + list(completion_ids[:labelled[-1]]),
        positions=[len(prompt_ids) + t - 1 for t in labelled],
        label_ids=[[completion_ids[t]] for t in labelled],
        label_weights=[[1.0] for _ in labelled],
        source=source,
    )


def _check_int_list(value: Any, where: str, name: str, limit: int, *, allow_empty: bool = False) -> list[int]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise LightReasonerError(f"{where}: '{name}' must be a non-empty list of token ids")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < limit:
            raise LightReasonerError(f"{where}: '{name}' holds {item!r}, not a token id in [0, {limit})")
    return value


def _check_label(ids: Any, weights: Any, where: str, vocab_size: int) -> tuple[list[int], list[float]]:
    """Label ids inside the shared vocabulary, no duplicates; weights >= 0 summing to 1."""
    ids = _check_int_list(ids, where, "ids", vocab_size)
    if len(set(ids)) != len(ids):
        raise LightReasonerError(f"{where}: label ids repeat")
    if (not isinstance(weights, list) or len(weights) != len(ids)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise LightReasonerError(f"{where}: weights must be a list of numbers, one per label id")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise LightReasonerError(f"{where}: label weights must be finite and >= 0")
    total = math.fsum(weights)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise LightReasonerError(f"{where}: label weights sum to {total:.6g}, not 1")
    return ids, [float(w) for w in weights]


def _trim(example: PackedExample, max_length: int) -> tuple[PackedExample | None, int]:
    """Drop labelled positions at or past ``max_length`` (right-trim keeps earlier contexts exact)."""
    keep = sum(1 for p in example.positions if p < max_length)
    dropped = example.num_labels - keep
    if dropped == 0:
        return example, 0
    if keep == 0:
        return None, dropped
    last = example.positions[keep - 1]
    return PackedExample(example.input_ids[:last + 1], example.positions[:keep], example.label_ids[:keep],
                         example.label_weights[:keep], example.source), dropped


def make_sample_set(examples: list[PackedExample], vocab_size: int, fmt: str, path: Path,
                    max_length: int) -> SampleSet:
    """Trim examples to ``max_length`` (dropping, with a warning, kept steps past it) into a SampleSet."""
    trimmed, dropped = [], 0
    for example in examples:
        kept, lost = _trim(example, max_length)
        dropped += lost
        if kept is not None:
            trimmed.append(kept)
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} kept steps whose context is longer than max_length={max_length}",
                      stacklevel=3)
    if not trimmed:
        raise LightReasonerError(f"{path}: no kept steps to train on")
    return SampleSet(trimmed, vocab_size, fmt, dropped)


def sample_examples(path: str | Path, tokenizer, *, max_length: int = 2048) -> SampleSet:
    """Our sample file (JSONL, or its Parquet export) as examples: one per trajectory with kept steps, every
    label checked; refused if it was made with a different tokenizer."""
    from .sampling import iter_samples

    path = Path(path)
    origin, header, lines = iter_samples(path)
    info = header.get("tokenizer") or {}
    fingerprint, vocab_size = info.get("fingerprint"), info.get("vocab_size")
    if fingerprint != models.tokenizer_fingerprint(tokenizer):
        raise LightReasonerError(f"{origin}: samples were made with a different tokenizer than the model "
                                 "being trained (tokenizer fingerprints differ)")
    limit = len(tokenizer)  # any token id the tokenizer knows may appear in a sequence
    if not isinstance(vocab_size, int) or not 0 < vocab_size <= limit:
        raise LightReasonerError(f"{origin}: header tokenizer.vocab_size {vocab_size!r} is not in [1, {limit}]")
    examples = [example for where, record in lines
                if (example := _trajectory_example(record, where, limit, vocab_size)) is not None]
    return make_sample_set(examples, vocab_size, "lightreasoner", path, max_length)


def _trajectory_example(record: dict[str, Any], where: str, limit: int, vocab_size: int) -> PackedExample | None:
    """One trajectory's kept steps as one example (None when it has none)."""
    prompt = _check_int_list(record.get("prompt_ids"), where, "prompt_ids", limit)
    completion = _check_int_list(record.get("completion_ids"), where, "completion_ids", limit, allow_empty=True)
    kept = record.get("steps")
    if not isinstance(kept, list):
        raise LightReasonerError(f"{where}: 'steps' must be a list")
    if not kept:
        return None
    positions, label_ids, label_weights = [], [], []
    previous = -1
    for entry in kept:
        t = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(t, int) or isinstance(t, bool) or not previous < t < len(completion):
            raise LightReasonerError(f"{where}: step {t!r} is not an ascending index into completion_ids")
        previous = t
        ids, weights = _check_label(entry.get("ids"), entry.get("weights"), f"{where} (step {t})", vocab_size)
        positions.append(len(prompt) + t - 1)
        label_ids.append(ids)
        label_weights.append(weights)
    return PackedExample(prompt + completion[:previous], positions, label_ids, label_weights, where)


def reference_examples(path: str | Path, tokenizer, *, system_prompt: str = REFERENCE_SYSTEM_PROMPT,
                       max_length: int = 2048) -> SampleSet:
    """Read the authors' per-step JSONL.

    As in their trainer, a line's context is chat_template(system, user=prompt_id) + prefix, as
    text, tokenised; its label belongs to the last position. Lines of one question whose token
    sequences are prefixes of a longer line's are packed into that line's example, which is exactly
    equal to one example per line, at a fraction of the cost. The file has no tokenizer record,
    so only the label ids can be checked (against the model's real vocabulary).
    """
    path = Path(path)
    vocab_size = models.real_vocab_size(tokenizer)
    groups: OrderedDict[str, list[tuple[int, list[int], list[int], list[float]]]] = OrderedDict()
    prompts: dict[str, str] = {}
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        question, prefix = record.get("prompt_id"), record.get("prefix")
        if not isinstance(question, str) or not isinstance(prefix, str):
            raise LightReasonerError(f"{where}: reference lines need string fields 'prompt_id' and 'prefix'")
        ids, weights = _check_label(record.get("token_ids"), record.get("weights"), where, vocab_size)
        if question not in prompts:
            prompts[question] = models.chat_prompt(tokenizer, question, system_prompt)
        tokens = models.encode_prompt(tokenizer, prompts[question] + prefix)
        groups.setdefault(question, []).append((number, tokens, ids, weights))
    if not groups:
        raise LightReasonerError(f"{path}: empty sample file")
    examples = []
    for lines in groups.values():
        packs: list[tuple[list[int], list[tuple[int, int, list[int], list[float]]]]] = []
        for number, tokens, ids, weights in sorted(lines, key=lambda line: -len(line[1])):
            home = next((pack for pack in packs if pack[0][:len(tokens)] == tokens), None)
            if home is None:
                home = (tokens, [])
                packs.append(home)
            home[1].append((len(tokens) - 1, number, ids, weights))
        # Packs in the order of their first line in the file, labels by position.
        for tokens, labels in sorted(packs, key=lambda pack: min(label[1] for label in pack[1])):
            labels.sort(key=lambda label: label[0])
            examples.append(PackedExample(tokens, [p for p, _, _, _ in labels], [i for _, _, i, _ in labels],
                                          [w for _, _, _, w in labels], f"{path}:{min(n for _, n, _, _ in labels)}"))
    return make_sample_set(examples, vocab_size, "reference", path, max_length)


def load_samples(path: str | Path, tokenizer, *, system_prompt: str = REFERENCE_SYSTEM_PROMPT,
                 max_length: int = 2048) -> SampleSet:
    """Read a sample file in either format (ours has a header line; the authors' does not), or our
    Parquet export."""
    path = Path(path)
    if path.suffix == ".parquet":
        return sample_examples(path, tokenizer, max_length=max_length)
    first = next(iter_jsonl(path), None)
    if first is None:
        raise LightReasonerError(f"{path}: empty sample file")
    number, record = first
    if record.get("type") == "header":
        return sample_examples(path, tokenizer, max_length=max_length)
    if {"prompt_id", "prefix", "token_ids", "weights"} <= record.keys():
        return reference_examples(path, tokenizer, system_prompt=system_prompt, max_length=max_length)
    raise LightReasonerError(f"{path}:{number}: neither a lightreasoner sample header nor a reference-format line "
                             "(prompt_id, prefix, token_ids, weights)")
