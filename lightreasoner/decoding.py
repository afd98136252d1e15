"""Continuous batching for cached decoding (greedy or seeded sampling) with a plain Hugging Face model.

``generate`` decodes a static batch until its longest answer is done; rows that finished early
are still computed, as padding. GSM8K answers of the embedded expert run from 125 to 499 tokens,
so a static batch of 32 spends about 40% of its work on padding (benchmarks/README.md). Here a
row leaves the batch as soon as it ends and the next prompt takes its place, so the batch stays
full until the queue runs dry. transformers' own continuous batching (``generate_batch``) does
the same with a paged cache, but without flash attention (on CPUs) its attention spans every
request's keys at once, and it was slower than static batches here; this loop keeps the ordinary
``DynamicCache`` and batched attention.

The batch is left padded: every row's newest token sits in the last column, so one decoding
step feeds one token per row. A new row's prompt is prefilled on its own (with any others
admitted at the same moment), padded on the left to the batch's width (or the batch to its),
and appended; a finished row is dropped; columns that have become padding in every row are cut
off, so the width stays that of the longest live row. Positions come from each row's mask, so a
row's tokens see the same positions and keys as in a batch of one.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache


# choose(prompt indices of the rows, their logits [rows, vocab_size] in float32) -> next token of each row
Chooser = Callable[[list[int], torch.Tensor], list[int]]


def greedy(indices: list[int], logits: torch.Tensor) -> list[int]:
    return logits.argmax(-1).tolist()


def seeded_sampler(seeds: Sequence[int], *, temperature: float, top_p: float = 1.0) -> Chooser:
    """Temperature (and nucleus) sampling with one random generator per prompt, seeded by
    ``seeds[index]``: what a prompt samples does not depend on which prompts share its batch, so
    an interrupted run that resumes draws what an uninterrupted one would have."""
    generators: dict[int, torch.Generator] = {}

    def choose(indices: list[int], logits: torch.Tensor) -> list[int]:
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1:
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = ordered.cumsum(-1) - ordered >= top_p  # tokens after the nucleus is complete
            probs = probs.scatter(-1, order, ordered.masked_fill(outside, 0.0))
        tokens = []
        for index, row in zip(indices, probs):
            if index not in generators:
                generators[index] = torch.Generator(device=row.device).manual_seed(seeds[index])
            tokens.append(int(torch.multinomial(row, 1, generator=generators[index])))
        return tokens

    return choose


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (e.g. run seed, question id, sample number), stable across runs."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


@dataclass
class Finished:
    index: int  # position of the prompt in the list given to :func:`decode`
    token_ids: list[int]  # generated ids, the end token included when the row ended on one
    seconds: float  # this row's share of the wall time: each forward's time split among its rows


@dataclass
class _Row:
    index: int
    token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def decode(model: Any, prompts: Sequence[list[int]], *, slots: int, max_new_tokens: int | Sequence[int],
           stop_ids: Sequence[int], vocab_size: int, pad_id: int, choose: Chooser = greedy,
           stop_text: Callable[[list[int]], bool] | None = None) -> Iterator[Finished]:
    """Completions of ``prompts`` (token ids), at most ``slots`` decoded together, yielded as each
    one ends: on a token of ``stop_ids``, after ``max_new_tokens`` tokens (one limit for all, or one
    per prompt), or when ``stop_text(token_ids)`` says so. Tokens are picked by ``choose`` (greedy by
    default) from the raw logits of the first ``vocab_size`` vocabulary rows only: no other row is
    ever generated.
    """
    device = next(model.parameters()).device
    queue = deque(range(len(prompts)))
    stops = set(stop_ids)
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    rows: list[_Row] = []
    cache, mask = DynamicCache(), torch.zeros(0, 0, dtype=torch.long, device=device)

    def ended(row: _Row) -> bool:
        return (row.token_ids[-1] in stops or len(row.token_ids) >= limits[row.index]
                or (stop_text is not None and stop_text(row.token_ids)))

    while queue or rows:
        began = time.perf_counter()
        if queue and len(rows) < slots:
            admitted = [_Row(queue.popleft()) for _ in range(min(slots - len(rows), len(queue)))]
            logits, cache, mask = _admit(model, [prompts[r.index] for r in admitted], cache, mask, pad_id)
            working = admitted
            rows += admitted
        else:
            mask = F.pad(mask, (0, 1), value=1)
            last = torch.tensor([[row.token_ids[-1]] for row in rows], device=device)
            logits = cached_forward(model, last, mask, cache)[:, -1].float()
            working = rows
        for row, token in zip(working, choose([row.index for row in working], logits[:, :vocab_size])):
            row.token_ids.append(token)
        share = (time.perf_counter() - began) / len(working)
        for row in working:
            row.seconds += share
        finished = {id(row) for row in working if ended(row)}  # only rows that just got a token can end
        if finished:
            for row in rows:
                if id(row) in finished:
                    yield Finished(row.index, row.token_ids, row.seconds)
            keep = [i for i, row in enumerate(rows) if id(row) not in finished]
            rows = [rows[i] for i in keep]
            cache, mask = _select_rows(cache, mask, keep)


def cached_forward(model: Any, input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache,
                   keep_last: bool = True) -> torch.Tensor:
    """One cached forward over the new ``input_ids`` of a left-padded batch: positions follow the
    mask, so each row sees the positions it would see alone. Logits of the last position only, or
    of every new one."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
    # The last position by index, not ``logits_to_keep=1``: its slice of a prefill's hidden states is a
    # strided view, and torch's matmul multiplies a strided batch by a frozen weight (an adapter freezes
    # the model) as a bmm over a copy of the whole output matrix per row: 7.5 GB per prefill of 16
    # rows of a 152k vocabulary in bfloat16, 27x the prefill's own time on a CPU. Indexing gives a
    # contiguous batch, multiplied as one mm.
    keep = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device) if keep_last else 0
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=keep, **{cache_keyword(model): cache})
    return out.logits


