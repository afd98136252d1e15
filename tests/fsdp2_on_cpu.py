"""Train with accelerate's FSDP2 path on a CPU (gloo) process group: killed at one step, then resumed.

accelerate sends FSDP to GPUs only: on CPU it sets up plain multi-process training and drops the FSDP
plugin. Right after an Accelerator is made, this turns its state to FSDP with the plugin the accelerate
config put in the environment (the FSDP_* variables of configs/accelerate/fsdp2.yaml), so accelerate's
own prepare() shards the model with torch's fully_shard and all that follows runs as it would on GPUs.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 \
        tests/fsdp2_on_cpu.py MODEL SAMPLES OUT '{"max_steps": 5, ...}' KILL_AT

Prints, from the main process, JSON: whether each prepare() returned a model sharded by fully_shard,
and the steps the resumed run trained.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import accelerate
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_make_accelerator = accelerate.Accelerator.__init__
_prepare = accelerate.Accelerator.prepare
sharded: list[bool] = []


def _make_fsdp2_accelerator(self, *args, **kwargs) -> None:
    _make_accelerator(self, *args, **kwargs)
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the FSDP_* environment variables
    self.state.distributed_type = DistributedType.FSDP


def _prepare_and_record(self, *args):
    from torch.distributed.fsdp import FSDPModule

    prepared = _prepare(self, *args)
    sharded.append(isinstance(prepared[0], FSDPModule))
    return prepared


def main(model: str, samples: str, out: str, settings: str, kill_at: str) -> None:
    from lightreasoner.training import TrainConfig, train_from_file

    accelerate.Accelerator.__init__ = _make_fsdp2_accelerator
    accelerate.Accelerator.prepare = _prepare_and_record
    config = TrainConfig(**json.loads(settings))

    def kill(record: dict) -> None:
        if record["step"] == int(kill_at):
            raise KeyboardInterrupt

    try:
        train_from_file(model, samples, config, out, callback=kill)
    except KeyboardInterrupt:
        pass
    seen: list[int] = []
    train_from_file(model, samples, dataclasses.replace(config, resume=True), out,
                    callback=lambda record: seen.append(record["step"]))
    if accelerate.PartialState().is_main_process:
        print(json.dumps({"sharded": sharded, "resumed": seen}))


if __name__ == "__main__":
    main(*sys.argv[1:])
