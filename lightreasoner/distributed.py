"""What differs between one process, DDP, FSDP2 and DeepSpeed, kept in one place so the training loop need not know.

accelerate does the wrapping (``accelerate launch --config_file configs/accelerate/<backend>.yaml``). This
module checks the backend before ``prepare()`` (refusing what cannot work, filling DeepSpeed's own
settings with ours), marks gradient-accumulation boundaries, and gathers sharded weights and optimizer
state on every process before the main one saves them (and spreads them back on resume). See
docs/TRAINING.md, "Several GPUs or nodes".
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from .errors import LightReasonerError


def processes_launched() -> int:
    """How many processes the launcher started (torchrun, accelerate launch and deepspeed set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_several_processes(instead: str) -> None:
    """For the commands that must run once: under a multi-process launch every process would do all
    the work, on the same device, into the same files."""
    launched = processes_launched()
    if launched > 1:
        raise LightReasonerError(f"runs as one process, but {launched} were launched (WORLD_SIZE={launched}): each "
                                 f"would do all the work and write the same files; {instead}")


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def check_backend(accelerator, *, max_grad_norm: float, checkpoints: bool) -> None:
    """Before ``prepare()``: refuse FSDP1, and align DeepSpeed's settings with ours (or refuse them)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise LightReasonerError("FSDP version 1 is not supported (with LoRA it would flatten the frozen low-precision "
                                 "base and the float32 adapter into one parameter, which it cannot); set fsdp_version: "
                                 "2 in the accelerate config (configs/accelerate/fsdp2.yaml)")
    if _is_deepspeed(accelerator):
        if checkpoints:
            raise LightReasonerError("DeepSpeed partitions the optimizer state in its own format, which checkpoints here "
                                     "do not save: pass --save-steps 0 (and no --resume), or train with FSDP2 "
                                     "(configs/accelerate/fsdp2.yaml), which checkpoints and resumes")
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, max_grad_norm)


def configure_deepspeed(ds: dict[str, Any], max_grad_norm: float) -> None:
    """Fill DeepSpeed's ``auto`` settings with ours, in place; refuse the ones that contradict ours.

    Under DeepSpeed, ``accelerator.backward`` runs the engine, which divides the loss by its own
    accumulation count and, at the boundary we mark, clips and steps the optimizer itself.
    """
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise LightReasonerError(f"DeepSpeed config: remove its '{section}' section; lightreasoner sets AdamW and "
                                     "the learning-rate schedule itself (--learning-rate, --lr-scheduler)")
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        # No dataloader goes through prepare() (micro-batches are built per step from kept steps), so DeepSpeed
        # cannot infer this; it only enters its batch-size bookkeeping, not the loss.
        ds["train_micro_batch_size_per_gpu"] = 1
    if ds.get("gradient_accumulation_steps", "auto") not in ("auto", 1):
        raise LightReasonerError(f"DeepSpeed config: gradient_accumulation_steps is {ds['gradient_accumulation_steps']}; "
                                 "set it to auto: lightreasoner marks the accumulation boundaries itself "
                                 "(--gradient-accumulation-steps) and another value would divide the loss again")
    ds["gradient_accumulation_steps"] = 1
    clipping = ds.get("gradient_clipping", "auto")
    if clipping == "auto":
        ds["gradient_clipping"] = max_grad_norm
    elif float(clipping) != max_grad_norm:
        raise LightReasonerError(f"DeepSpeed config: gradient_clipping {clipping} contradicts --max-grad-norm "
                                 f"{max_grad_norm} (DeepSpeed clips inside its own step); set it to auto")
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") == 3:
        # ZeRO-3 holds only shards; gathering them is how the trained weights get saved (accelerate defaults to off).
        zero["stage3_gather_16bit_weights_on_model_save"] = True


@contextlib.contextmanager
def micro_batch(accelerator, model: torch.nn.Module, *, last: bool) -> Iterator[None]:
    """One micro-batch of an optimizer step: gradients are reduced across processes in the last only.

    ``sync_gradients`` is also what tells DeepSpeed where the accumulation boundary is (it steps inside
    the last backward) and lets accelerate's optimizer wrapper step.
    """
    accelerator.sync_gradients = last
    with contextlib.nullcontext() if last else accelerator.no_sync(model):
        yield


def _full_state_options(**extra: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def gathered_weights(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights without the frozen parameters (the adapter for LoRA, everything for full fine-tuning),
    as whole CPU tensors on the main process and ``{}`` on the others.

    A collective: every process must call it, since under FSDP and ZeRO-3 each holds only shards.
    """
    if _is_deepspeed(accelerator):
        state = accelerator.get_state_dict(model)  # ZeRO-3: gathers on all processes, returns on the main one
        frozen = {n for n, p in accelerator.unwrap_model(model).named_parameters() if not p.requires_grad}
        return {n: t.cpu() for n, t in state.items() if n not in frozen} if accelerator.is_main_process else {}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_state_options(cpu_offload=True, ignore_frozen_params=True))


def gathered_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole, on the main process (a collective, as above)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options(cpu_offload=True))


def load_gathered(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                  optimizer_state: dict[str, Any]) -> None:
    """Load what :func:`gathered_weights` and :func:`gathered_optimizer_state` saved; each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optimizer_state,
                   options=_full_state_options(strict=False))