def cache_keyword(model: Any) -> str:
    """The keyword under which ``model``'s forward takes its KV cache: ``cache`` in transformers 5.24,
    which warns on every call that passes the older ``past_key_values`` (to be removed in 5.40), and
    ``past_key_values`` in 5.19 (the vLLM extra's), which knows no other. Read from the model's class,
    under a peft wrapper if there is one (peft passes the keyword on to the model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword_of(type(base))


@functools.cache
def _cache_keyword_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _admit(model: Any, prompts: list[list[int]], cache: DynamicCache, mask: torch.Tensor,
           pad_id: int) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Prefill ``prompts`` into a cache of their own and append them to the batch as new rows."""
    input_ids, new_mask = left_padded(prompts, pad_id, mask.device)
    width = input_ids.shape[1]
    new_cache = DynamicCache()
    logits = cached_forward(model, input_ids, new_mask, new_cache)[:, -1].float()
    if mask.shape[0] == 0:
        return logits, new_cache, new_mask
    joint = max(mask.shape[1], width)
    for old, new in zip(cache.layers, new_cache.layers):
        old.keys = torch.cat([_pad_left(old.keys, joint), _pad_left(new.keys, joint)])
        old.values = torch.cat([_pad_left(old.values, joint), _pad_left(new.values, joint)])
    return logits, cache, torch.cat([_pad_left(mask, joint, dim=-1), _pad_left(new_mask, joint, dim=-1)])


def left_padded(prompts: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts`` as one batch padded on the left to the longest."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return input_ids, mask


def _pad_left(tensor: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``width`` (keys/values [B, H, L, D]: dim -2; masks [B, L]: -1)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def _select_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Keep the rows ``keep`` and cut the columns that are padding in all of them."""
    if not keep:
        return DynamicCache(), mask[:0, :0]
    index = torch.tensor(keep, device=mask.device)
    mask = mask[index]
    first = int(mask.any(0).long().argmax())  # first column some row still uses
    for layer in cache.layers:
        layer.keys = layer.keys[index, :, first:]
        layer.values = layer.values[index, :, first:]
    return cache, mask[:, first:]
