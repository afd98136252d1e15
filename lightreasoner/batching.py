"""Batching: which labels each optimizer step trains, on which process and in which micro-batch, and the
packed loss over them.

An optimizer step (an *update*) trains exactly ``labels_per_update`` labels (``--steps-per-update``:
LightReasoner's kept steps, SFT's completion tokens), summed over all processes; a trajectory that
straddles an update boundary is split there (:class:`Piece`). The plan depends only on the seed
(:func:`iter_updates`), so any number of processes and a resumed run train the same updates. The loss
of a micro-batch is KL(v || pi_theta) at its labelled positions only (:func:`packed_kl`): the output
layer sees just those hidden states (:func:`logits_only_at`), never a ``[B, L, V]`` logits tensor.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .contrast import soft_label_kl
from .examples import PackedExample


@dataclass(frozen=True, order=True)
class Piece:
    """Labels ``[start, stop)`` of example ``example`` (a whole trajectory or a slice of it)."""

    example: int
    start: int
    stop: int

    @property
    def num_labels(self) -> int:
        return self.stop - self.start


def iter_updates(label_counts: list[int], labels_per_update: int, seed: int,
                 total_labels: int | None = None) -> Iterator[list[Piece]]:
    """Optimizer steps of exactly ``labels_per_update`` labels (the last may be short).

    Examples are shuffled per epoch (seeded); a trajectory that straddles an update boundary is
    split there, its two pieces sharing the prefix. Endless unless ``total_labels`` is given.
    The sequence depends only on the arguments: not on processes, micro-batches or resumption.
    """
    if not any(label_counts):
        raise ValueError("no labels")
    update: list[Piece] = []
    room, emitted, epoch = labels_per_update, 0, 0
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
                    update, room = [], labels_per_update
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
