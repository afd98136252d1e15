"""Evaluation decoding with llama.cpp against HF, side by side: tokens/s at equal batch width, and how
often the final answers agree.

Every arm answers the same GSM8K test questions (a seeded sample, the qwen25-math-cot prompt,
greedy, the same token limit) with `lightreasoner eval`'s own generation code, `--batch-size`
sequences decoded together with continuous batching, one arm after another in one process:

- hf float32, hf with the dtype `--dtype auto` picks on this machine (when it is not float32; other
  hf arms with `--dtypes`), and llamacpp on the model's GGUF, for the base expert;
- the same with `--adapter` (a peft LoRA adapter of that expert), when given.

Usage (the embedded expert; `--data-dir` holds gsm8k/test.jsonl; needs the llamacpp extra):
    python benchmarks/bench_llamacpp.py --data-dir DATA --questions 16 --batch-size 8 \\
        --max-new-tokens 192 --adapter runs/bench-adapter/adapter
Prints seconds, generated tokens and tokens/s per arm, llamacpp's ratio to each hf arm, and the
share of questions whose extracted final answer (and whose whole completion) agrees between arms.

    python benchmarks/bench_llamacpp.py --steps 1,4,16 [--adapter DIR]
only times cached decoding steps at those batch widths (the first 32 tokens of a GSM8K prompt as
context, 3-4 steps each after a warm-up; lightreasoner.budget's measurements): seconds.

    python benchmarks/bench_llamacpp.py --agree DIR_A DIR_B
only compares the final answers of two `lightreasoner eval` folders on the questions both answered
(e.g. a llamacpp evaluation against an hf one of the same seeded sample, at full answer length).
"""

from __future__ import annotations

import argparse
import time

import torch

from lightreasoner import grading, prompts
from lightreasoner.backends import HFBackend, Request, Sampling
from lightreasoner.data import load_problems
from lightreasoner.evaluation import EvalConfig, completion_of, load_for_eval
from lightreasoner.models import encode_prompt, load_tokenizer, resolve_device, resolve_dtype


def answer(arm: str, model_spec: str, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int,
           batch_size: int, adapter: str | None) -> tuple[list, float]:
    """Generations of ``prompt_ids`` (in order, decoded longest first as `lightreasoner eval` does) and
    the wall seconds of decoding (loading the model is not the engine's speed)."""
    if arm == "llamacpp":
        from lightreasoner.llamacpp import LlamaCppBackend

        backend = LlamaCppBackend(model_spec, tokenizer, slots=batch_size, adapter=adapter, progress=False)
    else:
        model, _ = load_for_eval(EvalConfig(model=model_spec, adapter=adapter, dtype=arm, device="cpu", backend="hf"))
        backend = HFBackend(model, tokenizer, slots=batch_size, owns_model=True)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    generations: list = [None] * len(prompt_ids)
    with backend:
        began = time.perf_counter()
        for chunk in backend.generate([Request(prompt_ids[i], max_new_tokens) for i in order], Sampling()):
            for output in chunk:
                generations[order[output.index]] = completion_of(tokenizer, output, ())
        return generations, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="coder-1.5b")
    parser.add_argument("--adapter", default=None, help="peft LoRA adapter of --model (adds the adapter arms)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--dtypes", default="float32,auto", metavar="D,D,..",
                        help="the hf arms' dtypes (auto: what --dtype auto picks on this machine)")
    parser.add_argument("--steps", default=None, metavar="B,B,..",
                        help="only time decoding steps at these batch widths")
    parser.add_argument("--agree", nargs=2, default=None, metavar=("DIR_A", "DIR_B"),
                        help="only compare the final answers of two evaluation folders")
    args = parser.parse_args()
    if args.agree:
        return agreement(*args.agree)
    if args.steps:
        return decoding_steps(args.model, args.data_dir, [int(b) for b in args.steps.split(",")], args.adapter)

    auto = str(resolve_dtype("auto", resolve_device("cpu"))).removeprefix("torch.")
    dtypes = list(dict.fromkeys(auto if d == "auto" else d for d in args.dtypes.split(",")))
    tokenizer = load_tokenizer(args.model)
    problems = load_problems("gsm8k", split="test", data_dir=args.data_dir, sample=args.questions, seed=0)
    texts = [prompts.build_prompt("qwen25-math-cot", prompts.toolkit_question(p.question, p.gold), tokenizer)
             for p in problems]
    prompt_ids = [encode_prompt(tokenizer, text) for text in texts]
    print(f"{args.model}, {torch.get_num_threads()} threads, {len(texts)} GSM8K test questions, batch "
          f"{args.batch_size}, up to {args.max_new_tokens} new tokens; hf dtypes {', '.join(dtypes)}", flush=True)
    for adapter in [None] + ([args.adapter] if args.adapter else []):
        label = "base" if adapter is None else f"adapter {adapter}"
        results = {}
        for arm in [*dtypes, "llamacpp"]:
            generations, seconds = answer(arm, args.model, tokenizer, prompt_ids, max_new_tokens=args.max_new_tokens,
                                          batch_size=args.batch_size, adapter=adapter)
            tokens = sum(g.tokens for g in generations)
            preds = [grading.grade(g.completion, p.gold or "", "gsm8k") for g, p in zip(generations, problems)]
            results[arm] = (generations, preds, tokens / seconds)
            print(f"{label:>10} | {arm:>8}: {seconds:8.1f} s, {tokens:6,} tokens, {tokens / seconds:6.2f} tok/s, "
                  f"correct {sum(g.correct for g in preds)}/{len(preds)}", flush=True)
        cpp_generations, cpp_preds, cpp_rate = results["llamacpp"]
        for arm in dtypes:
            generations, preds, rate = results[arm]
            agree = sum(a.pred == b.pred for a, b in zip(preds, cpp_preds))
            same = sum(a.completion == b.completion for a, b in zip(generations, cpp_generations))
            print(f"{label:>10} | llamacpp / hf {arm}: {cpp_rate / rate:.2f}x tokens/s; final answers agree "
                  f"{agree}/{len(preds)} ({agree / len(preds):.0%}), identical completions {same}/{len(preds)}",
                  flush=True)
        if len(dtypes) == 2:
            (_, a_pred, _), (_, b_pred, _) = results[dtypes[0]], results[dtypes[1]]
            agree = sum(x.pred == y.pred for x, y in zip(a_pred, b_pred))
            print(f"{label:>10} | hf {dtypes[1]} vs hf {dtypes[0]}: final answers agree {agree}/{len(a_pred)}",
                  flush=True)


