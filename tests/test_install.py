"""The GPU install line, `pip install -e ".[vllm]"`: what pip's own resolver makes of it.

The vLLM extra pins one vLLM release; that release pins torch exactly and bounds transformers. If
its torch pin differed from ours, pip would quietly pick an older vLLM (with other transformers
bounds) or nothing at all. The dry runs below ask pip what a fresh GPU machine would get.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

import vllm_signatures  # noqa: E402  (the stand-in vLLM's record of the pinned release's signatures

ROOT = Path(__file__).parents[1]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pinned(requirements: list[str], name: str) -> Requirement:
    found = [Requirement(r) for r in requirements if Requirement(r).name == name]
    assert len(found) == 1, f"{name} should appear once in {requirements}"
    return found[0]


def test_the_vllm_extra_pins_the_release_the_standin_was_read_from():
    """Bumping the pin without re-reading the new release's signatures into the stand-in fails here."""
    extra = project()["optional-dependencies"]["vllm"]
    assert str(pinned(extra, "vllm").specifier) == f"=={vllm_signatures.VERSION}"
    torch = pinned(project()["dependencies"], "torch")
    assert str(torch.specifier) == vllm_signatures.REQUIRES["torch"]  # the release's own torch pin
    ours = pinned(extra, "transformers").specifier
    theirs = pinned([f"transformers{vllm_signatures.REQUIRES['transformers']}"], "transformers").specifier
    read = Version(vllm_signatures.TRANSFORMERS_READ)
    assert read in ours and read in theirs  # the transformers we read is allowed by both bounds


def test_the_transformers_pin_admits_what_the_tests_run_on():
    """The base pin spans the transformers minors the suite runs on: the installed one, and the vLLM
    extra's (else `.[vllm]` would resolve nothing). A newer transformers installed here fails this
    until the suite has passed on it and the upper bound is raised."""
    import transformers

    base = pinned(project()["dependencies"], "transformers").specifier
    assert Version(transformers.__version__) in base
    assert Version(vllm_signatures.TRANSFORMERS_READ) in base


UNREACHABLE = re.compile(r"NewConnectionError|ConnectTimeout|Max retries exceeded|name resolution|"
                         r"Network is unreachable|ProxyError|Connection refused|timed out")


def dry_run(tmp_path: Path, *requirements: str, deps: bool) -> dict[str, dict]:
    """pip's own resolution of ``requirements`` (installed packages ignored), by package name."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--retries", "1",
               "--timeout", "60", "--report", str(report), *([] if deps else ["--no-deps"]), *requirements]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 and UNREACHABLE.search(result.stderr):
        pytest.skip(f"the package index is unreachable from here: {UNREACHABLE.search(result.stderr).group(0)}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {item["metadata"]["name"].lower(): item["metadata"] for item in json.loads(report.read_text())["install"]}


def test_the_pinned_vllm_release_accepts_our_torch_and_transformers(tmp_path):
    """What pip picks for the three pins, and the picked vLLM's own metadata: its torch and
    transformers requirements admit what we pin, so no other vLLM release can be chosen."""
    extra = project()["optional-dependencies"]["vllm"]
    wanted = [str(pinned(extra, "vllm")), str(pinned(project()["dependencies"], "torch")),
              str(pinned(extra, "transformers"))]
    picked = dry_run(tmp_path, *wanted, deps=False)
    assert picked["vllm"]["version"] == vllm_signatures.VERSION
    torch, transformers = Version(picked["torch"]["version"]), Version(picked["transformers"]["version"])
    assert torch.public == vllm_signatures.REQUIRES["torch"].lstrip("=")  # 2.13.0 (+cpu here, a CUDA build elsewhere)
    assert transformers.release[:2] == Version(vllm_signatures.TRANSFORMERS_READ).release[:2]
    needs = {Requirement(r).name: Requirement(r) for r in picked["vllm"]["requires_dist"]
             if "extra ==" not in r}
    assert torch.public in needs["torch"].specifier
    assert transformers in needs["transformers"].specifier


@pytest.mark.skipif(not os.environ.get("LIGHTREASONER_TEST_RESOLVE"),
                    reason="the full resolution of .[vllm] takes 2-4 minutes; LIGHTREASONER_TEST_RESOLVE=1 runs it")
def test_the_vllm_extra_resolves_with_everything_else(tmp_path):
    """The GPU install line itself: every dependency of the project and of vLLM together."""
    picked = dry_run(tmp_path, "-e", f"{ROOT}[vllm]", deps=True)
    assert picked["vllm"]["version"] == vllm_signatures.VERSION
    assert Version(picked["torch"]["version"]).public == vllm_signatures.REQUIRES["torch"].lstrip("=")
    assert Version(picked["transformers"]["version"]).release[:2] == \
        Version(vllm_signatures.TRANSFORMERS_READ).release[:2]
    for name in ("peft", "accelerate", "datasets", "math-verify"):
        assert name in picked  # sample, train and eval in one environment


def test_ci_runs_exactly_the_readmes_set_up_and_test_commands():
    """The README opens with one set-up command, one for the main job and one for the tests, and CI
    runs the first and the last as they are written there (the set-up line includes the llamacpp
    extra, so CI compiles llama.cpp and its backend's tests run)."""
    block = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 3 and commands[1] == "lightreasoner run"
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line.strip() for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [commands[0], commands[2]]
    extras = re.fullmatch(r'pip install -e "\.\[(.*)\]"', commands[0]).group(1).split(",")
    assert set(extras) == {"test", "llamacpp"} and set(extras) <= set(project()["optional-dependencies"])
