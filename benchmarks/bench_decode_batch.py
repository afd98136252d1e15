"""Seconds per cached decoding step of the embedded expert by batch size (float32, 300-token context).

    python benchmarks/bench_decode_batch.py 16 32 64

Decoding on a CPU is partly bound by reading the weights, so a bigger batch buys tokens almost
for free until the matmuls become compute bound; this picks the evaluation batch size.
"""
import sys
import time

import torch
from transformers import DynamicCache

from lightreasoner.decoding import cache_keyword
from lightreasoner.models import load_model

CONTEXT, STEPS = 300, 8


def main(batch_sizes: list[int]) -> None:
    model = load_model("coder-1.5b", dtype=torch.float32, device=torch.device("cpu"))
    print(f"threads {torch.get_num_threads()}, context {CONTEXT}, {STEPS} steps per size")
    rates = {}
    for batch in batch_sizes:
        ids = torch.randint(0, 150_000, (batch, CONTEXT))
        with torch.inference_mode():
            cache = {cache_keyword(model): DynamicCache()}  # filled in place by every forward
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            began = time.perf_counter()
            for _ in range(STEPS):
                out = model(input_ids=token, use_cache=True, **cache)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            seconds = (time.perf_counter() - began) / STEPS
        rates[batch] = batch / seconds
        first = next(iter(rates))
        print(f"batch {batch}: {seconds:.3f} s/step, {rates[batch]:.1f} tok/s, "
              f"{rates[batch] / rates[first]:.2f}x the tokens/s of batch {first}", flush=True)


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:] or ["16", "32", "64"]])
