"""Continuous batching against batch-1 greedy decoding by full forward passes, on a tiny random model."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
from transformers import Qwen2ForCausalLM

from lightreasoner.decoding import cache_keyword, decode, derived_seed, seeded_sampler
from tiny import VOCAB_ROWS, make_model

VOCAB = VOCAB_ROWS - 20  # rows past this are no token


def end_rule(ids: list[int]) -> bool:
    """A stop condition that ends rows after varied lengths (a stand-in for stop strings)."""
    return len(ids) >= 3 and sum(ids) % 5 == 0


def slow_greedy(model, prompt: list[int], max_new_tokens: int, stop_ids: set[int], rule=end_rule) -> list[int]:
    """The obvious way: one full forward over prompt + completion per token, no cache, no batch."""
    ids: list[int] = []
    while True:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, -1]
        ids.append(int(logits[:VOCAB].argmax()))
        if ids[-1] in stop_ids or len(ids) >= max_new_tokens or (rule is not None and rule(ids)):
            return ids


@pytest.fixture(scope="module")
def model():
    model = make_model(5, layers=2).float()
    with torch.no_grad():  # padding rows would win every argmax if they could be chosen
        model.lm_head.weight[VOCAB:] = 20 * model.lm_head.weight[:VOCAB].abs().max()
    return model


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_continuous_batching_equals_batch_one_greedy(model, slots):
    rng = random.Random(slots)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 24))] for _ in range(11)]
    stop_ids = {7, 11}
    sizes: list[int] = []
    real_forward = model.forward

    def recording_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:  # a decoding step (every prompt is longer)
            sizes.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    model.forward = recording_forward
    try:
        finished = list(decode(model, prompts, slots=slots, max_new_tokens=14, stop_ids=sorted(stop_ids),
                                      vocab_size=VOCAB, pad_id=0, stop_text=end_rule))
    finally:
        del model.forward

    assert sorted(f.index for f in finished) == list(range(len(prompts)))  # each prompt exactly once
    lengths = set()
    for done in finished:
        expected = slow_greedy(model, prompts[done.index], 14, stop_ids)
        assert done.token_ids == expected, done.index
        assert done.seconds > 0
        lengths.add(len(expected))
    assert len(lengths) > 2  # rows really ended at different times
    assert max(sizes) == min(slots, len(prompts))
    if 1 < slots < len(prompts):
        # Refilled: full-width steps go on beyond one static batch's length, then the batch only shrinks.
        full = sizes.index(slots)
        assert sizes[full:].count(slots) > 14 and all(a >= b for a, b in zip(sizes[-slots:], sizes[-slots + 1:]))


def test_rows_ending_at_their_first_token_and_empty_input(model):
    prompt = [9, 10, 12]
    first = int(model(torch.tensor([prompt])).logits[0, -1, :VOCAB].argmax())
    finished = list(decode(model, [prompt, prompt + [4]], slots=2, max_new_tokens=5, stop_ids=[first],
                                  vocab_size=VOCAB, pad_id=0))
    by_index = {f.index: f.token_ids for f in finished}
    assert by_index[0] == [first]
    assert by_index[1] == slow_greedy(model, prompt + [4], 5, {first}, rule=None)
    assert list(decode(model, [], slots=4, max_new_tokens=5, stop_ids=[], vocab_size=VOCAB, pad_id=0)) == []


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_seeded_sampler_draws_from_the_tempered_nucleus(top_p):
    """Frequencies over many seeds match softmax(logits / T) cut to the nucleus (the smallest set of
    most likely tokens whose probability reaches top_p) and renormalised, computed the slow way."""
    temperature, draws = 0.7, 4000
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 0.9]])
    probs = [math.exp(x / temperature) for x in logits[0].tolist()]
    probs = [p / sum(probs) for p in probs]
    nucleus, mass = [], 0.0
    for index in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        nucleus.append(index)
        mass += probs[index]
    expected = [probs[i] / mass if i in nucleus else 0.0 for i in range(len(probs))]

    choose = seeded_sampler([derived_seed("test", n) for n in range(draws)], temperature=temperature, top_p=top_p)
    counts = [0] * len(probs)
    for n in range(draws):
        counts[choose([n], logits)[0]] += 1
    for count, p in zip(counts, expected):
        assert abs(count / draws - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-9
    again = seeded_sampler([derived_seed("test", 0)], temperature=temperature, top_p=top_p)
    fresh = seeded_sampler([derived_seed("test", 0)], temperature=temperature, top_p=top_p)
    assert [again([0], logits)[0] for _ in range(20)] == [fresh([0], logits)[0] for _ in range(20)]



class OlderForward(torch.nn.Module):
    """A model whose forward takes the cache as ``past_key_values`` only, as in transformers 5.19."""

    def __init__(self, model: Qwen2ForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep,
                          **{cache_keyword(self.model): past_key_values})


def test_the_cache_goes_under_the_keyword_the_model_takes_without_deprecation_warnings(model):
    """Decoding (prefills, cached steps, rows joining and leaving) warns nothing deprecated from our calls,
    on the plain model and under a peft adapter; a model whose forward knows only ``past_key_values``
    gets it, and decodes the same: the cache reached it (without it every step would see one token)."""
    from peft import LoraConfig, get_peft_model

    older = OlderForward(model)
    adapted = get_peft_model(make_model(5, layers=2).float(), LoraConfig(r=2, target_modules=["q_proj"])).eval()
    assert cache_keyword(older) == "past_key_values"
    assert cache_keyword(adapted) == cache_keyword(model)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 12))] for _ in range(5)]
    runs = {}
    for name, decoder in (("model", model), ("older", older), ("adapted", adapted)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            runs[name] = sorted((f.index, f.token_ids) for f in decode(decoder, prompts, slots=2, max_new_tokens=6,
                                                                       stop_ids=[7], vocab_size=VOCAB, pad_id=0))
    assert runs["older"] == runs["model"]
    assert runs["model"] == [(i, slow_greedy(model, p, 6, {7}, rule=None)) for i, p in enumerate(prompts)]
    assert len(runs["adapted"]) == len(prompts)
