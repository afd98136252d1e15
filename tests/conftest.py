import sys
from pathlib import Path

import pytest

# tests/tiny.py builds the tiny random models every test uses.
sys.path.insert(0, str(Path(__file__).parent))

STANDIN = Path(__file__).parent / "standin"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny expert and amateur (tests/tiny.py) saved as model folders, once per test module."""
    from tiny import save_pair

    return save_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def tokenizer(pair):
    from lightreasoner.models import load_tokenizer

    return load_tokenizer(pair[0])


def _forget_vllm() -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "vllm" or name == "lightreasoner.vllm_processors"]:
        del sys.modules[name]


@pytest.fixture()
def standin_vllm(monkeypatch):
    """The stand-in vLLM of tests/standin/vllm importable as ``vllm`` for one test (reset, no engines)."""
    _forget_vllm()
    monkeypatch.syspath_prepend(str(STANDIN))
    import vllm

    vllm.reset()
    yield vllm
    _forget_vllm()
