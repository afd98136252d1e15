"""The adapter-fit measure: the training plan replayed, KL per kept step against a direct per-step
computation, the paired bootstrap, and the report's sentences."""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch

from lightreasoner import models
from lightreasoner.adapter_fit import (MIN_TRAJECTORIES, adapter_fit, fit_rows, fit_verdict, paired_fit, seen_labels,
                                      split_trajectories)
from lightreasoner.examples import load_samples
from lightreasoner.training import train
from test_training import fast_config, sample_lines, write_jsonl


def direct_kl(model, lines: list[dict], vocab: int) -> list[list[float]]:
    """Per trajectory, KL(v || p) of each kept step by one unpadded forward per step, in float64."""
    out = []
    with torch.no_grad():
        for line in lines[1:]:
            values = []
            for step in line["steps"]:
                ids = torch.tensor([line["prompt_ids"] + line["completion_ids"][:step["step"]]])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1, :vocab].double(), dim=-1)
                label = torch.tensor(step["weights"], dtype=torch.float64)
                values.append(float(torch.sum(label * (label.log() - logp[step["ids"]]))))
            out.append(values)
    return out


def test_the_fit_replays_training_and_equals_a_direct_per_step_kl(tmp_path, pair, tokenizer):
    from peft import PeftModel

    lines = sample_lines(tokenizer, questions=12, seed=3)
    samples = write_jsonl(tmp_path / "s.jsonl", lines)
    data = load_samples(samples, tokenizer)
    adapter = tmp_path / "adapter"
    summary = train(pair[0], data, fast_config(max_steps=2, learning_rate=3e-2), adapter, samples=str(samples))
    counts = [e.num_labels for e in data.examples]
    seen = seen_labels(counts, 8, 0, summary["tokens_tuned"])
    assert sum(seen) == summary["tokens_tuned"] == 16 < sum(counts)
    groups = split_trajectories(counts, seen)
    assert groups["trained on"] and groups["never seen"] and not set(groups["trained on"]) & set(groups["never seen"])

    fit = adapter_fit(str(pair[0]), samples, adapter, trajectories=100, progress=False)
    assert fit["available"] == {group: len(indices) for group, indices in groups.items()}
    # Examples follow the file's lines one to one here (each trajectory has its own prompt).
    vocab = data.vocab_size
    base = direct_kl(models.load_model(pair[0]), lines, vocab)
    adapted = direct_kl(PeftModel.from_pretrained(models.load_model(pair[0]), str(adapter)).eval(), lines, vocab)
    for group, indices in groups.items():
        expected_base = statistics.fmean(x for i in indices for x in base[i])
        expected_adapted = statistics.fmean(x for i in indices for x in adapted[i])
        result = fit["groups"][group]
        assert result["steps"] == sum(counts[i] for i in indices)
        assert result["base"] == pytest.approx(expected_base, rel=1e-4)
        assert result["adapted"] == pytest.approx(expected_adapted, rel=1e-4)
    assert fit["groups"]["trained on"]["diff"] < 0  # a large learning rate fits what it trained on

    rows = fit_rows(fit)
    assert [row[0] for row in rows] == ["trained on", "never seen"]
    assert rows[0][2] == str(fit["groups"]["trained on"]["steps"])


def test_paired_fit_against_direct_means_and_a_bootstrap_written_out():
    rng = random.Random(0)
    trajectories = [([rng.random() for _ in range(n)], [rng.random() - 0.3 for _ in range(n)])
                    for n in (1, 3, 2, 5, 4, 2)]
    result = paired_fit(trajectories, resamples=500, seed=7)
    steps = [(b, a) for base, adapted in trajectories for b, a in zip(base, adapted)]
    assert result["base"] == pytest.approx(statistics.fmean(b for b, _ in steps))
    assert result["adapted"] == pytest.approx(statistics.fmean(a for _, a in steps))
    assert result["lowered"] == pytest.approx(sum(a < b for b, a in steps) / len(steps))
    boot = random.Random(7)
    diffs = []
    for _ in range(500):
        sample = boot.choices(trajectories, k=len(trajectories))
        flat = [(b, a) for base, adapted in sample for b, a in zip(base, adapted)]
        diffs.append(statistics.fmean(a for _, a in flat) - statistics.fmean(b for b, _ in flat))
    diffs.sort()
    assert (result["low"], result["high"]) == (diffs[12], diffs[486])


@pytest.mark.parametrize("low, high, words", [(-0.2, -0.1, "excludes zero"), (-0.1, 0.05, "includes zero"),
                                              (0.1, 0.2, "raised")])
def test_the_verdict_says_what_the_interval_says(low, high, words):
    fit = {"groups": {"never seen": {"steps": 30, "trajectories": 5, "diff": (low + high) / 2, "low": low,
                                     "high": high, "base": 0.5},
                      "trained on": {"steps": 40, "trajectories": 8, "diff": -0.1, "base": 0.4}}}
    assert words in fit_verdict(fit)
    if low > 0 or high < 0:  # a verdict says how large the shift is beside the interval
        assert f"({abs(low + high) / 2 / 0.5:.1%} of the base KL; on the steps it trained on, lowered by 25.0%)" \
            in fit_verdict(fit)
    assert "cannot be measured" in fit_verdict({"groups": {"never seen": {"steps": 0, "trajectories": 0}}})
    assert json.dumps(fit)  # what the pipeline stores is plain JSON


def test_no_verdict_and_no_interval_from_too_few_trajectories():
    # One trajectory resamples to itself: its "interval" is a point that would read as a firm verdict.
    single = {"steps": 9, "trajectories": 1, "base": 0.5, "adapted": 0.5001, "diff": 1e-4, "low": 1e-4,
              "high": 1e-4, "lowered": 0.5}
    enough = {**single, "trajectories": MIN_TRAJECTORIES, "low": -0.1, "high": 0.2}
    fit = {"groups": {"trained on": enough, "never seen": single}}
    verdict = fit_verdict(fit)
    assert "only 1 trajectory (9 kept steps)" in verdict and "raised" not in verdict
    trained, never = fit_rows(fit)
    assert trained[5] == "+0.0001 [-0.1000, +0.2000]"
    assert never[5] == "+0.0001 (too few for a CI)"
