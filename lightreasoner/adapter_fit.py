"""Did the adapter learn its targets beyond the steps it saw? A signal a small run can resolve.

A few dozen evaluation questions cannot tell a gain of a few points from none, but every kept step
is a target the adapter was trained towards. This measures the training objective, the soft-label
KL(v_t || pi(.|s_t)) (mean per kept step), of the expert without and with the adapter, on kept steps
training used and on kept steps it never reached: training that stops before one epoch leaves the
last trajectories of its seeded shuffle unseen, and replaying the training plan
(:func:`lightreasoner.batching.iter_updates`) says which those are. The difference adapted - base is
paired per trajectory, with a bootstrap 95% interval over trajectories. Lower on the never-seen
steps means the adapter moved the expert towards the contrast's labels in general, not only on the
steps it was fitted to. Written by ``lightreasoner run`` as ``adapter_fit.json``.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

from .layout import TRAIN_SUMMARY_FILE
from .records import read_json

GROUPS = ("trained on", "never seen")
# The interval resamples trajectories: from fewer than this many it is a handful of points (from one, a
# single point), not an interval, so the report gives no verdict on it.
MIN_TRAJECTORIES = 5


def seen_labels(label_counts: list[int], steps_per_update: int, seed: int, tokens_tuned: int) -> list[int]:
    """How many labels of each trajectory the optimizer saw: the training plan, replayed."""
    from .batching import iter_updates

    seen = [0] * len(label_counts)
    if tokens_tuned:
        for update in iter_updates(label_counts, steps_per_update, seed, tokens_tuned):
            for piece in update:
                seen[piece.example] += piece.num_labels
    return seen


def split_trajectories(label_counts: list[int], seen: list[int]) -> dict[str, list[int]]:
    """Trajectories whose every kept step was trained on, and those none of whose steps were
    (a trajectory cut at the end of training belongs to neither)."""
    return {"trained on": [i for i, n in enumerate(label_counts) if n and seen[i] >= n],
            "never seen": [i for i, n in enumerate(label_counts) if n and seen[i] == 0]}


def paired_fit(trajectories: list[tuple[list[float], list[float]]], *, resamples: int = 2000,
               seed: int = 1) -> dict[str, float]:
    """Mean KL per kept step without (base) and with (adapted) the adapter over ``trajectories``
    (each: base KL per step, adapted KL per step), their difference with a bootstrap 95% interval
    over trajectories, and the share of steps the adapter lowered."""
    def mean(sample: list[tuple[list[float], list[float]]], arm: int) -> float:
        return statistics.fmean(x for t in sample for x in t[arm])

    steps = [a - b for base, adapted in trajectories for b, a in zip(base, adapted)]
    if not steps:
        return {"trajectories": len(trajectories), "steps": 0}
    rng = random.Random(seed)
    diffs = sorted(mean(sample, 1) - mean(sample, 0)
                   for sample in (rng.choices(trajectories, k=len(trajectories)) for _ in range(resamples)))
    return {"trajectories": len(trajectories), "steps": len(steps), "base": mean(trajectories, 0),
            "adapted": mean(trajectories, 1), "diff": mean(trajectories, 1) - mean(trajectories, 0),
            "low": diffs[int(0.025 * resamples)], "high": diffs[int(0.975 * resamples) - 1],
            "lowered": sum(d < 0 for d in steps) / len(steps)}


def adapter_fit(model_spec: str, samples: str | Path, adapter: str | Path, *, trajectories: int = 40, seed: int = 0,
                progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """Base and adapted KL on up to ``trajectories`` trajectories of each group (a seeded choice),
    in float32; returns ``{"adapter": ..., "groups": {group: paired_fit(...)}, ...}``."""
    import torch
    from peft import PeftModel
    from tqdm.auto import tqdm

    from . import models
    from .batching import Piece, collate, packed_kl
    from .examples import load_samples

    adapter = Path(adapter)
    summary = read_json(adapter / TRAIN_SUMMARY_FILE)
    config = summary["config"]
    tokenizer = models.load_tokenizer(model_spec, trust_remote_code=trust_remote_code)
    data = load_samples(samples, tokenizer, system_prompt=config["system_prompt"], max_length=config["max_length"])
    counts = [example.num_labels for example in data.examples]
    groups = split_trajectories(counts, seen_labels(counts, config["steps_per_update"], config["seed"],
                                                    summary["tokens_tuned"]))
    pick = random.Random(seed)
    chosen = {group: sorted(pick.sample(indices, min(trajectories, len(indices)))) for group, indices in groups.items()}
    base = models.load_model(model_spec, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    measured: dict[str, list[tuple[list[float], list[float]]]] = {}
    with torch.inference_mode():
        for group, indices in chosen.items():
            measured[group] = []
            for index in tqdm(indices, desc=f"adapter fit ({group})", unit="trajectory", disable=not progress):
                batch = collate([Piece(index, 0, counts[index])], data.examples, tokenizer.pad_token_id)
                adapted = packed_kl(model, batch, data.vocab_size).tolist()
                with model.disable_adapter():
                    base = packed_kl(model, batch, data.vocab_size).tolist()
                measured[group].append((base, adapted))
    return {"adapter": str(adapter), "optimizer_steps": summary["optimizer_steps"],
            "tokens_tuned": summary["tokens_tuned"], "kept_steps": summary["kept_steps"],
            "available": {group: len(indices) for group, indices in groups.items()}, "seed": seed,
            "groups": {group: paired_fit(values) for group, values in measured.items()}}


def fit_rows(fit: dict[str, Any]) -> list[list[str]]:
    """Report rows: per group, trajectories, steps, base and adapted KL, the paired difference
    [95% CI] and the share of steps lowered."""
    rows = []
    for group in GROUPS:
        result = fit["groups"].get(group, {})
        if not result.get("steps"):
            rows.append([group, str(result.get("trajectories", 0)), "0", "-", "-", "none to measure", "-"])
            continue
        interval = f" [{result['low']:+.4f}, {result['high']:+.4f}]" if result["trajectories"] >= MIN_TRAJECTORIES \
            else " (too few for a CI)"
        rows.append([group, str(result["trajectories"]), str(result["steps"]), f"{result['base']:.4f}",
                     f"{result['adapted']:.4f}", f"{result['diff']:+.4f}{interval}", f"{result['lowered']:.0%}"])
    return rows


def fit_verdict(fit: dict[str, Any]) -> str:
    """One sentence on the never-seen kept steps: what the interval says, or why there is nothing to say."""
    result = fit["groups"].get("never seen", {})
    if not result.get("steps"):
        return ("No kept step was left unseen by training (it ran a whole epoch or more), so the fit beyond the "
                "trained steps cannot be measured here.")
    if result["trajectories"] < MIN_TRAJECTORIES:
        count = f"{result['trajectories']} trajector{'y' if result['trajectories'] == 1 else 'ies'}"
        return (f"Training left only {count} ({result['steps']} kept steps) unseen: too "
                f"few for a bootstrap interval (at least {MIN_TRAJECTORIES}), so the fit beyond the trained steps gets "
                "no verdict here.")
    interval = f"{result['diff']:+.4f} [{result['low']:+.4f}, {result['high']:+.4f}]"
    # How large, beside whether: a shift can be certain and still a sliver of the KL training removed where it fit.
    size = f"{abs(result['diff']) / result['base']:.1%} of the base KL" if result["base"] > 0 else "from a KL of 0"
    trained = fit["groups"].get("trained on", {})
    if trained.get("steps") and trained["diff"] < 0:  # then its base KL is above zero
        size += f"; on the steps it trained on, lowered by {-trained['diff'] / trained['base']:.1%}"
    if result["high"] < 0:
        return (f"On {result['steps']} kept steps training never reached, the adapter lowered the KL to the contrast's "
                f"labels by {interval} ({size}): the interval excludes zero, so training moved the expert towards "
                "the labels beyond the steps it saw.")
    if result["low"] > 0:
        return (f"On {result['steps']} kept steps training never reached, the adapter raised the KL to the labels by "
                f"{interval} ({size}): the interval excludes zero.")
    return (f"On kept steps training never reached, adapted - base is {interval}: the interval includes zero, "
            "too few steps or too little training to tell.")
