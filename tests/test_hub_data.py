"""Hub-backed benchmarks against a stored description of their Hub datasets (tests/fixtures/hub_datasets.json).

No test here reaches the Hub: ``datasets.load_dataset`` is replaced by a stand-in that accepts only the
configs and splits the fixture lists (and fails like ``datasets`` does otherwise) and returns rows with the
fixture's features, so a wrong dataset id, config, split or field name in ``data.BENCHMARKS`` fails here.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import datasets
import pytest

from lightreasoner import data
from lightreasoner.errors import LightReasonerError

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "hub_datasets.json").read_text())
HUB = FIXTURE["datasets"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HUB_BENCHMARKS = sorted(name for name, spec in data.BENCHMARKS.items() if spec.hub is not None)
# The splits the pipeline reads: every benchmark is evaluated on "test"; sampling and SFT read gsm8k "train".
NEEDED_SPLITS = {"gsm8k": ("train", "test")}
# Sizes of the test sets (the data folder's README; the paper's benchmarks).
TEST_SIZES = {"gsm8k": 1319, "math": 5000, "math500": 500}


def config_name(config: str | None) -> str:
    return "default" if config is None else config


def hub_configs(name: str) -> list[tuple[str, dict]]:
    source = data.BENCHMARKS[name].hub
    return [(config_name(c), HUB[source.dataset]["configs"][config_name(c)]) for c in source.configs]


def synthetic_rows(features: dict[str, str], count: int, tag: str) -> dict[str, list]:
    """Columns of ``count`` rows; row i's answer and solution end like gsm8k's and MATH's, in i + 2."""

    def text(feature: str, i: int) -> str:
        ending = f" so \\boxed{{{i + 2}}}\n#### {i + 2}" if feature in ("answer", "solution") else ""
        return f"{tag} {feature} {i}{ending}"

    columns: dict[str, list] = {}
    for feature, dtype in features.items():
        if dtype == "string":
            columns[feature] = [text(feature, i) for i in range(count)]
        elif dtype == "int64":
            columns[feature] = [i % 5 + 1 for i in range(count)]
        else:
            raise AssertionError(f"no synthetic values for dtype {dtype!r}")
    return columns


class FakeHub:
    """``datasets.load_dataset`` for the fixture's datasets; records what it was asked for."""

    def __init__(self):
        self.calls: list[tuple[str, str | None, str]] = []

    def __call__(self, path, name=None, *, split=None, **kwargs):
        self.calls.append((path, name, split))
        if path not in HUB:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        configs = HUB[path]["configs"]
        if name is None:
            if list(configs) != ["default"]:
                raise ValueError(f"Config name is missing.\nPlease pick one among the available configs: "
                                 f"{list(configs)}")
            name = "default"
        if name not in configs:
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {list(configs)}")
        splits = configs[name]["splits"]
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(splits)}.')
        features = configs[name]["features"]
        return datasets.Dataset.from_dict(
            synthetic_rows(features, splits[split], f"{path}/{name}/{split}"),
            features=datasets.Features({k: datasets.Value(v) for k, v in features.items()}))


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)  # no data folder: load from the (fake) Hub
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


# ------------------------------------------------------------------ the table against the fixture


@pytest.mark.parametrize("name", HUB_BENCHMARKS)
def test_the_benchmark_table_names_configs_splits_and_fields_the_dataset_has(name):
    spec = data.BENCHMARKS[name]
    dataset = HUB.get(spec.hub.dataset)
    assert dataset is not None, f"{name}: {spec.hub.dataset} is not described in the fixture"
    names = [config_name(c) for c in spec.hub.configs]
    assert len(set(names)) == len(names)
    if list(dataset["configs"]) != ["default"]:  # a dataset with named configs has no default one
        assert None not in spec.hub.configs, f"{name}: {spec.hub.dataset} needs a config name"
    for config, info in hub_configs(name):
        for split in NEEDED_SPLITS.get(name, ("test",)):
            assert spec.hub.splits.get(split, split) in info["splits"], (name, config, split)
        missing = set(spec.fields) - set(info["features"])
        assert not missing, f"{name}: config {config} has no field {sorted(missing)}"
        assert all(info["features"][f] == "string" for f in spec.fields), (name, config)