def agreement(dir_a: str, dir_b: str) -> None:
    """Final answers (and whole completions) of two evaluation folders, question by question."""
    from lightreasoner.records import iter_jsonl, read_json

    for name in read_json(f"{dir_a}/summary.json")["benchmarks"]:
        a = {r["id"]: r for _, r in iter_jsonl(f"{dir_a}/{name}.jsonl")}
        b = {r["id"]: r for _, r in iter_jsonl(f"{dir_b}/{name}.jsonl")}
        shared = [i for i in a if i in b]
        agree = sum(a[i]["pred"] == b[i]["pred"] for i in shared)
        same = sum(a[i]["completion"] == b[i]["completion"] for i in shared)
        correct = [sum(bool(d[i]["correct"]) for i in shared) for d in (a, b)]
        print(f"{name}: {len(shared)} questions answered by both; final answers agree {agree}/{len(shared)} "
              f"({agree / max(len(shared), 1):.0%}); identical completions {same}; correct {correct[0]} vs {correct[1]}")


def decoding_steps(model_spec: str, data_dir: str | None, widths: list[int], adapter: str | None) -> None:
    """Seconds per cached decoding step of torch (float32 and the auto dtype) and llama.cpp, with the
    adapter applied when one is given."""
    import os

    from lightreasoner import budget
    from lightreasoner.gguf_export import adapter_gguf, model_gguf
    from lightreasoner.models import real_vocab_size

    tokenizer = load_tokenizer(model_spec)
    question = load_problems("gsm8k", split="test", data_dir=data_dir, sample=1, seed=0)[0].question
    prompt = encode_prompt(tokenizer, prompts.build_prompt("qwen25-math-cot", question, tokenizer))
    auto = resolve_dtype("auto", resolve_device("cpu"))
    print(f"{model_spec}{f' + adapter {adapter}' if adapter else ''}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    steps: dict[str, dict[int, float]] = {}
    for dtype in dict.fromkeys(["float32", str(auto).removeprefix("torch.")]):
        model, _ = load_for_eval(EvalConfig(model=model_spec, adapter=adapter, dtype=dtype, device="cpu"))
        steps[f"hf {dtype}"] = {b: budget.measure_torch(model, prompt, b)[0] for b in widths}
        del model
    gguf = model_gguf(model_spec)
    lora = adapter_gguf(adapter, gguf) if adapter else None
    steps["llamacpp"] = {b: budget.measure_llamacpp(gguf, prompt, b, real_vocab_size(tokenizer), adapter=lora)
                         for b in widths}
    for b in widths:
        cells = [f"{name} {seconds[b]:.3f} s ({b / seconds[b]:.1f} tok/s)" for name, seconds in steps.items()]
        ratios = [f"{steps[name][b] / steps['llamacpp'][b]:.1f}x {name}" for name in steps if name != "llamacpp"]
        print(f"batch {b:>3}: " + "; ".join(cells) + "; llamacpp tokens/s = " + ", ".join(ratios), flush=True)


if __name__ == "__main__":
    main()
