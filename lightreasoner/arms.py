"""What an arm is and its folder: the arms' names, a folder's stages, whether an arm has started, its
efficiency record, and finding the arms in run, arm and evaluation folders.

An arm is one way of training the expert on the same questions, compared with the others on the
same evaluation questions: ``baseline`` (the expert as is), ``lightreasoner``, ``sft`` (the paper's
rejection-sampled SFT, :mod:`lightreasoner.sft`) and the controls (:mod:`lightreasoner.controls`: a
grid of positions x labels). A ``lightreasoner run`` folder holds the lightreasoner arm itself and
the other arms in sub-folders named after them; ``lightreasoner sft``/``control`` write one arm
folder each (file names: :mod:`lightreasoner.layout`).

Every folder that runs stages keeps ``stages.json`` (:class:`Stages`): which stages are done and the
seconds each took, the source of the efficiency table. A trained arm's ``efficiency.json``
(:func:`efficiency_record`) is the paper's cost accounting: seconds to build and train on its
examples, problems sampled, tokens generated, examples kept, tokens tuned, optimizer steps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .answers import load_summary
from .errors import LightReasonerError
from .layout import (ADAPTER_DIR, ADAPTER_FIT_FILE, EFFICIENCY_FILE, EVAL_AFTER_DIR, EVAL_BEFORE_DIR, EXAMPLES_FILE,
                     RUN_FILE, RUN_KIND, SAMPLES_FILE, STAGES_FILE, SUMMARY_FILE, TRAIN_SUMMARY_FILE, folder_kind,
                     meta_path)
from .records import read_json, write_json_atomic
from .training import run_started

# The controls' grid (lightreasoner.controls): where their labels go, and what they are.
POSITIONS = ("kept", "random", "entropy")
LABELS = ("one-hot", "contrast", "expert")
# Arm name of each usable cell; the two published controls first, keeping their names.
CONTROL_ARMS = {("kept", "one-hot"): "format-only", ("random", "one-hot"): "random-positions",
                **{(p, l): f"{p}-{l}" for p in POSITIONS for l in LABELS
                   if (p, l) not in (("kept", "one-hot"), ("random", "one-hot"), ("kept", "contrast"))}}
ARMS = ("baseline", "lightreasoner", "sft", *CONTROL_ARMS.values())
# Where each arm of a `lightreasoner run` folder keeps its evaluation, in the paper's table order;
# a trained arm's costs (efficiency.json) sit in the folder above its evaluation.
ARM_EVAL_DIRS = {"baseline": EVAL_BEFORE_DIR, "sft": f"sft/{EVAL_AFTER_DIR}", "lightreasoner": EVAL_AFTER_DIR,
                 **{arm: f"{arm}/{EVAL_AFTER_DIR}" for arm in CONTROL_ARMS.values()}}


# ----------------------------------------------------------------------------------------------
# A folder's stages


class Stages:
    """stages.json: which stages are done and the seconds each took, summed over resumed attempts.
    A running stage saves its seconds every ``heartbeat`` seconds, so an attempt that is killed
    (a session's end, an out-of-memory kill) still counts in the efficiency table.

    ``started(name)`` tells whether a stage has produced anything: a first attempt that fails with an
    error before it has (a bad setting, a missing GPU) leaves no entry, so the stage's settings may
    still change."""

    def __init__(self, run_dir: Path, heartbeat: float = 30.0, started: Callable[[str], bool] | None = None):
        self.path = run_dir / STAGES_FILE
        self.heartbeat = heartbeat
        self.state: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}
        self._started = started
        self._lock = threading.Lock()

    def done(self, name: str) -> bool:
        return bool(self.state.get(name, {}).get("done"))

    def save(self) -> None:
        with self._lock:
            write_json_atomic(self.path, self.state)

    def timed(self, name: str, work: Callable[[], Any], say: Callable[[str], None]) -> Any:
        if self.done(name):
            say(f"[{name}] already done, skipping")
            return None
        say(f"[{name}] ...")
        first = name not in self.state
        entry = self.state.setdefault(name, {"done": False, "seconds": 0.0})
        base, started, stop = entry["seconds"], time.perf_counter(), threading.Event()

        def save_seconds() -> None:
            entry["seconds"] = round(base + time.perf_counter() - started, 2)
            self.save()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                save_seconds()

        beating = threading.Thread(target=beat, name=f"stages-{name}", daemon=True)
        beating.start()
        try:
            return work()
        except Exception:  # an error, not an interruption: the stage's time then still counts
            if first and self._started is not None and not self._started(name):
                with self._lock:  # the heartbeat may be saving the state
                    self.state.pop(name)
            raise
        finally:
            stop.set()
            beating.join()
            save_seconds()

    def finish(self, name: str) -> None:
        self.state[name]["done"] = True
        self.save()


# ----------------------------------------------------------------------------------------------
# Whether an arm has started (from then on its settings bind its folder)


def arm_started(out_dir: Path) -> bool:
    """Whether an arm folder holds work (samples, or a training run that got somewhere)."""
    return (out_dir / SAMPLES_FILE).exists() or run_started(out_dir / ADAPTER_DIR)


def control_started(out_dir: Path) -> bool:
    """Whether a control's folder holds work (examples, or a training run that got somewhere): from then
    on its ``arm.json`` binds it (:func:`lightreasoner.controls.resume_settings`)."""
    return (out_dir / EXAMPLES_FILE).exists() or run_started(out_dir / ADAPTER_DIR)


def stage_started(run_dir: Path, stage: str) -> bool:
    """Whether a stage of the run folder has produced anything (then its settings bind the folder)."""
    if stage == "sample":
        return (run_dir / SAMPLES_FILE).exists()  # it is written with the first trajectories
    if stage == "train":
        return run_started(run_dir / ADAPTER_DIR)
    if stage == "sft":
        return arm_started(run_dir / stage)
    if stage == "adapter_fit":
        return (run_dir / ADAPTER_FIT_FILE).exists()
    if stage in CONTROL_ARMS.values():
        return control_started(run_dir / stage)
    return (run_dir / stage / RUN_FILE).exists()  # an evaluation writes it with its first answer


# ----------------------------------------------------------------------------------------------
# The efficiency record


def efficiency_record(arm: str, seconds: dict[str, float], counts: dict[str, Any],
                      summary: dict[str, Any]) -> dict[str, Any]:
    """An arm's efficiency.json: seconds to build and train on its examples, problems sampled, tokens
    generated, examples kept, tokens tuned, optimizer steps (the paper's cost accounting)."""
    return {"arm": arm, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 2),
            "problems_sampled": counts["problems_sampled"], "tokens_generated": counts["tokens_generated"],
            "examples_kept": counts["examples_kept"], "tokens_tuned": summary["tokens_tuned"],
            "optimizer_steps": summary["optimizer_steps"]}


def lightreasoner_efficiency(run_dir: Path) -> dict[str, Any]:
    """The efficiency record of a run folder's lightreasoner arm: time to build and train on the examples (sampling +
    training, not evaluation), problems sampled, tokens generated, examples kept, tokens tuned."""
    stages = read_json(run_dir / STAGES_FILE)
    meta = read_json(meta_path(run_dir / SAMPLES_FILE))
    trained = read_json(run_dir / ADAPTER_DIR / TRAIN_SUMMARY_FILE)
    seconds = {"sample": stages["sample"]["seconds"], "train": stages["train"]["seconds"]}
    counts = {"problems_sampled": meta["questions"], "tokens_generated": meta["tokens_generated"],
              "examples_kept": meta["kept_steps"]}
    return efficiency_record("lightreasoner", seconds, counts, trained)


# ----------------------------------------------------------------------------------------------
# Finding the arms in run, arm and evaluation folders


@dataclass(frozen=True)
class Arm:
    """One compared arm: its evaluation folder (if evaluated) and, for a trained arm, its costs
    (the ``efficiency.json`` record of :func:`efficiency_record`)."""

    label: str
    eval_dir: Path | None
    efficiency: dict[str, Any] | None = None
    baseline: bool = False


def _evaluated(folder: Path) -> Path | None:
    return folder if (folder / SUMMARY_FILE).is_file() else None


def read_efficiency(folder: Path) -> dict[str, Any] | None:
    path = folder / EFFICIENCY_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    missing = [k for k in ("arm", "total_seconds", "problems_sampled", "tokens_tuned") if k not in record]
    if missing:
        raise LightReasonerError(f"{path}: not an efficiency record (no {missing[0]!r})")
    return record


def _is_run_folder(folder: Path) -> bool:
    """A `lightreasoner run` folder (not an evaluation folder, whose run.json is of another kind)."""
    return folder_kind(folder) == RUN_KIND


def find_arms(folders: Sequence[str | Path]) -> list[Arm]:
    """The arms in run folders (baseline = eval_before, lightreasoner, and sft/ and the controls'
    folders when present), arm folders (``lightreasoner sft``/``control`` output, with
    eval_after/ once evaluated) and plain evaluation folders; labels get the folder name in front
    where two would be equal."""
    found: list[tuple[Path, Arm]] = []
    for folder in map(Path, folders):
        if _is_run_folder(folder):
            arms = [Arm(label, _evaluated(folder / eval_dir),
                        None if label == "baseline" else read_efficiency((folder / eval_dir).parent),
                        label == "baseline") for label, eval_dir in ARM_EVAL_DIRS.items()]
            found += [(folder, a) for a in arms if a.eval_dir is not None or a.efficiency is not None]
        elif (efficiency := read_efficiency(folder)) is not None:
            found.append((folder, Arm(str(efficiency["arm"]), _evaluated(folder / EVAL_AFTER_DIR), efficiency)))
        elif _evaluated(folder) is not None:
            load_summary(folder)  # a clear error for a malformed summary
            found.append((folder, Arm(folder.name, folder)))
        else:
            raise LightReasonerError(f"{folder}: neither a `lightreasoner run` folder, an arm folder "
                                     "(efficiency.json) nor an evaluation folder (summary.json)")
    labels = [arm.label for _, arm in found]
    names = dict(zip(map(Path, folders), folder_labels(folders)))
    return [Arm(f"{names[folder]}/{arm.label}" if labels.count(arm.label) > 1 else arm.label,
                arm.eval_dir, arm.efficiency, arm.baseline) for folder, arm in found]


def folder_labels(result_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, or parent/name where two folders share a name (runs/a/eval vs runs/b/eval)."""
    paths = [Path(d).resolve() for d in result_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
