"""The control grid on tiny random models, against slow per-prefix references written here.

The two published controls (format-only, random-positions) are pinned to the code that produced the
published results, copied below as it was (``published_control_examples``).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightreasoner import models, training
from lightreasoner.arms import CONTROL_ARMS
from lightreasoner.cli import main
from lightreasoner.controls import control, control_arm, highest_entropy_steps, teacher_forced_log_probs, write_examples
from lightreasoner.errors import LightReasonerError
from lightreasoner.layout import EXAMPLES_FILE
from lightreasoner.records import iter_jsonl
from lightreasoner.sampling import SampleConfig, sample
from lightreasoner.examples import SampleSet, make_sample_set, one_hot_example, sample_examples

import tiny

QUESTIONS = ["Natalia sold 48 clips in April and 24 in May. How many clips?",
             "Weng earns $12 an hour. How much for 50 minutes?", "What is 3 + 4?", "How many apples?"]
ALPHA = 0.2


@pytest.fixture(scope="module")
def samples(pair, tmp_path_factory) -> Path:
    """A sample file whose trajectories keep about half their steps (beta = the median KL)."""
    root = tmp_path_factory.mktemp("samples")
    data = root / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))

    def sampled(beta: float, out: Path) -> list[dict]:
        sample(SampleConfig(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), max_new_tokens=12, beta=beta,
                           alpha=ALPHA, dtype="float32", device="cpu"), out, progress=False)
        return records_of(out)

    median = statistics.median(kl for record in sampled(0.0, root / "all.jsonl") for kl in record["kl"])
    records = sampled(median, root / "samples.jsonl")
    assert 0 < sum(len(r["steps"]) for r in records) < sum(len(r["completion_ids"]) for r in records)
    return root / "samples.jsonl"


def records_of(path: Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)][1:]


def published_control_examples(path, tokenizer, *, positions="kept", seed=0, max_length=2048):
    """lightreasoner.sft.control_examples as it produced the published format-only and random-positions arms."""
    soft = sample_examples(path, tokenizer, max_length=max_length)
    rng = random.Random(seed)
    lines = iter_jsonl(path)
    next(lines)
    examples = []
    for number, record in lines:
        steps = [s["step"] for s in record["steps"]]
        if positions == "random":
            steps = rng.sample(range(len(record["completion_ids"])), len(steps))
        if steps:
            examples.append(one_hot_example(record["prompt_ids"], record["completion_ids"], steps,
                                            source=f"{path}:{number}"))
    return make_sample_set(examples, soft.vocab_size, positions, path, max_length)


def trained_examples(pair, samples, out, tokenizer, **cell):
    write_examples(samples, out, model=str(pair[0]), progress=False, **cell)
    return sample_examples(out, tokenizer)


def content(data: SampleSet) -> list[tuple]:
    return [(e.input_ids, e.positions, e.label_ids, e.label_weights) for e in data.examples]


@torch.inference_mode()
def slow_log_probs(model_dir: Path, record: dict, vocab_size: int) -> list[torch.Tensor]:
    """log pi(.|s_t) in float64 for every step, one forward per prefix (batch of one, no padding)."""
    model = models.load_model(model_dir)
    rows = []
    for t in range(len(record["completion_ids"])):
        ids = torch.tensor([record["prompt_ids"] + record["completion_ids"][:t]])
        rows.append(torch.log_softmax(model(input_ids=ids).logits[0, -1, :vocab_size].double(), dim=-1))
    return rows


def slow_entropy(logp: torch.Tensor) -> float:
    return float(-sum(math.exp(v) * v for v in logp.tolist() if v > -math.inf))


def test_published_controls_train_byte_identical_examples(pair, tokenizer, samples, tmp_path):
    hard = trained_examples(pair, samples, tmp_path / "kept.jsonl", tokenizer, positions="kept", labels="one-hot")
    assert content(hard) == content(published_control_examples(samples, tokenizer))
    soft = sample_examples(samples, tokenizer)  # the lightreasoner arm: same sequences and positions
    assert [(e.input_ids, e.positions) for e in hard.examples] == [(e.input_ids, e.positions) for e in soft.examples]
    assert all(w == [1.0] for e in hard.examples for w in e.label_weights)
    draws = set()
    for seed in range(3):
        data = trained_examples(pair, samples, tmp_path / f"random-{seed}.jsonl", tokenizer, positions="random",
                                labels="one-hot", seed=seed)
        assert content(data) == content(published_control_examples(samples, tokenizer, positions="random", seed=seed))
        draws.add(str([e.positions for e in data.examples]))
    assert len(draws) == 3  # the seed decides the draw


def test_examples_file_is_a_sample_file_holding_the_controls_steps(pair, tokenizer, samples, tmp_path):
    out = write_examples(samples, tmp_path / "random.jsonl", model=str(pair[0]), positions="random", seed=5,
                         progress=False)
    header, records = [r for _, r in iter_jsonl(out)][0], records_of(out)
    sampled_header, sampled = [r for _, r in iter_jsonl(samples)][0], records_of(samples)
    assert {k: v for k, v in header.items() if k != "control"} == sampled_header
    assert header["control"] == {"arm": "random-positions", "positions": "random", "labels": "one-hot",
                                 "samples_sha256": header["control"]["samples_sha256"], "seed": 5}
    for record, original in zip(records, sampled, strict=True):
        assert {k: v for k, v in record.items() if k != "steps"} == {k: v for k, v in original.items() if k != "steps"}
        assert len(record["steps"]) == len(original["steps"])
        for step in record["steps"]:
            t = step["step"]
            assert step == {"step": t, "kl": original["kl"][t], "ids": [original["completion_ids"][t]],
                            "weights": [1.0]}


def test_teacher_forced_pass_runs_the_output_layer_on_the_steps_only_without_logits_to_keep():
    class IntOnlyLogitsToKeep(type(tiny.make_model(0, layers=1))):
        """Like transformers 5.19's Qwen2, which indexes ``hidden_states[:, logits_to_keep, :]``."""

        def forward(self, *args, logits_to_keep=0, **kwargs):
            if not isinstance(logits_to_keep, int):
                raise IndexError("too many indices for tensor of dimension 3")
            return super().forward(*args, logits_to_keep=logits_to_keep, **kwargs)

    model = tiny.make_model(3, layers=1).float()
    strict = IntOnlyLogitsToKeep(model.config).eval()
    strict.load_state_dict(model.state_dict())
    trajectories = [([5, 9, 11], [20, 21, 22, 2]), ([7, 8], [30, 2]), ([4, 6, 12, 13, 14], [40])]
    shapes = []
    strict.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    vocab_size = 50
    found = teacher_forced_log_probs(strict, trajectories, vocab_size)
    assert shapes == [(7, model.config.hidden_size)]  # one forward, the 7 completion steps only
    for (prompt, completion), logp in zip(trajectories, found, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + completion[:-1]])).logits[0, len(prompt) - 1:]
        torch.testing.assert_close(logp, torch.log_softmax(logits[:, :vocab_size].float(), dim=-1), atol=1e-5, rtol=0)


