"""A run folder's stages.json: which stages are done and the seconds each took (the efficiency
table's source), shared by ``lightreasoner run`` and the arms it trains (SFT, the controls)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from .layout import STAGES_FILE
from .records import read_json, write_json_atomic


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

    def run(self, name: str, work: Callable[[], Any], say: Callable[[str], None]) -> Any:
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