@pytest.mark.parametrize("name", HUB_BENCHMARKS)
def test_the_hub_copy_has_the_whole_test_set(name):
    rows = sum(info["splits"]["test"] for _, info in hub_configs(name))
    assert rows == TEST_SIZES[name]


def test_benchmarks_without_a_hub_copy_are_the_fixtures_list():
    assert set(FIXTURE["no_hub_copy"]) == {n for n, spec in data.BENCHMARKS.items() if spec.hub is None}


def test_math_takes_every_subject_in_the_order_of_the_local_math_file():
    """Ids are positions, so the Hub's subjects must come in the order the data folder's file has them."""
    assert data.BENCHMARKS["math"].hub.configs == data.MATH_SUBJECTS
    assert set(data.MATH_SUBJECTS) == set(HUB["EleutherAI/hendrycks_math"]["configs"])
    path = SHARED_DATA / "math" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present: the subject order of a local copy cannot be compared")
    types = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    runs = [(subject, len(list(group))) for subject, group in itertools.groupby(types)]
    hub_runs = [(subject, info["splits"]["test"]) for subject, info in hub_configs("math")]
    assert [count for _, count in runs] == [count for _, count in hub_runs]
    slug = {subject: subject.lower().replace(" & ", "_and_").replace(" ", "_") for subject, _ in runs}
    assert [slug[subject] for subject, _ in runs] == [config for config, _ in hub_runs]


# ------------------------------------------------------------------ loading through data.load_problems


@pytest.mark.parametrize("name", HUB_BENCHMARKS)
def test_every_hub_benchmark_loads_through_the_loader(hub, name):
    problems = data.load_problems(name)
    source = data.BENCHMARKS[name].hub
    assert hub.calls == [(source.dataset, c, "test") for c in source.configs]
    assert len(problems) == TEST_SIZES[name]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question.strip() for p in problems)
    first = problems[0]
    if name in ("gsm8k", "math"):  # gold parsed from the answer's "#### n" / the solution's last \boxed{}
        assert first.gold == "2"
        assert problems[-1].gold == str(hub_configs(name)[-1][1]["splits"]["test"] - 1 + 2)


def test_math_from_the_hub_is_seven_subjects_with_positional_ids(hub):
    problems = data.load_problems("math")
    assert [p.id for p in problems] == [str(i) for i in range(5000)]  # as the data folder's file is read
    starts = list(itertools.accumulate([0] + [info["splits"]["test"] for _, info in hub_configs("math")]))
    for (config, _), start in zip(hub_configs("math"), starts):
        assert problems[start].question == f"EleutherAI/hendrycks_math/{config}/test problem 0"
    assert data.load_problems("math", split="train", limit=3)[0].question == \
        "EleutherAI/hendrycks_math/algebra/train problem 0"


def test_math500_ids_are_its_unique_ids(hub):
    problems = data.load_problems("math500", limit=2)
    assert [p.id for p in problems] == [f"HuggingFaceH4/MATH-500/default/test unique_id {i}" for i in (0, 1)]


def test_the_old_math_entry_without_configs_fails_here(hub, monkeypatch):
    """The stand-in fails like the Hub would for the entry that named no config (it never loaded)."""
    spec = data.BENCHMARKS["math"]
    monkeypatch.setitem(data.BENCHMARKS, "math", data.BenchmarkSpec(
        spec.question, spec.gold, spec.fields, hub=data.HubSource("EleutherAI/hendrycks_math")))
    with pytest.raises(LightReasonerError, match=r"EleutherAI/hendrycks_math could not be loaded: Config name is missing"):
        data.load_problems("math")


def test_a_split_the_hub_copy_lacks_is_a_one_line_error(hub):
    with pytest.raises(LightReasonerError, match=r"HuggingFaceH4/MATH-500 could not be loaded: Unknown split \"train\"") as info:
        data.load_problems("math500", split="train")
    assert "\n" not in str(info.value)
    with pytest.raises(LightReasonerError, match=r"config algebra\) could not be loaded: Unknown split \"validation\""):
        data.load_problems("math", split="validation")


def test_a_benchmark_without_a_hub_copy_asks_for_a_data_folder(hub):
    with pytest.raises(LightReasonerError, match="benchmark 'svamp': no data folder given .* and no Hub copy known"):
        data.load_problems("svamp")
    assert hub.calls == []