def test_entropy_positions_are_the_experts_highest_entropy_steps(pair, tokenizer, samples, tmp_path):
    out = write_examples(samples, tmp_path / "entropy.jsonl", model=str(pair[0]), positions="entropy",
                         labels="one-hot", progress=False)
    vocab_size = json.loads(samples.read_text().splitlines()[0])["tokenizer"]["vocab_size"]
    assert records_of(out)[0]["entropy"]
    for record, original in zip(records_of(out), records_of(samples), strict=True):
        slow = [slow_entropy(row) for row in slow_log_probs(pair[0], original, vocab_size)]
        assert record["entropy"] == pytest.approx(slow, abs=1e-4)
        count = len(original["steps"])
        ranked = sorted(range(len(slow)), key=lambda t: -slow[t])
        if 0 < count < len(slow):  # the choice is clear-cut in float32 too
            assert slow[ranked[count - 1]] - slow[ranked[count]] > 1e-3
        assert [s["step"] for s in record["steps"]] == sorted(ranked[:count])
        assert all(s["ids"] == [original["completion_ids"][s["step"]]] and s["weights"] == [1.0]
                   for s in record["steps"])
    assert highest_entropy_steps([0.5, 0.9, 0.5, 0.9, 0.1], 3) == [0, 1, 3]  # ties: the earlier step
    assert highest_entropy_steps([0.5, 0.9], 0) == []


@pytest.mark.parametrize("positions,labels", [("kept", "expert"), ("entropy", "expert"), ("random", "contrast"),
                                              ("entropy", "contrast")])
