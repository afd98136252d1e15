"""Which tokens the kept steps of a sample file sit on, and where their soft labels point.

    python results/analyze_kept_steps.py runs/embedded-gsm8k/samples.jsonl coder-1.5b
"""
import collections
import re
import sys

from lightreasoner.models import load_tokenizer
from lightreasoner.sampling import read_samples
tok = load_tokenizer(sys.argv[2] if len(sys.argv) > 2 else "coder-1.5b")
_, records = read_samples(sys.argv[1])
own, moves, kinds = collections.Counter(), collections.Counter(), collections.Counter()
for r in records:
    for s in r["steps"]:
        token = r["completion_ids"][s["step"]]
        text = tok.decode([token])
        own[text] += 1
        kinds["digit or operator" if re.search(r"[0-9=+\-*/×]", text) else "word, space or markup"] += 1
        best = s["ids"][max(range(len(s["ids"])), key=lambda i: s["weights"][i])]
        if best != token:
            moves[(text, tok.decode([best]))] += 1
total = sum(kinds.values())
print({k: f"{v} ({v/total:.1%})" for k, v in kinds.items()})
print("most kept expert tokens:", ", ".join(f"{t!r} {n}" for t, n in own.most_common(12)))
print("most frequent moves (expert -> soft label's top):", ", ".join(f"{a!r}->{b!r} {n}" for (a, b), n in moves.most_common(12)))
