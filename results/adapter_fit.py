"""Did the adapter learn its training targets? The training objective (soft-label KL, mean per kept
step) of the base expert and of the adapted one, on kept steps training used and on kept steps it
never reached (epochs < 1 leaves the last trajectories of the shuffled order unseen).

    python results/adapter_fit.py runs/embedded-gsm8k/adapter [TRAJECTORIES_PER_GROUP]
"""
import random
import statistics
import sys
from pathlib import Path

import torch
from peft import PeftModel
from tqdm import tqdm

from lightreasoner import models
from lightreasoner.records import read_json
from lightreasoner.training import Piece, collate, iter_updates, load_samples, packed_kl

adapter = Path(sys.argv[1])
per_group = int(sys.argv[2]) if len(sys.argv) > 2 else 40
summary = read_json(adapter / "train_summary.json")
config = summary["config"]
tokenizer = models.load_tokenizer(summary["model"])
data = load_samples(summary["samples"], tokenizer, system_prompt=config["system_prompt"],
                    max_length=config["max_length"])
counts = [e.num_labels for e in data.examples]

# Replay the training plan: which labels of which trajectory the optimizer saw.
seen = [0] * len(counts)
for update in iter_updates(counts, config["steps_per_update"], config["seed"], summary["tokens_tuned"]):
    for piece in update:
        seen[piece.example] += piece.num_labels
trained = [i for i, n in enumerate(counts) if n and seen[i] == n]
unseen = [i for i, n in enumerate(counts) if n and seen[i] == 0]
pick = random.Random(0)
groups = {"trained on": pick.sample(trained, min(per_group, len(trained))),
          "never seen": pick.sample(unseen, min(per_group, len(unseen)))}

model = PeftModel.from_pretrained(models.load_model(summary["model"]), adapter).eval()
kl = {group: [] for group in groups}  # per trajectory: (base KL per step, adapted KL per step)
with torch.inference_mode():
    for group, indices in groups.items():
        for i in tqdm(indices, desc=group):
            batch = collate([Piece(i, 0, counts[i])], data.examples, tokenizer.pad_token_id)
            adapted = packed_kl(model, batch, data.vocab_size).tolist()
            with model.disable_adapter():
                kl[group].append((packed_kl(model, batch, data.vocab_size).tolist(), adapted))


def mean_kl(trajectories, arm):
    return statistics.fmean(x for t in trajectories for x in t[arm])


print(f"{adapter}: {summary['optimizer_steps']} optimizer steps over {summary['tokens_tuned']} of "
      f"{summary['kept_steps']} kept steps; {per_group} trajectories per group (seed 0)")
print()
print("| kept steps | trajectories | steps | base KL | adapted KL | adapted - base [95% CI, bootstrap over "
      "trajectories] | steps lowered |")
print("|---|---|---|---|---|---|---|")
for group, trajectories in kl.items():
    boot = random.Random(1)
    diffs = sorted(mean_kl(sample, 1) - mean_kl(sample, 0)
                   for sample in (boot.choices(trajectories, k=len(trajectories)) for _ in range(2000)))
    steps = [a - b for base, adapted in trajectories for b, a in zip(base, adapted)]
    print(f"| {group} | {len(trajectories)} | {len(steps)} | {mean_kl(trajectories, 0):.4f} | "
          f"{mean_kl(trajectories, 1):.4f} | {mean_kl(trajectories, 1) - mean_kl(trajectories, 0):+.4f} "
          f"[{diffs[49]:+.4f}, {diffs[1949]:+.4f}] | {sum(d < 0 for d in steps) / len(steps):.0%} |")
