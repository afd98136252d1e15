"""Several processes: DDP and FSDP2 on gloo match one process; accelerate configs; DeepSpeed settings;
checkpoints on machines without a shared disk; commands that must run once refuse a multi-process launch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import tiny
from lightreasoner import checkpoints, distributed, models, training
from lightreasoner.cli import main as cli_main
from lightreasoner.errors import LightReasonerError
from test_training import fast_config, losses, sample_lines, write_jsonl

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
SETTINGS = dict(max_steps=5, save_steps=2)  # checkpoints at steps 2 and 4


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, pair) -> tuple[Path, Path]:
    """(samples, output) of a single-process run: what several processes must reproduce."""
    root = tmp_path_factory.mktemp("one")
    samples = write_jsonl(root / "s.jsonl", sample_lines(models.load_tokenizer(pair[0])))
    training.train_from_file(pair[0], samples, fast_config(**SETTINGS), root / "out")
    return samples, root / "out"


def launch(args: list[str], *, config: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two processes on gloo through accelerate launch (ACCELERATE_USE_CPU: this machine has no GPU)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with socket.socket() as probe:  # a port free now, not a fixed one another run may hold
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    where = ["--config_file", str(CONFIGS / config)] if config else ["--multi_gpu", "--mixed_precision", "no",
                                                                       "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *where, "--num_processes", "2", "--num_machines",
               "1", "--main_process_port", port, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=atol, rtol=0)


def test_two_processes_on_gloo_give_the_same_loss_curve_checkpoints_and_adapter(tmp_path, pair, one_process):
    samples, one = one_process
    options = ["--dtype", "float32", "--steps-per-update", "8", "--max-steps", "5", "--save-steps", "2",
               "--learning-rate", "1e-2", "--lora-dropout", "0"]
    launch(["-m", "lightreasoner.cli", "train", "--model", str(pair[0]), "--samples", str(samples),
            "--out", str(tmp_path / "two"), "--allow-incomplete", *options])  # a hand-made file has no .meta.json
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(one), abs=1e-5)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-000004"
    assert sorted(p.name for p in checkpoint.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert_same_weights(one / "checkpoints" / "step-000004" / "trainable.safetensors",
                        checkpoint / "trainable.safetensors", atol=1e-5)
    assert_same_weights(one / "adapter_model.safetensors", tmp_path / "two" / "adapter_model.safetensors", atol=1e-5)


def test_fsdp2_on_gloo_matches_one_process_through_a_kill_and_resume(tmp_path, pair, one_process):
    """accelerate's own FSDP2 prepare (fully_shard per decoder layer) with the settings of
    configs/accelerate/fsdp2.yaml, on CPU (see tests/fsdp2_on_cpu.py): the sharded run clips, checkpoints
    (gathering the shards), is killed after step 4, resumes from its checkpoint and saves the adapter."""
    samples, one = one_process
    out = tmp_path / "fsdp2"
    settings = json.dumps({**fast_config(**SETTINGS).__dict__})
    result = launch([str(ROOT / "tests" / "fsdp2_on_cpu.py"), str(pair[0]), str(samples), str(out), settings, "5"],
                    config="fsdp2.yaml")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"sharded": [True, True], "resumed": [5]}
    grad_norms = [json.loads(line)["grad_norm"] for line in (one / "train_log.jsonl").read_text().splitlines()]
    assert min(grad_norms) > fast_config().max_grad_norm  # clipping acted at every step, so it must act on the shards
    assert losses(out) == pytest.approx(losses(one), abs=1e-5)
    assert_same_weights(one / "checkpoints" / "step-000004" / "trainable.safetensors",
                        out / "checkpoints" / "step-000004" / "trainable.safetensors", atol=1e-5)
    assert_same_weights(one / "adapter_model.safetensors", out / "adapter_model.safetensors", atol=1e-5)


# --- accelerate configs and backends -----------------------------------------------------------


def launch_environment(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "lightreasoner.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_accelerate_configs_parse_and_set_up_their_backend(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    kinds = {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp2.yaml": DistributedType.FSDP,
             "deepspeed-zero2.yaml": DistributedType.DEEPSPEED, "deepspeed-zero3.yaml": DistributedType.DEEPSPEED}
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(kinds)
    for name, kind in kinds.items():
        assert load_config_from_file(str(CONFIGS / name)).distributed_type == kind
    monkeypatch.setattr(os, "environ", launch_environment(CONFIGS / "fsdp2.yaml"))
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy) and "transformer" in str(plugin.auto_wrap_policy)
    for stage in (2, 3):
        monkeypatch.setattr(os, "environ", launch_environment(CONFIGS / f"deepspeed-zero{stage}.yaml"))
        ds = DeepSpeedPlugin().deepspeed_config
        distributed.configure_deepspeed(ds, max_grad_norm=0.5)
        assert ds["zero_optimization"]["stage"] == stage
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == \
            (1, 1, 0.5)
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


@pytest.mark.parametrize("change, message", [
    ({"gradient_clipping": 0.3}, "gradient_clipping 0.3 contradicts --max-grad-norm 1.0"),
    ({"gradient_accumulation_steps": 4}, "set it to auto"),
    ({"optimizer": {"type": "AdamW"}}, "remove its 'optimizer' section"),
    ({"scheduler": {"type": "WarmupLR"}}, "remove its 'scheduler' section"),
])
def test_deepspeed_settings_that_contradict_ours_are_refused(change, message):
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 2}, **change}
    with pytest.raises(LightReasonerError, match=message):
        distributed.configure_deepspeed(ds, max_grad_norm=1.0)


class Backend:
    """An accelerator as far as check_backend looks at it."""

    def __init__(self, kind: DistributedType, fsdp2: bool = False) -> None:
        self.distributed_type, self.is_fsdp2 = kind, fsdp2


def test_fsdp1_and_deepspeed_checkpoints_are_refused_before_any_work():
    with pytest.raises(LightReasonerError, match="FSDP version 1 .* fsdp_version: 2"):
        distributed.check_backend(Backend(DistributedType.FSDP), max_grad_norm=1.0, checkpoints=False)
    with pytest.raises(LightReasonerError, match="--save-steps 0"):
        distributed.check_backend(Backend(DistributedType.DEEPSPEED), max_grad_norm=1.0, checkpoints=True)
    distributed.check_backend(Backend(DistributedType.FSDP, fsdp2=True), max_grad_norm=1.0, checkpoints=True)


# --- checkpoints on machines that do not share a disk --------------------------------------------


class SecondMachine:
    """Process 1 of 2, alone on a machine whose disk the main process never writes to."""

    process_index, is_main_process, distributed_type, device = 1, False, DistributedType.NO, torch.device("cpu")

    def __init__(self, main_sees_step: int) -> None:
        self.main_sees_step = main_sees_step

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model):
        return model

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.tensor([self.main_sees_step]), tensor])


def test_every_process_makes_the_folder_it_writes_and_a_resume_needs_a_shared_disk(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny.make_model(3, layers=1), LoraConfig(r=2, target_modules=["q_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    node = tmp_path / "second-machine"
    checkpoints.save_checkpoint(SecondMachine(4), model, optimizer, node, 4, {"step": 4}, limit=2)
    assert [p.name for p in (node / "checkpoints" / "step-000004.tmp").iterdir()] == ["rng-1.pt"]
    with pytest.raises(LightReasonerError, match=r"see different checkpoints \(steps \[0, 4\]\).* share"):
        checkpoints.last_checkpoint(SecondMachine(4), node)


# --- commands that must run once ---------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["sample", "--out", "{out}/s.jsonl"],
    ["eval", "--out", "{out}/eval"],
    ["run", "--out", "{out}/run"],
    ["sft", "--out", "{out}/sft"],
    ["control", "--model", "coder-1.5b", "--samples", "{out}/s.jsonl", "--out", "{out}/control"],
])
def test_single_process_commands_refuse_a_multi_process_launch(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cli_main([part.format(out=tmp_path) for part in command]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "4 were launched" in error and "without accelerate launch" in error
    assert not any(tmp_path.iterdir())  # refused before writing anything
