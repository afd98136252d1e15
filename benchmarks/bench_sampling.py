"""Sampling speed: `lightreasoner sample` against the floor and against the reference's per-prefix scheme.

All three run in one process on the same questions and models:

- ours:      lightreasoner.sampling.sample_batch (greedy expert + lagging teacher-forced amateur + contrast)
- floor:     HF `generate` greedy for the expert alone, batched with left padding and a KV cache, plus ONE
             batched teacher-forced amateur forward over prompt + trajectory. Neither can be skipped.
- reference: the authors' scheme (LightR_sampling.py): one question at a time, `generate` with scores,
             then for every prefix decode-and-retokenize and an amateur forward (64 prefixes per batch).

Usage (the embedded pair, fetched on first use):
    python benchmarks/bench_sampling.py --questions 16 --batch-size 16 --reference-questions 2
Prints seconds, new tokens/s and the ratios ours/floor and reference/ours (per question).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

from lightreasoner.data import load_problems
from lightreasoner.models import chat_prompt
from lightreasoner.sampling import SampleConfig, load_pair, sample_batch

from hf_generate import only_this_generation_config  # benchmarks/, the script's own folder


def floor(pair, prompts: list[str], max_new_tokens: int, batch_size: int) -> tuple[float, int]:
    tokenizer, generated = pair.tokenizer, 0
    greedy = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=pair.stop_ids,
                              pad_token_id=tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            inputs = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                               add_special_tokens=False).to(pair.expert.device)
            with only_this_generation_config(pair.expert, greedy):
                sequences = pair.expert.generate(**inputs, generation_config=greedy)
            mask = (sequences != tokenizer.pad_token_id).long()
            mask[:, :inputs["attention_mask"].shape[1]] = inputs["attention_mask"]
            generated += int(mask[:, inputs["attention_mask"].shape[1]:].sum())
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            pair.amateur(input_ids=sequences, attention_mask=mask, position_ids=positions)
    return time.perf_counter() - start, generated


def reference(pair, prompts: list[str], max_new_tokens: int, prefix_batch: int = 64) -> float:
    tokenizer = pair.tokenizer
    start = time.perf_counter()
    with torch.inference_mode():
        for text in prompts:
            inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False).to(pair.expert.device)
            out = pair.expert.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                       output_scores=True, return_dict_in_generate=True,
                                       eos_token_id=pair.stop_ids, pad_token_id=tokenizer.pad_token_id)
            targets = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            prefixes = [tokenizer(text + tokenizer.decode(targets[:s]), return_tensors="pt",
                                  add_special_tokens=False).input_ids[0] for s in range(1, len(targets))]
            for i in range(0, len(prefixes), prefix_batch):
                chunk = prefixes[i:i + prefix_batch]
                padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True,
                                                         padding_value=tokenizer.pad_token_id)
                logits = pair.amateur(padded.to(pair.expert.device),
                                      attention_mask=(padded != tokenizer.pad_token_id).long()).logits
                for j, ids in enumerate(chunk):
                    torch.softmax(logits[j, ids.shape[0] - 1], dim=-1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expert", default="coder-1.5b")
    parser.add_argument("--amateur", default="coder-0.5b")
    parser.add_argument("--data", default="arith")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--reference-questions", type=int, default=2, help="the reference is slow: time fewer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    config = SampleConfig(expert=args.expert, amateur=args.amateur, data=args.data, data_dir=args.data_dir,
                          split=args.split, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          dtype=args.dtype, device="auto")
    pair = load_pair(config)
    problems = load_problems(args.data, split=args.split, data_dir=args.data_dir, limit=args.questions)
    prompts = [chat_prompt(pair.tokenizer, p.question, config.system_prompt) for p in problems]
    print(f"{len(problems)} questions, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"dtype {pair.expert.dtype}, {torch.get_num_threads()} threads")

    sample_batch(pair, problems[:2], SampleConfig(**{**config.__dict__, "max_new_tokens": 4}))  # warm-up
    floor(pair, prompts[:2], 4, 2)
    start = time.perf_counter()
    ours_tokens = 0
    for i in range(0, len(problems), args.batch_size):
        ours_tokens += sum(len(t.completion_ids) for t in sample_batch(pair, problems[i:i + args.batch_size], config))
    ours = time.perf_counter() - start
    floor_seconds, floor_tokens = floor(pair, prompts, args.max_new_tokens, args.batch_size)
    reference_seconds = reference(pair, prompts[:args.reference_questions], args.max_new_tokens)

    per_q = {"ours": ours / len(problems), "floor": floor_seconds / len(problems),
             "reference": reference_seconds / args.reference_questions}
    print(f"{'scheme':<10} {'seconds':>9} {'s/question':>11} {'new tok/s':>10}")
    print(f"{'ours':<10} {ours:9.1f} {per_q['ours']:11.2f} {ours_tokens / ours:10.1f}")
    print(f"{'floor':<10} {floor_seconds:9.1f} {per_q['floor']:11.2f} {floor_tokens / floor_seconds:10.1f}")
    print(f"{'reference':<10} {reference_seconds:9.1f} {per_q['reference']:11.2f}"
          f"   ({args.reference_questions} questions)")
    print(f"ours / floor          = {ours / floor_seconds:.3f}  (target <= 1.05)")
    print(f"reference / ours (per question) = {per_q['reference'] / per_q['ours']:.1f}x  (target >= 10)")


if __name__ == "__main__":
    main()
