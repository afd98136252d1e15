"""The fine-tuning stage: packed soft-label KL training of the expert, LoRA or full, on accelerate.

Everything trains on one generic type, :class:`PackedExample`: a token sequence plus, at some of
its positions, a sparse label (ids and weights) for the *next* token. The loss at a labelled
position is ``KL(v || pi_theta)`` over the label's ids (:func:`contrast.soft_label_kl`, gathered
sparsely, never a vocabulary-sized label row), and the loss of an optimizer step is the mean over
all labelled positions in it (counted globally, across processes and accumulation micro-batches).

Loaders turn files into examples:

* :func:`sample_examples` - our sample file (``docs/FORMAT.md``): one example per trajectory with
  all its kept steps, so one forward pass over prompt + trajectory trains every kept step
  (causal attention makes this equal to one forward per step);
* :func:`reference_examples` - the authors' per-step JSONL (``prompt_id``, ``prefix``,
  ``token_ids``, ``weights``); each line is tokenised as their trainer does it, and lines whose
  token sequences nest are packed into one example;
* :func:`one_hot_example` - one-hot labels (weight 1) on given tokens. KL to a one-hot label is
  cross-entropy, so this is how rejection-sampled SFT (every completion token), the "format-only"
  control (the expert's own greedy token at the kept steps) and the "random-positions" control (the
  same at random positions) reuse this trainer.

:func:`train` runs the loop: data order is a pure function of the seed (so ``--resume`` from a
checkpoint gives the same result as an uninterrupted run, and any number of processes sees the
same optimizer steps), DDP/FSDP/DeepSpeed come from ``accelerate launch``. See docs/TRAINING.md.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import distributed, models
from .config import check_fields, config_to_dict
from .contrast import soft_label_kl
from .errors import LightReasonerError
from .records import JsonlAppender, check_writable, iter_jsonl, read_json, refuse_own_input, write_json_atomic
from .resume import check_same_settings, setting_names

REFERENCE_SYSTEM_PROMPT = "Please reason step by step."
WEIGHT_TOLERANCE = 1e-3
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
RUN_FILE = "train_run.json"
CHECKPOINTS = "checkpoints"
TRACKERS = ("none", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Fine-tuning settings; defaults are the paper's (LoRA r=8/alpha=16/dropout 0.05 on q,v; lr 5e-5;
    16 kept steps per optimizer step; 1,000 optimizer steps)."""

    full: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank", "min": 1})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha", "min": 1})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout", "min": 0, "max": 1})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                      metadata={"help": "modules LoRA adapts, comma-separated (paper: q_proj,v_proj)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)", "above": 0})
    lr_scheduler: str = field(default="linear", metadata={"help": "linear (decay to 0) or constant",
                                                          "choices": ("linear", "constant")})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up optimizer steps", "min": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)", "min": 0})
    steps_per_update: int = field(default=16, metadata={
        "help": "kept steps (labelled positions) per optimizer step, summed over all processes", "min": 1})
    gradient_accumulation_steps: int = field(default=2, metadata={
        "help": "micro-batches per process per optimizer step (memory knob; does not change the maths)", "min": 1})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps (ignored when --epochs is set)", "min": 1})
    epochs: float | None = field(default=None, metadata={"help": "passes over the kept steps; replaces --max-steps",
                                                         "above": 0})
    max_length: int = field(default=2048, metadata={
        "help": "longest forward sequence; kept steps past it are dropped with a warning", "min": 1})
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype: auto (bf16 where the hardware computes it, else fp16 on GPU / fp32 on CPU), bfloat16, float16, float32"})
    seed: int = field(default=0, metadata={"help": "seed for LoRA init, dropout and data order"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N optimizer steps (0 = never)", "min": 0})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept on disk", "min": 1})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --out"})
    system_prompt: str = field(default=REFERENCE_SYSTEM_PROMPT, metadata={
        "help": "system prompt used to rebuild prompts of reference-format files"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the model folder"})
    report_to: str = field(default="none", metadata={
        "help": "also send loss, learning rate, gradient norm and kept steps/s to: tensorboard (OUT/logs), wandb or none",
        "choices": TRACKERS})

    def __post_init__(self) -> None:
        check_fields(self)


# What a resumed run must share with the run in --out: the model, the samples (by their counts) and every
# setting but how the work is run (resume.RUNTIME_SETTINGS).
RESUME_SETTINGS = ("model", "examples", "kept_steps", "vocab_size", *setting_names(TrainConfig, "config."))


# ----------------------------------------------------------------------------------------------
# Examples and loaders


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
    def kept_steps(self) -> int:
        return sum(e.num_labels for e in self.examples)


def one_hot_example(prompt_ids: list[int], completion_ids: list[int], steps: Iterable[int] | None = None,
                    *, source: str = "") -> PackedExample:
    """One-hot labels on ``completion_ids[t]`` for each step t (default: every completion token).

    KL to a one-hot label is the cross-entropy of that token, so this is SFT on the completion
    with the prompt masked (``steps=None``), or the format-only control (``steps`` = kept steps).
    """
    steps = sorted(range(len(completion_ids)) if steps is None else set(steps))
    if not steps:
        raise ValueError("no steps to label")
    if not prompt_ids or steps[0] < 0 or steps[-1] >= len(completion_ids):
        raise ValueError("steps must index completion_ids and the prompt must not be empty")
    return PackedExample(
        input_ids=list(prompt_ids) + list(completion_ids[:steps[-1]]),
        positions=[len(prompt_ids) + t - 1 for t in steps],
        label_ids=[[completion_ids[t]] for t in steps],
        label_weights=[[1.0] for _ in steps],
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


# ----------------------------------------------------------------------------------------------
# Data order: optimizer steps of a fixed number of kept steps, and micro-batches


@dataclass(frozen=True, order=True)
class Piece:
    """Labels ``[start, stop)`` of example ``example`` (a whole trajectory or a slice of it)."""

    example: int
    start: int
    stop: int

    @property
    def num_labels(self) -> int:
        return self.stop - self.start


def iter_updates(label_counts: list[int], steps_per_update: int, seed: int,
                 total_labels: int | None = None) -> Iterator[list[Piece]]:
    """Optimizer steps of exactly ``steps_per_update`` labels (the last may be short).

    Examples are shuffled per epoch (seeded); a trajectory that straddles an update boundary is
    split there, its two pieces sharing the prefix. Endless unless ``total_labels`` is given.
    The sequence depends only on the arguments: not on processes, micro-batches or resumption.
    """
    if not any(label_counts):
        raise ValueError("no labels")
    update: list[Piece] = []
    room, emitted, epoch = steps_per_update, 0, 0
    while True:
        order = list(range(len(label_counts)))
        random.Random(f"lightreasoner-train:{seed}:{epoch}").shuffle(order)
        for index in order:
            start = 0
            while start < label_counts[index]:
                take = min(room, label_counts[index] - start)
                if total_labels is not None:
                    take = min(take, total_labels - emitted)
                update.append(Piece(index, start, start + take))
                start, room, emitted = start + take, room - take, emitted + take
                if room == 0 or emitted == total_labels:
                    yield update
                    update, room = [], steps_per_update
                    if emitted == total_labels:
                        return
        epoch += 1


def piece_length(example: PackedExample, piece: Piece) -> int:
    return example.positions[piece.stop - 1] + 1


def assign_slots(pieces: list[Piece], examples: list[PackedExample], num_slots: int) -> list[list[Piece]]:
    """Spread an update's pieces over ``num_slots`` micro-batches, balancing forward tokens.

    Longest first onto the least-loaded slot: deterministic, so every process computes the same
    assignment and takes its own slots. Where pieces land changes speed, never the loss.
    """
    slots: list[list[Piece]] = [[] for _ in range(num_slots)]
    load = [0] * num_slots
    for piece in sorted(pieces, key=lambda p: -piece_length(examples[p.example], p)):
        slot = min(range(num_slots), key=lambda s: (load[s], s))
        slots[slot].append(piece)
        load[slot] += piece_length(examples[piece.example], piece)
    return slots


def micro_batches(pieces: list[Piece], examples: list[PackedExample], world: int,
                  accumulate: int) -> list[list[list[Piece]]]:
    """Per process, the micro-batches of one optimizer step: the same number on every process, as few as the pieces need.

    Slot s of :func:`assign_slots` is micro-batch s // world of process s % world, so a step's few pieces
    (16 kept steps are one or two trajectories) go to different processes first, and micro-batches empty
    on every process are dropped. A process left without pieces in a micro-batch still runs a 1-token
    forward: FSDP and ZeRO-3 gather weights in every forward and DDP reduces in the last backward.
    """
    slots = assign_slots(pieces, examples, world * accumulate)
    count = 1 + max(s // world for s, slot in enumerate(slots) if slot)
    return [[slots[i * world + rank] for i in range(count)] for rank in range(world)]


@dataclass
class Batch:
    """Right-padded sequences, which positions need logits, and which of those each label reads."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    keep: torch.Tensor  # [B, L] bool: positions whose logits are computed (row-major order)
    index: torch.Tensor  # [N] label -> row of the kept logits
    label_ids: torch.Tensor  # [N, K]
    label_weights: torch.Tensor  # [N, K]

    @property
    def forward_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(pieces: list[Piece], examples: list[PackedExample], pad_id: int) -> Batch:
    """Pad on the right; positions count from 0 in every row, so pads sit after all real tokens."""
    lengths = [piece_length(examples[p.example], p) for p in pieces]
    width = max(lengths)
    input_ids = torch.full((len(pieces), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pieces), width), dtype=torch.long)
    keep = torch.zeros((len(pieces), width), dtype=torch.bool)
    cells, labels = [], []
    for row, (piece, length) in enumerate(zip(pieces, lengths)):
        example = examples[piece.example]
        input_ids[row, :length] = torch.tensor(example.input_ids[:length])
        attention_mask[row, :length] = 1
        for i in range(piece.start, piece.stop):
            keep[row, example.positions[i]] = True
            cells.append(row * width + example.positions[i])
            labels.append((example.label_ids[i], example.label_weights[i]))
    # The model returns kept logits in row-major order; label n reads the one at its (row, position).
    order = torch.cumsum(keep.flatten().long(), 0) - 1
    k = max(len(ids) for ids, _ in labels)
    # Pad labels with id 0 at weight 0: xlogy(0, 0) = 0 and 0 * log p = 0, so they add nothing.
    label_ids = torch.zeros((len(labels), k), dtype=torch.long)
    label_weights = torch.zeros((len(labels), k), dtype=torch.float32)
    for n, (ids, weights) in enumerate(labels):
        label_ids[n, :len(ids)] = torch.tensor(ids)
        label_weights[n, :len(ids)] = torch.tensor(weights)
    return Batch(input_ids, attention_mask, torch.arange(width).expand(len(pieces), width).contiguous(), keep,
                 order[torch.tensor(cells)], label_ids, label_weights)


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The module that computes the logits, found through any DDP/DeepSpeed/compile wrapper.

    peft and FSDP2 keep the module tree, so hooks placed on it run inside the wrapped forward."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model).get_output_embeddings()


@contextmanager
def logits_only_at(model: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``model``'s output layer sees only the hidden states at ``keep`` (``[B, L]``
    bool), so the model returns their logits flattened, ``[N, V]`` in row-major order.

    A forward pre-hook on the output layer rather than transformers' ``logits_to_keep``, whose
    tensor semantics differ between minors (a boolean mask is an IndexError in some): the model runs
    its own forward (so DDP/FSDP/DeepSpeed hooks all fire) with no ``logits_to_keep`` argument, and
    no ``[B, L, V]`` logits tensor is ever built.
    """
    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"the output layer got hidden states of shape {tuple(hidden.shape)}, expected "
                               f"{tuple(keep.shape)} + (hidden,): this model slices them itself")
        return (hidden[keep], *args[1:])

    handle = output_layer(model).register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def packed_kl(model: torch.nn.Module, batch: Batch, vocab_size: int) -> torch.Tensor:
    """KL(v || pi_theta) of every label in the batch, ``[N]``; logits only at labelled positions."""
    with logits_only_at(model, batch.keep):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits
    return soft_label_kl(logits[batch.index], batch.label_ids, batch.label_weights, vocab_size)


# ----------------------------------------------------------------------------------------------
# The loop


def total_updates(config: TrainConfig, kept_steps: int) -> tuple[int, int]:
    """(optimizer steps, labels trained): ``--epochs`` counts passes over the kept steps."""
    if config.epochs is None:
        return config.max_steps, config.max_steps * config.steps_per_update
    labels = max(1, round(config.epochs * kept_steps))
    return math.ceil(labels / config.steps_per_update), labels


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """LR for optimizer step ``step`` (0-based): warm-up then linear decay to 0 (or constant), the values
    transformers' ``get_linear_schedule_with_warmup`` (``get_constant_schedule_with_warmup``) gives HF
    Trainer's steps, the first warm-up step's 0 included."""
    if step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    if config.lr_scheduler == "constant":
        return config.learning_rate
    return config.learning_rate * max(0.0, (total - step) / max(1, total - config.warmup_steps))


def _mixed_precision(config: TrainConfig, dtype: torch.dtype) -> str:
    # Full fine-tuning keeps float32 master weights and autocasts; LoRA keeps the frozen base in
    # the low dtype (peft keeps the adapter in float32) and needs no autocast.
    if not config.full or dtype == torch.float32:
        return "no"
    return "bf16" if dtype == torch.bfloat16 else "fp16"


def _prepare_model(model_spec: str, config: TrainConfig, dtype: torch.dtype) -> torch.nn.Module:
    model = models.load_model(model_spec, dtype=torch.float32 if config.full else dtype,
                              trust_remote_code=config.trust_remote_code)
    model.config.use_cache = False
    if config.full:
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), bias="none", task_type=TaskType.CAUSAL_LM)
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise LightReasonerError(f"--target-modules: {str(exc).splitlines()[0]}") from None
    return model.train()


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    found = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _trainable_names(accelerator, model: torch.nn.Module) -> set[str]:
    return {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _save_checkpoint(accelerator, model, optimizer, out_dir: Path, step: int, state: dict[str, Any],
                     limit: int) -> None:
    final = out_dir / CHECKPOINTS / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    trainable = _trainable_names(accelerator, model)
    weights = {n: t.contiguous() for n, t in distributed.gathered_weights(accelerator, model).items() if n in trainable}
    optimizer_state = distributed.gathered_optimizer_state(model, optimizer)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)  # by every process: the nodes of a cluster may not share a disk
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "state.json", state)  # written last: a dir without it is incomplete
        tmp.rename(final)
        for old in _checkpoint_dirs(out_dir)[:-max(1, limit)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _last_checkpoint(accelerator, out_dir: Path) -> Path | None:
    """The checkpoint to resume from; every process must see the same one (nodes need a shared --out)."""
    found = _checkpoint_dirs(out_dir)
    step = int(found[-1].name[5:]) if found else 0
    seen = set(accelerator.gather(torch.tensor([step], device=accelerator.device)).tolist())
    if len(seen) > 1:
        raise LightReasonerError(f"{out_dir}: the processes see different checkpoints (steps {sorted(seen)}); "
                                 "--resume on several machines needs --out on a filesystem they all share")
    return found[-1] if found else None


def _load_checkpoint(accelerator, model, optimizer, path: Path) -> dict[str, Any]:
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise LightReasonerError(f"{path}: no RNG state for process {accelerator.process_index}; resume with the same "
                                 "number of processes (and, on several machines, --out on a shared filesystem)")
    weights = load_file(path / "trainable.safetensors")
    if set(weights) != _trainable_names(accelerator, model):
        raise LightReasonerError(f"{path}: checkpoint holds other trainable weights than this run's model")
    distributed.load_gathered(model, optimizer, weights, torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(rng_file, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return read_json(path / "state.json")


def _run_record(config: TrainConfig, data: SampleSet, model_spec: str, samples: str | None) -> dict[str, Any]:
    return {"model": models.model_location(model_spec), "samples": samples, "examples": len(data.examples),
            "kept_steps": data.kept_steps, "vocab_size": data.vocab_size, "config": config_to_dict(config)}


def run_started(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a training run that got somewhere (a logged step, a checkpoint, its end).
    Its settings alone, left by a start that failed, are no run: a corrected rerun starts afresh."""
    log_file = out_dir / LOG_FILE
    return (out_dir / RUN_FILE).exists() and bool(_checkpoint_dirs(out_dir) or (out_dir / SUMMARY_FILE).exists()
                                               or (log_file.is_file() and log_file.stat().st_size))


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [record for _, record in iter_jsonl(path) if record.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with JsonlAppender(tmp) as out:
        out.write(kept)
    tmp.replace(path)


def _make_accelerator(config: TrainConfig, dtype: torch.dtype, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    # Accumulation is ours (micro_batches + distributed.micro_batch): accelerate's own count stays 1, whatever a
    # launcher's --gradient_accumulation_steps says, so it never divides the loss.
    accelerator = Accelerator(mixed_precision=_mixed_precision(config, dtype),
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                              log_with=_tracker(config.report_to),
                              project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                                  logging_dir=str(out_dir / "logs")))
    launched = distributed.processes_launched()
    if launched != accelerator.num_processes:
        # e.g. torchrun on a machine without GPUs: every process would train alone and race on --out.
        raise LightReasonerError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}; "
                                 "on CPU set ACCELERATE_USE_CPU=1 (see docs/TRAINING.md)")
    return accelerator


def _tracker(report_to: str) -> str | None:
    """The accelerate tracker for --report-to, after checking its package is there (accelerate only warns)."""
    if report_to == "none":
        return None
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[report_to]():
        raise LightReasonerError(f"--report-to {report_to}: the {report_to} package is not installed "
                                 f"(pip install {report_to})")
    return report_to


def _start_trackers(accelerator, config: TrainConfig, out_dir: Path) -> None:
    # TensorBoard's hparams take scalars and strings only.
    settings = {k: ",".join(v) if isinstance(v, list) else v for k, v in config_to_dict(config).items() if v is not None}
    accelerator.init_trackers("lightreasoner", config=settings, init_kwargs={"wandb": {"name": out_dir.name}})


def _tracked(record: dict[str, Any], seconds: float) -> dict[str, float]:
    values = {"train/loss": record["loss"], "train/learning_rate": record["lr"],
              "train/kept_steps_per_second": record["kept_steps"] / seconds}
    if record["grad_norm"] is not None:
        values["train/grad_norm"] = record["grad_norm"]
    return values


def _backward(accelerator, model, batches: list[list[Piece]], examples: list[PackedExample], pad_id: int,
              vocab_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward this process's micro-batches of one optimizer step: (sum of KL, forward tokens)."""
    kl_sum = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), device=accelerator.device)
    for i, pieces in enumerate(batches):
        with distributed.micro_batch(accelerator, model, last=i == len(batches) - 1):
            if pieces:
                batch = collate(pieces, examples, pad_id).to(accelerator.device)
                kl = packed_kl(model, batch, vocab_size).sum()
                kl_sum += kl.detach()
                tokens += batch.forward_tokens
            else:
                # Nothing for this process in this micro-batch: a zero-loss forward still joins the collectives.
                dummy = torch.full((1, 1), pad_id, device=accelerator.device)
                kl = model(input_ids=dummy, use_cache=False).logits.sum() * 0.0
            accelerator.backward(kl * scale)
    return kl_sum, tokens


def _clip(accelerator, params: list[torch.nn.Parameter], max_norm: float) -> float | None:
    """Clip the gradients (DeepSpeed clips inside its own step; then this reads its norm); the norm before."""
    if max_norm <= 0:
        return None
    norm = accelerator.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return None if norm is None else float(norm)


def _save_final(accelerator, model, tokenizer, out_dir: Path, config: TrainConfig, dtype: torch.dtype) -> None:
    """The adapter (or model) and tokenizer, gathered on every process and written by the main one."""
    weights = distributed.gathered_weights(accelerator, model)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if config.full:  # trained in float32 master weights; saved in --dtype
            weights = {n: t.to(dtype) if t.is_floating_point() else t for n, t in weights.items()}
        final.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
        if config.full:
            final.config.dtype = dtype  # save_pretrained recorded the float32 the weights were trained in
            final.config.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


def train(model_spec: str | Path, data: SampleSet, config: TrainConfig, out_dir: str | Path, *,
          samples: str | None = None, callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``model_spec`` on ``data``; write the adapter (or model), tokenizer, log and summary.

    Run it as is for one process, or under ``accelerate launch`` for many. ``callback`` gets every
    log record (on every process). Returns the summary written to ``train_summary.json``.
    """
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    refuse_own_input(out_dir, {"model folder": model_spec})
    check_writable(out_dir)
    dtype = models.resolve_dtype(config.dtype, models.resolve_device(None))
    accelerator = _make_accelerator(config, dtype, out_dir)
    world, rank = accelerator.num_processes, accelerator.process_index

    run = _run_record(config, data, str(model_spec), samples)
    started = run_started(out_dir)
    if started and not config.resume:
        raise LightReasonerError(f"{out_dir}: holds a training run already; pass --resume to continue it "
                                 "or choose another --out")
    if started:
        check_same_settings(out_dir / RUN_FILE, read_json(out_dir / RUN_FILE), run, RESUME_SETTINGS,
                            hint=f"--resume continues the run in {out_dir} with its samples and settings: use those, "
                                 "or another --out")
        if (out_dir / SUMMARY_FILE).exists():
            accelerator.print(f"{out_dir}: training is already complete")
            return read_json(out_dir / SUMMARY_FILE)

    set_seed(config.seed)
    tokenizer = models.load_tokenizer(model_spec, trust_remote_code=config.trust_remote_code)
    model = _prepare_model(str(model_spec), config, dtype)
    rows = model.get_output_embeddings().weight.shape[0]
    if data.vocab_size > rows:
        raise LightReasonerError(f"samples cover {data.vocab_size} vocabulary rows but {model_spec} has only {rows}")
    distributed.check_backend(accelerator, max_grad_norm=config.max_grad_norm,
                              checkpoints=config.save_steps > 0 or config.resume)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                              weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, adamw)
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare(): FSDP2 replaces the Parameters
    # Written once the model, adapter and optimizer are set up: a start that fails leaves no settings behind.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(out_dir / RUN_FILE, run)

    num_updates, num_labels = total_updates(config, data.kept_steps)
    state = {"step": 0, "seconds": 0.0, "tokens_tuned": 0, "forward_tokens": 0}
    checkpoint = _last_checkpoint(accelerator, out_dir) if config.resume else None
    if checkpoint is not None:
        state = _load_checkpoint(accelerator, model, adamw, checkpoint)
    if accelerator.is_main_process:
        _trim_log(out_dir / LOG_FILE, state["step"])
    accelerator.wait_for_everyone()

    examples, pad_id = data.examples, tokenizer.pad_token_id
    updates = iter_updates([e.num_labels for e in examples], config.steps_per_update, config.seed, num_labels)
    for _ in range(state["step"]):  # skip what the checkpoint already holds (the plan is deterministic)
        next(updates)

    log = JsonlAppender(out_dir / LOG_FILE) if accelerator.is_main_process else None
    _start_trackers(accelerator, config, out_dir)
    bar = tqdm(total=num_updates, initial=state["step"], desc="train", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    start_time, base_seconds = time.perf_counter(), state["seconds"]
    for step in range(state["step"], num_updates):
        update_start = time.perf_counter()
        pieces = next(updates)
        count = sum(p.num_labels for p in pieces)
        lr = learning_rate(config, step, num_updates)
        for group in optimizer.param_groups:
            group["lr"] = lr  # before the backward passes: DeepSpeed steps inside the last one
        mine = micro_batches(pieces, examples, world, config.gradient_accumulation_steps)[rank]
        # Mean over the step's global label count: DDP, FSDP and DeepSpeed average gradients over processes.
        kl_sum, tokens = _backward(accelerator, model, mine, examples, pad_id, data.vocab_size, world / count)
        grad_norm = _clip(accelerator, params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        totals = accelerator.reduce(torch.stack([kl_sum, tokens]), reduction="sum").tolist()
        state["step"] = step + 1
        state["seconds"] = base_seconds + time.perf_counter() - start_time
        state["tokens_tuned"] += count
        state["forward_tokens"] += int(totals[1])
        record = {"step": step + 1, "loss": totals[0] / count, "kept_steps": count, "forward_tokens": int(totals[1]),
                  "lr": lr, "grad_norm": grad_norm, "seconds": round(state["seconds"], 3)}
        if log is not None:
            log.write([record])
        accelerator.log(_tracked(record, time.perf_counter() - update_start), step=step + 1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update()
        if callback is not None:
            callback(record)
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < num_updates:
            _save_checkpoint(accelerator, model, adamw, out_dir, step + 1, state, config.save_total_limit)
    bar.close()

    summary = {"model": run["model"], "samples": samples, "format": data.format, "mode": "full" if config.full
               else "lora", "processes": world, "optimizer_steps": state["step"], "seconds": round(state["seconds"], 3),
               "kept_steps": data.kept_steps, "examples": len(examples), "steps_dropped_too_long": data.dropped_too_long,
               "tokens_tuned": state["tokens_tuned"], "forward_tokens": state["forward_tokens"],
               "epochs": state["tokens_tuned"] / data.kept_steps, "config": config_to_dict(config)}
    _save_final(accelerator, model, tokenizer, out_dir, config, dtype)
    if accelerator.is_main_process:
        log.close()
        write_json_atomic(out_dir / SUMMARY_FILE, summary)
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group a caller may still use
        tracker.finish()
    accelerator.wait_for_everyone()
    return summary


def train_from_file(model_spec: str | Path, samples: str | Path, config: TrainConfig, out_dir: str | Path,
                    **kwargs: Any) -> dict[str, Any]:
    """Read a sample file (either format) with the model's tokenizer and :func:`train` on it."""
    tokenizer = models.load_tokenizer(model_spec, trust_remote_code=config.trust_remote_code)
    data = load_samples(samples, tokenizer, system_prompt=config.system_prompt, max_length=config.max_length)
    return train(model_spec, data, config, out_dir, samples=str(samples), **kwargs)


def merge(model_spec: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto",
          trust_remote_code: bool = False) -> Path:
    """Fold a LoRA adapter into the base weights; save a standalone safetensors model + tokenizer."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    refuse_own_input(out_dir, {"model folder": model_spec, "adapter folder": adapter_dir})
    models.check_adapter(adapter_dir)
    check_writable(out_dir)
    torch_dtype = models.resolve_dtype(dtype, torch.device("cpu"))
    base = models.load_model(model_spec, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    merged = models.load_adapter(base, adapter_dir).merge_and_unload()
    if (adapter_dir / "tokenizer_config.json").is_file():  # train saves the tokenizer beside the adapter
        tokenizer = models.tokenizer_from(str(adapter_dir), trust_remote_code=trust_remote_code)
    else:
        tokenizer = models.load_tokenizer(model_spec, trust_remote_code=trust_remote_code)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
