"""Training checkpoints: ``checkpoints/step-N`` under a training folder, written every ``--save-steps``
optimizer steps and read by ``--resume``.

A checkpoint holds the trainable weights (safetensors), the optimizer state, every process's RNG state
and ``state.json`` (optimizer steps done, seconds, tokens), gathered whatever the sharding (FSDP,
DeepSpeed: :mod:`lightreasoner.distributed`). It is written into ``step-N.tmp`` and renamed, with
``state.json`` last, so a folder without it is incomplete and never read; only the newest
``--save-total-limit`` are kept. A resumed run also trims the training log back to its checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import distributed
from .errors import LightReasonerError
from .layout import CHECKPOINTS_DIR
from .records import JsonlAppender, iter_jsonl, read_json, write_json_atomic


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The complete checkpoints of a training folder, oldest first."""
    root = out_dir / CHECKPOINTS_DIR
    found = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _trainable_names(accelerator, model: torch.nn.Module) -> set[str]:
    return {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(accelerator, model, optimizer, out_dir: Path, optimizer_step: int, state: dict[str, Any],
                    limit: int) -> None:
    """Write ``checkpoints/step-N`` (N = ``optimizer_step``) holding ``state``, then keep the newest ``limit``."""
    final = out_dir / CHECKPOINTS_DIR / f"step-{optimizer_step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    trainable = _trainable_names(accelerator, model)
    weights = {n: t.contiguous() for n, t in distributed.gathered_weights(accelerator, model).items() if n in trainable}
    optimizer_state = distributed.gathered_optimizer_state(model, optimizer)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)  # by every process: the nodes of a cluster may not share a disk
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(optimizer_state, tmp / "optimizer.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "state.json", state)  # written last: a dir without it is incomplete
        tmp.rename(final)
        for old in checkpoint_dirs(out_dir)[:-max(1, limit)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def last_checkpoint(accelerator, out_dir: Path) -> Path | None:
    """The checkpoint to resume from; every process must see the same one (nodes need a shared --out)."""
    found = checkpoint_dirs(out_dir)
    optimizer_step = int(found[-1].name[5:]) if found else 0
    seen = set(accelerator.gather(torch.tensor([optimizer_step], device=accelerator.device)).tolist())
    if len(seen) > 1:
        raise LightReasonerError(f"{out_dir}: the processes see different checkpoints (steps {sorted(seen)}); "
                                 "--resume on several machines needs --out on a filesystem they all share")
    return found[-1] if found else None


def load_checkpoint(accelerator, model, optimizer, path: Path) -> dict[str, Any]:
    """Restore the trainable weights, optimizer and this process's RNG from ``path``; its ``state.json``."""
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise LightReasonerError(f"{path}: no RNG state for process {accelerator.process_index}; resume with the same "
                                 "number of processes (and, on several machines, --out on a shared filesystem)")
    weights = load_file(path / "trainable.safetensors")
    if set(weights) != _trainable_names(accelerator, model):
        raise LightReasonerError(f"{path}: checkpoint holds other trainable weights than this run's model")
    distributed.load_gathered(model, optimizer, weights, torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(rng_file, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return read_json(path / "state.json")


def trim_log(path: Path, optimizer_step: int) -> None:
    """Drop log lines after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = [record for _, record in iter_jsonl(path) if record.get("step", 0) <= optimizer_step]
    tmp = path.with_name(path.name + ".tmp")
    with JsonlAppender(tmp) as out:
        out.write(kept)
    tmp.replace(path)
