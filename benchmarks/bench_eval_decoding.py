"""Evaluation decoding: static batches (HF `generate`) against continuous batching (ours).

Both decode the same GSM8K test questions (a seeded sample, the qwen25-math-cot prompt, greedy)
with the same model, batch width and token limit, one after the other in one process:

- static:     HF `generate` on length-sorted batches of `--batch-size`, left padded, KV cache;
              each batch runs until its longest answer ends.
- continuous: lightreasoner.decoding.decode, `--batch-size` rows at a time; a finished row
              is replaced by the next question at once.

Usage (the embedded expert, fetched on first use; `--data-dir` holds gsm8k/test.jsonl):
    python benchmarks/bench_eval_decoding.py --data-dir DATA --questions 64 --batch-size 32
Prints seconds, generated tokens and tokens/s of each, their ratio, and how many completions agree.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from lightreasoner import prompts
from lightreasoner.data import load_problems
from lightreasoner.decoding import decode
from lightreasoner.models import (encode_prompt, load_model, load_tokenizer, real_vocab_size, resolve_device,
                                  resolve_dtype, stop_token_ids)

from hf_generate import only_this_generation_config  # benchmarks/, the script's own folder


class SuppressRows(LogitsProcessor):
    """Give -inf to vocabulary rows at or past ``vocab_size``: padding rows are no token."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.vocab_size:] = float("-inf")
        return scores


def cut(ids: list[int], stops: list[int]) -> list[int]:
    end = next((i for i, token in enumerate(ids) if token in stops), None)
    return ids if end is None else ids[:end + 1]


def static(model, tokenizer, encoded: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    stops, vocab = stop_token_ids(tokenizer, model), real_vocab_size(tokenizer, model)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops,
                              pad_token_id=tokenizer.pad_token_id, num_beams=1)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[list[int]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width, pad = max(len(encoded[i]) for i in batch), tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                            device=model.device)
        with torch.inference_mode(), only_this_generation_config(model, config):
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 logits_processor=LogitsProcessorList([SuppressRows(vocab)]))
        for row, index in enumerate(batch):
            results[index] = cut(out[row, width:].tolist(), stops)
    return results


def continuous(model, tokenizer, encoded: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in encoded]
    for done in decode(model, encoded, slots=batch_size, max_new_tokens=max_new_tokens,
                              stop_ids=stop_token_ids(tokenizer, model), vocab_size=real_vocab_size(tokenizer, model),
                              pad_id=tokenizer.pad_token_id):
        results[done.index] = done.token_ids
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="coder-1.5b")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    device = resolve_device("auto")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    problems = load_problems("gsm8k", split="test", data_dir=args.data_dir, sample=args.questions, seed=0)
    encoded = [encode_prompt(tokenizer, prompts.build_prompt("qwen25-math-cot", p.question, tokenizer))
               for p in problems]
    print(f"{args.model}, {model.dtype}, {torch.get_num_threads()} threads, {len(encoded)} GSM8K test questions, "
          f"batch {args.batch_size}, up to {args.max_new_tokens} new tokens")
    outputs, rates = {}, {}
    for name, run_arm in (("static", static), ("continuous", continuous)):
        began = time.perf_counter()
        outputs[name] = run_arm(model, tokenizer, encoded, args.max_new_tokens, args.batch_size)
        seconds = time.perf_counter() - began
        tokens = sum(len(ids) for ids in outputs[name])
        rates[name] = tokens / seconds
        print(f"{name:>10}: {seconds:8.1f} s, {tokens:,} tokens, {rates[name]:.2f} tok/s", flush=True)
    same = sum(a == b for a, b in zip(outputs["static"], outputs["continuous"]))
    lengths = sorted(len(ids) for ids in outputs["continuous"])
    print(f"continuous / static: {rates['continuous'] / rates['static']:.2f}x tokens/s; "
          f"identical completions {same}/{len(encoded)}; answer lengths min {lengths[0]}, "
          f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}")


if __name__ == "__main__":
    main()