def test_soft_labels_equal_a_direct_computation(pair, tokenizer, samples, tmp_path, positions, labels):
    out = write_examples(samples, tmp_path / "examples.jsonl", model=str(pair[0]), positions=positions,
                         labels=labels, seed=1, progress=False)
    vocab_size = json.loads(samples.read_text().splitlines()[0])["tokenizer"]["vocab_size"]
    computed = stored = several = 0
    for record, original in zip(records_of(out), records_of(samples), strict=True):
        kept = {s["step"]: s for s in original["steps"]}
        expert = slow_log_probs(pair[0], original, vocab_size)
        amateur = slow_log_probs(pair[1], original, vocab_size) if labels == "contrast" else None
        assert len(record["steps"]) == len(kept)
        for step in record["steps"]:
            t = step["step"]
            if labels == "contrast" and t in kept:
                assert step == kept[t]  # the stored label, as sampled
                stored += 1
                continue
            probs = expert[t].exp()
            plausible = [a for a in range(vocab_size) if probs[a] >= ALPHA * probs.max()]
            if labels == "expert":
                scores = [float(expert[t][a]) for a in plausible]
            else:
                scores = [float(expert[t][a] - amateur[t][a]) for a in plausible]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            assert step["ids"] == plausible
            assert step["weights"] == pytest.approx([w / sum(weights) for w in weights], abs=1e-5)
            computed += 1
            several += len(plausible) > 1
    assert computed > 0 and (labels == "expert" or stored > 0) and several > 0


def test_control_trains_what_its_examples_file_holds(pair, tokenizer, samples, tmp_path, capsys):
    config = training.TrainConfig(dtype="float32", steps_per_update=4, max_steps=3, save_steps=0)
    record = control(str(pair[0]), samples, config, tmp_path / "entropy", positions="entropy", labels="one-hot",
                     progress=False, say=lambda _: None)
    assert record["arm"] == "entropy-one-hot" and record["optimizer_steps"] == 3
    stages = json.loads((tmp_path / "entropy" / "stages.json").read_text())
    meta = json.loads(Path(f"{samples}.meta.json").read_text())
    assert record["seconds"] == {"sample": round(meta["seconds"], 2), "examples": stages["examples"]["seconds"],
                                 "train": stages["train"]["seconds"]}
    assert record["seconds"]["examples"] > 0
    assert record["total_seconds"] == round(sum(record["seconds"].values()), 2)
    summary = json.loads((tmp_path / "entropy" / "adapter" / "train_summary.json").read_text())
    assert summary["format"] == "entropy-one-hot"

    examples = tmp_path / "entropy" / EXAMPLES_FILE
    assert main(["train", "--model", str(pair[0]), "--samples", str(examples), "--out", str(tmp_path / "again"),
                 "--dtype", "float32", "--steps-per-update", "4", "--max-steps", "3", "--save-steps", "0"]) == 0
    ours = load_file(tmp_path / "entropy" / "adapter" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # A format-only arm counts no teacher-forced pass; the published seconds stay sampling + training.
    plain = control(str(pair[0]), samples, config, tmp_path / "format", progress=False, say=lambda _: None)
    assert set(plain["seconds"]) == {"sample", "train"} and plain["arm"] == "format-only"
    assert (tmp_path / "format" / EXAMPLES_FILE).is_file()


def test_examples_resume_after_a_kill_to_the_same_file(pair, samples, tmp_path):
    for positions, labels in (("random", "one-hot"), ("entropy", "expert")):
        whole = write_examples(samples, tmp_path / f"{positions}.jsonl", model=str(pair[0]), positions=positions,
                               labels=labels, seed=3, batch_size=2, progress=False)
        lines = whole.read_text().splitlines(keepends=True)
        cut = tmp_path / f"{positions}-cut.jsonl"
        for written in (1, 2):  # killed within the first batch's write, or within the second one's
            cut.write_text("".join(lines[:1 + written]) + lines[1 + written][:30])  # then a torn line
            write_examples(samples, cut, model=str(pair[0]), positions=positions, labels=labels, seed=3,
                           batch_size=2, progress=False)
            assert cut.read_text() == whole.read_text()
    with pytest.raises(LightReasonerError, match="written from other samples or with other settings"):
        write_examples(samples, cut, model=str(pair[0]), positions="entropy", labels="one-hot", progress=False)


def test_grid_names_and_refusals(pair, samples, tmp_path, capsys):
    assert list(CONTROL_ARMS.values())[:2] == ["format-only", "random-positions"]
    assert control_arm("entropy", "one-hot") == "entropy-one-hot" and control_arm("kept", "expert") == "kept-expert"
    assert len(CONTROL_ARMS) == 8
    with pytest.raises(LightReasonerError, match="LightReasoner itself"):
        control_arm("kept", "contrast")
    with pytest.raises(LightReasonerError, match="positions: 'everywhere'"):
        control_arm("everywhere")
    assert main(["control", "--model", str(pair[0]), "--samples", str(samples), "--out", str(tmp_path / "c"),
                 "--labels", "contrast"]) == 2
    assert "LightReasoner itself" in capsys.readouterr().err
