"""``lightreasoner eval --workers N``: one evaluation process per GPU, each answering a shard of the
questions into its own folder under ``<out>/workers/``, whose answers are then adopted into ``<out>``.

Each worker is an ordinary ``lightreasoner eval --shard k/N`` that resumes its own folder, so a rerun
after a failure or a kill continues every worker where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from .answers import done_records, needs_growth
from .errors import LightReasonerError
from .layout import WORKER_CONFIG_FILE, WORKER_LOG_FILE, WORKERS_DIR
from .problems import Problem
from .records import write_json_atomic


def worker_gpus(workers: int) -> list[str | None]:
    """The GPU each worker is shown: the visible ones in order (``CUDA_VISIBLE_DEVICES``, else all);
    on a machine without CUDA, none (the workers share the CPU)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([gpu.strip() for gpu in visible.split(",") if gpu.strip()] if visible is not None
            else [str(index) for index in range(torch.cuda.device_count())])
    if not gpus:
        return [None] * workers
    if len(gpus) < workers:
        raise LightReasonerError(f"--workers {workers}: only {len(gpus)} GPUs are visible here")
    return gpus[:workers]


def answer_in_workers(settings: dict[str, Any], out_dir: Path) -> None:
    """Answer the evaluation of ``settings`` (an :class:`~lightreasoner.evaluation.EvalConfig` as a dict) in
    ``settings["workers"]`` processes of ``lightreasoner eval``, worker k on GPU k with ``--shard k/N``
    into ``out_dir/workers/k-of-N``; returns when all have finished, raises if one failed (each
    resumes its own folder on a rerun)."""
    workers, device = settings["workers"], settings["device"]
    if device not in ("auto", "cuda", "cpu"):
        raise LightReasonerError(f"--device {device}: with --workers each worker gets its own GPU; "
                                 "use --device cuda (or auto)")
    processes = []
    try:
        for index, gpu in enumerate(worker_gpus(workers)):
            folder = out_dir / WORKERS_DIR / f"{index}-of-{workers}"
            folder.mkdir(parents=True, exist_ok=True)
            worker_settings, command = worker_command(settings, folder, index)
            write_json_atomic(folder / WORKER_CONFIG_FILE, worker_settings)
            env = dict(os.environ) if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            with (folder / WORKER_LOG_FILE).open("a") as log:
                processes.append((folder, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)))
        codes = [process.wait() for _, process in processes]
    finally:
        for _, process in processes:
            if process.poll() is None:  # interrupted: stop the others too; a rerun resumes them all
                process.terminate()
                process.wait()
    for (folder, _), code in zip(processes, codes):
        if code != 0:
            lines = (folder / WORKER_LOG_FILE).read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise LightReasonerError(f"{folder}: evaluation worker stopped with exit code {code}: {lines[-1]} "
                                     f"(log: {folder / WORKER_LOG_FILE}); rerun to resume")


def worker_command(settings: dict[str, Any], folder: Path, index: int) -> tuple[dict[str, Any], list[str]]:
    """Worker ``index``'s settings file (JSON is YAML, what --config reads) and command line. Remote code is
    allowed on the command line only: a settings file that turned it on would be refused."""
    worker_settings = {key: value for key, value in settings.items() if key != "trust_remote_code"}
    worker_settings.update(workers=1, shard=f"{index}/{settings['workers']}")
    command = [sys.executable, "-m", "lightreasoner.cli", "eval", "--config", str(folder / WORKER_CONFIG_FILE),
               "--out", str(folder), "--quiet", *(["--trust-remote-code"] if settings.get("trust_remote_code") else [])]
    return worker_settings, command


def adopt_worker_answers(out_dir: Path, path: Path, todo: list[Problem], done: dict[str, dict[str, Any]],
                         append: Callable[[Path, list[dict[str, Any]]], None], max_new_tokens: int) -> list[Problem]:
    """Append the workers' answers to ``todo`` to ``path`` (and ``done``); returns the questions left.
    A worker grows the cut-off answers of its own folder, so an answer to grow is taken once it has."""
    answers: dict[str, dict[str, Any]] = {}
    for folder in sorted((out_dir / WORKERS_DIR).iterdir()):
        if (folder / path.name).exists():
            answers.update((key, record) for key, record in done_records(folder / path.name).items()
                           if not needs_growth(record, max_new_tokens))
    adopted = [answers[p.id] for p in todo if p.id in answers]
    if adopted:
        append(path, adopted)
        done.update((record["id"], record) for record in adopted)
    left = [p for p in todo if p.id not in answers]
    if left:
        raise LightReasonerError(f"{out_dir / WORKERS_DIR}: the workers left {len(left)} {path.stem} questions "
                                 f"unanswered (first: {left[0].id}); rerun to resume")
    return left
