"""`lightreasoner inspect`: every number against a direct count, the reading against its thresholds."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from lightreasoner import inspection
from lightreasoner.cli import main
from lightreasoner.controls import write_examples
from lightreasoner.inspection import (entropy_overlap, random_jaccard, reading, spearman, token_class,
                                      token_statistics)
from lightreasoner.sampling import SampleConfig, sample

from tiny import make_tokenizer, save_pair


def test_token_classes():
    for text in ("48", " 24", " +", "=", "3.5", "(12", " ×", "1,000"):
        assert token_class(text) == "digits/operators", text
    for text in (" the", "Natalia", "x", " boxed", "3x"):
        assert token_class(text) == "words", text
    for text in ("\n\n", " ", "", "\\frac", " \\(", "**", "##", "---", ".", ",", "{"):
        assert token_class(text) == "markup/whitespace", text
    assert token_class("11") == token_class("**3") == "digits/operators"
    assert token_class("<|im_end|>", special=True) == token_class("7", special=True) == "markup/whitespace"


def test_spearman_and_random_jaccard_against_independent_computations():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    a = [rng.choice([0.0, 0.1, 0.5, 2.0, 3.0]) for _ in range(60)]  # many ties
    b = [x + rng.gauss(0, 1) for x in a]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 1, 1], [1, 2, 3]) is None
    for steps, count in ((6, 2), (7, 3), (5, 5), (8, 1)):
        kept = set(range(count))
        draws = [len(kept & set(c)) / len(kept | set(c)) for c in itertools.combinations(range(steps), count)]
        assert random_jaccard(steps, count) == pytest.approx(sum(draws) / len(draws))
    assert random_jaccard(5, 0) == 0.0


def synthetic_records(seed: int = 1, vocabulary: int = 40) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for index in range(6):
        length = rng.randint(3, 14)
        completion = [rng.randrange(vocabulary) for _ in range(length)]
        kl = [rng.choice([0.0, 0.02, 0.3, 0.6, 1.5]) for _ in range(length)]
        steps = []
        for t in range(length):
            if kl[t] >= 0.4:
                ids = sorted({completion[t], *rng.sample(range(vocabulary), rng.randint(0, 2))})
                raw = [rng.random() + 0.05 for _ in ids]
                steps.append({"step": t, "kl": kl[t], "ids": ids, "weights": [w / sum(raw) for w in raw]})
        records.append({"type": "sample", "id": str(index), "completion_ids": completion, "kl": kl, "steps": steps})
    return records


def test_token_statistics_against_a_direct_count():
    tokenizer = make_tokenizer()
    records = synthetic_records(vocabulary=len(tokenizer))
    found = token_statistics(records, tokenizer, top=5)
    special = set(tokenizer.all_special_ids)
    classes, kept, occurrences, changes = {}, {}, {}, {}
    for record in records:
        labels = {s["step"]: s for s in record["steps"]}
        for t, token in enumerate(record["completion_ids"]):
            name = token_class(tokenizer.decode([token]), token in special)
            classes.setdefault(name, [0, 0])[0] += 1
            occurrences[token] = occurrences.get(token, 0) + 1
            if t in labels:
                classes[name][1] += 1
                kept[token] = kept.get(token, 0) + 1
                weights = dict(zip(labels[t]["ids"], labels[t]["weights"]))
                top = max(weights, key=weights.get)
                if top != token:
                    changes[token, top] = changes.get((token, top), 0) + 1
    assert {n: [c["steps"], c["kept"]] for n, c in found["token_classes"].items() if c["steps"]} == classes
    expected = sorted(kept.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [(t["id"], t["kept"], t["occurrences"]) for t in found["top_kept_tokens"]] == \
        [(token, count, occurrences[token]) for token, count in expected]
    assert found["top_kept_tokens"][0]["token"] == tokenizer.decode([expected[0][0]])
    expected = sorted(changes.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [((c["expert_id"], c["label_id"]), c["count"]) for c in found["top_label_changes"]] == expected
    assert expected  # the records do change labels


def test_entropy_overlap_against_a_direct_computation():
    records = synthetic_records(seed=4)
    rng = random.Random(9)
    entropies = [[rng.random() for _ in r["completion_ids"]] for r in records]
    overlap = entropy_overlap(records, entropies)
    jaccards, chances = [], []
    for record, values in zip(records, entropies):
        kept = {s["step"] for s in record["steps"]}
        if kept:
            top = set(sorted(range(len(values)), key=lambda t: -values[t])[:len(kept)])
            jaccards.append(len(kept & top) / len(kept | top))
            chances.append(random_jaccard(len(values), len(kept)))
    assert overlap["trajectories"] == len(jaccards) > 0
    assert overlap["jaccard"] == pytest.approx(sum(jaccards) / len(jaccards))
    assert overlap["jaccard_random"] == pytest.approx(sum(chances) / len(chances))
    assert overlap["spearman"] == pytest.approx(spearman([v for r in records for v in r["kl"]],
                                                         [v for e in entropies for v in e]))


def test_reading_follows_its_thresholds():
    contrast = {"kept_share": 0.115, "steps": 1000, "kl_median": 0.008, "kl_p99": 2.2, "kept_steps": 115,
                "own_token_weight": 0.95, "label_disagrees": 0.03}
    classes = {"digits/operators": {"steps": 200, "kept": 60}, "words": {"steps": 500, "kept": 40},
               "markup/whitespace": {"steps": 300, "kept": 15}}
    findings = {"beta": 0.4, "contrast": contrast, "token_classes": classes,
                "entropy": {"spearman": 0.62, "jaccard": 0.41, "jaccard_random": 0.07, "trajectories": 9}}
    text = reading(findings)
    assert text[0].startswith("The contrast keeps 11.5% of 1,000 steps (KL >= 0.4)")
    assert "mostly confirms the expert's own token: mean weight 0.95 on it (at least 0.9), 3.0% " in text[1]
    assert text[2] == ("Kept steps fall more often than their share (at least 1.5 times) on digits/operators "
                       "(52.2% of kept steps against 20.0% of all steps).")
    assert text[3] == ("Kept steps fall less often than their share (at most 1/1.5 of it) on markup/whitespace "
                       "(13.0% of kept steps against 30.0% of all steps).")  # words: 34.8% against 50.0%, within
    assert "rank the steps alike (Spearman 0.62, at least 0.5)" in text[4] and "Jaccard 0.41, against 0.07" in text[4]
    contrast["own_token_weight"] = 0.7
    findings["token_classes"] = {"words": {"steps": 10, "kept": 1}, "digits/operators": {"steps": 10, "kept": 1}}
    contrast["kept_steps"] = 2
    findings["entropy"]["spearman"] = 0.1
    text = reading(findings)
    assert "moves weight off the expert's own token: mean weight 0.70 on it (below 0.9)" in text[1]
    assert "about as often as these occur (no class at 1.5 times" in text[2]
    assert "nearly unrelated (Spearman 0.10, within +-0.2)" in text[3]
    findings["entropy"]["spearman"] = -0.3
    assert "related but far from the same (Spearman -0.30, between 0.2 and 0.5 in size)" in reading(findings)[3]
    findings["entropy"]["spearman"] = -0.75
    assert "in opposite orders (Spearman -0.75, at most -0.5): the amateur marks steps where the expert is sure" \
        in reading(findings)[3]
    findings["entropy"] = None
    assert "--model EXPERT" in reading(findings)[3]


def test_inspect_command_on_a_sample_file(tmp_path, capsys):
    pair = save_pair(tmp_path / "pair")
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                            for i, q in enumerate(["What is 3 + 4?", "How many clips did Natalia sell?"])))
    samples = tmp_path / "run" / "samples.jsonl"
    sample(SampleConfig(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), max_new_tokens=10, beta=0.3,
                        dtype="float32", device="cpu"), samples, progress=False)

    assert main(["inspect", str(samples), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["entropy"] is None and alone["contrast"]["steps"] == 20 and alone["beta"] == 0.3
    assert sum(c["steps"] for c in alone["token_classes"].values()) == 20

    assert main(["inspect", str(samples), "--model", str(pair[0]), "--json", "--quiet"]) == 0
    computed = json.loads(capsys.readouterr().out)
    assert computed["entropy"]["source"].endswith("computed now") and computed["entropy"]["trajectories"] > 0
    assert computed["reading"][-1].startswith("KL and the expert's own entropy")

    # An entropy control in the folder caches the expert's entropies: the same numbers without --model.
    write_examples(samples, tmp_path / "run" / "entropy-one-hot" / "examples.jsonl", model=str(pair[0]),
                   positions="entropy", progress=False)
    assert main(["inspect", str(samples)]) == 0
    text = capsys.readouterr().out
    assert "cached in" in text and "Reading\n- The contrast keeps" in text and "Most kept tokens" in text
    assert max(len(line) for line in text.splitlines()) <= 100  # the report's width rule for text tables
    found = inspection.inspect_samples(samples)
    assert {k: found["entropy"][k] for k in ("jaccard", "spearman")} == \
        pytest.approx({k: computed["entropy"][k] for k in ("jaccard", "spearman")})

    other = tmp_path / "other"
    make_tokenizer(corpus=["Zebras quietly juggle seventy purple xylophones."] * 3).save_pretrained(other)
    (other / "config.json").write_text((pair[0] / "config.json").read_text())
    assert main(["inspect", str(samples), "--model", str(other)]) == 2
    assert "made with another tokenizer" in capsys.readouterr().err
