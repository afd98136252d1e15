"""Seconds per cached decoding step of the embedded expert at batch 16, float32 vs bfloat16.

    python benchmarks/bench_dtype.py
"""
import time, torch
from lightreasoner.decoding import cache_keyword
from lightreasoner.models import load_model, load_tokenizer, chat_prompt
from lightreasoner.data import load_problems
from transformers import DynamicCache
tok = load_tokenizer("coder-1.5b")
probs = load_problems("arith", split="test")[:16]
texts = [chat_prompt(tok, p.question, "Please reason step by step.") for p in probs]
inp = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
for dt in (torch.float32, torch.bfloat16):
    m = load_model("coder-1.5b", dtype=dt)
    with torch.inference_mode():
        cache = {cache_keyword(m): DynamicCache()}
        out = m(**inp, **cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = inp["attention_mask"]
        t = time.time()
        for i in range(12):
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            out = m(input_ids=nxt, attention_mask=mask, **cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        print(dt, "s/step at batch 16:", (time.time() - t) / 12, flush=True)
    del m
