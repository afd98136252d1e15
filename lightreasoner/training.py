"""The fine-tuning stage: packed soft-label KL training of the expert, LoRA or full, on accelerate.

Every arm trains on :class:`examples.PackedExample` (a token sequence with sparse next-token labels at
some positions, read from a file by :mod:`lightreasoner.examples`). The loss at a labelled position is
``KL(v || pi_theta)`` over the label's ids (:func:`contrast.soft_label_kl`, gathered sparsely, never a
vocabulary-sized label row), and the loss of an optimizer step is the mean over all labelled positions
in it (counted globally, across processes and accumulation micro-batches: :mod:`lightreasoner.batching`).

:func:`train` runs the loop: data order is a pure function of the seed (so ``--resume`` from a
checkpoint, :mod:`lightreasoner.checkpoints`, gives the same result as an uninterrupted run, and any
number of processes sees the same optimizer steps), DDP/FSDP/DeepSpeed come from ``accelerate launch``.
See docs/TRAINING.md.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import distributed, models
from .batching import Piece, collate, iter_updates, micro_batches, packed_kl
from .checkpoints import checkpoint_dirs, last_checkpoint, load_checkpoint, save_checkpoint, trim_log
from .config import check_fields, config_to_dict
from .errors import LightReasonerError
from .examples import REFERENCE_SYSTEM_PROMPT, PackedExample, SampleSet, load_samples
from .layout import TRAIN_LOG_FILE, TRAIN_RUN_FILE, TRAIN_SUMMARY_FILE
from .records import JsonlAppender, check_writable, read_json, refuse_own_input, write_json_atomic
from .resume import check_same_settings, setting_names

TRACKERS = ("none", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Fine-tuning settings; defaults are the paper's (LoRA r=8/alpha=16/dropout 0.05 on q,v; lr 5e-5;
    16 kept steps per optimizer step; 1,000 optimizer steps)."""

    full: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank", "min": 1})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha", "min": 1})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout", "min": 0, "max": 1})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                      metadata={"help": "modules LoRA adapts, comma-separated (paper: q_proj,v_proj)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)", "above": 0})
    lr_scheduler: str = field(default="linear", metadata={"help": "linear (decay to 0) or constant",
                                                          "choices": ("linear", "constant")})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up optimizer steps", "min": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)", "min": 0})
    steps_per_update: int = field(default=16, metadata={
        "help": "labels per optimizer step, summed over all processes: kept steps (labelled trajectory positions) "
                "here and in the controls; completion tokens in sft", "min": 1})
    gradient_accumulation_steps: int = field(default=2, metadata={
        "help": "micro-batches per process per optimizer step (memory knob; does not change the maths)", "min": 1})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps (ignored when --epochs is set)", "min": 1})
    epochs: float | None = field(default=None, metadata={"help": "passes over the kept steps; replaces --max-steps",
                                                         "above": 0})
    max_length: int = field(default=2048, metadata={
        "help": "longest forward sequence; kept steps past it are dropped with a warning", "min": 1})
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype: " + models.DTYPE_HELP})
    seed: int = field(default=0, metadata={"help": "seed for LoRA init, dropout and data order"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N optimizer steps (0 = never)", "min": 0})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept on disk", "min": 1})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --out"})
    system_prompt: str = field(default=REFERENCE_SYSTEM_PROMPT, metadata={
        "help": "system prompt used to rebuild prompts of reference-format files"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the model folder"})
    report_to: str = field(default="none", metadata={
        "help": "also send loss, learning rate, gradient norm and kept steps/s to: tensorboard (OUT/logs), wandb or none",
        "choices": TRACKERS})

    def __post_init__(self) -> None:
        check_fields(self)


# What a resumed run must share with the run in --out: the model, the samples (by their counts) and every
# setting but how the work is run (resume.RUNTIME_SETTINGS).
RESUME_SETTINGS = ("model", "examples", "kept_steps", "vocab_size", *setting_names(TrainConfig, "config."))


def total_updates(config: TrainConfig, num_labels: int) -> tuple[int, int]:
    """(optimizer steps, labels trained) for ``num_labels`` labels in the data: ``--epochs`` counts passes
    over them (LightReasoner's kept steps, SFT's completion tokens)."""
    if config.epochs is None:
        return config.max_steps, config.max_steps * config.steps_per_update
    labels = max(1, round(config.epochs * num_labels))
    return math.ceil(labels / config.steps_per_update), labels


def learning_rate(config: TrainConfig, optimizer_step: int, num_updates: int) -> float:
    """LR for optimizer step ``optimizer_step`` (0-based) of ``num_updates``: warm-up then linear decay to 0
    (or constant), the values transformers' ``get_linear_schedule_with_warmup``
    (``get_constant_schedule_with_warmup``) gives HF Trainer's steps, the first warm-up step's 0 included."""
    if optimizer_step < config.warmup_steps:
        return config.learning_rate * optimizer_step / config.warmup_steps
    if config.lr_scheduler == "constant":
        return config.learning_rate
    return config.learning_rate * max(0.0, (num_updates - optimizer_step) / max(1, num_updates - config.warmup_steps))


def _mixed_precision(config: TrainConfig, dtype: torch.dtype) -> str:
    # Full fine-tuning keeps float32 master weights and autocasts; LoRA keeps the frozen base in
    # the low dtype (peft keeps the adapter in float32) and needs no autocast.
    if not config.full or dtype == torch.float32:
        return "no"
    return "bf16" if dtype == torch.bfloat16 else "fp16"


def _prepare_model(model_spec: str, config: TrainConfig, dtype: torch.dtype) -> torch.nn.Module:
    model = models.load_model(model_spec, dtype=torch.float32 if config.full else dtype,
                              trust_remote_code=config.trust_remote_code)
    model.config.use_cache = False
    if config.full:
        model.requires_grad_(True)
    else:
        model = attach_lora(model, config)
    return model.train()


def attach_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """``model`` with a fresh peft LoRA adapter of ``config``'s settings (its base weights frozen)."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), bias="none", task_type=TaskType.CAUSAL_LM)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise LightReasonerError(f"--target-modules: {str(exc).splitlines()[0]}") from None


def _run_record(config: TrainConfig, data: SampleSet, model_spec: str, samples: str | None) -> dict[str, Any]:
    return {"model": models.model_location(model_spec), "samples": samples, "examples": len(data.examples),
            "kept_steps": data.num_labels, "vocab_size": data.vocab_size, "config": config_to_dict(config)}


def run_started(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a training run that got somewhere (a logged step, a checkpoint, its end).
    Its settings alone, left by a start that failed, are no run: a corrected rerun starts afresh."""
    if not (out_dir / TRAIN_RUN_FILE).exists():
        return False
    log_file = out_dir / TRAIN_LOG_FILE
    return bool(checkpoint_dirs(out_dir) or (out_dir / TRAIN_SUMMARY_FILE).exists()
                or (log_file.is_file() and log_file.stat().st_size))


def _make_accelerator(config: TrainConfig, dtype: torch.dtype, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    # Accumulation is ours (micro_batches + distributed.micro_batch): accelerate's own count stays 1, whatever a
    # launcher's --gradient_accumulation_steps says, so it never divides the loss.
    accelerator = Accelerator(mixed_precision=_mixed_precision(config, dtype),
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                              log_with=_tracker(config.report_to),
                              project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                                  logging_dir=str(out_dir / "logs")))
    launched = distributed.processes_launched()
    if launched != accelerator.num_processes:
        # e.g. torchrun on a machine without GPUs: every process would train alone and race on --out.
        raise LightReasonerError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}; "
                                 "on CPU set ACCELERATE_USE_CPU=1 (see docs/TRAINING.md)")
    return accelerator


def _tracker(report_to: str) -> str | None:
    """The accelerate tracker for --report-to, after checking its package is there (accelerate only warns)."""
    if report_to == "none":
        return None
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[report_to]():
        raise LightReasonerError(f"--report-to {report_to}: the {report_to} package is not installed "
                                 f"(pip install {report_to})")
    return report_to


def _start_trackers(accelerator, config: TrainConfig, out_dir: Path) -> None:
    # TensorBoard's hparams take scalars and strings only.
    settings = {k: ",".join(v) if isinstance(v, list) else v for k, v in config_to_dict(config).items() if v is not None}
    accelerator.init_trackers("lightreasoner", config=settings, init_kwargs={"wandb": {"name": out_dir.name}})


def _tracked(record: dict[str, Any], seconds: float) -> dict[str, float]:
    values = {"train/loss": record["loss"], "train/learning_rate": record["lr"],
              "train/kept_steps_per_second": record["kept_steps"] / seconds}
    if record["grad_norm"] is not None:
        values["train/grad_norm"] = record["grad_norm"]
    return values


def _backward(accelerator, model, batches: list[list[Piece]], examples: list[PackedExample], pad_id: int,
              vocab_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward this process's micro-batches of one optimizer step: (sum of KL, forward tokens)."""
    kl_sum = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), device=accelerator.device)
    for i, pieces in enumerate(batches):
        with distributed.micro_batch(accelerator, model, last=i == len(batches) - 1):
            if pieces:
                batch = collate(pieces, examples, pad_id).to(accelerator.device)
                kl = packed_kl(model, batch, vocab_size).sum()
                kl_sum += kl.detach()
                tokens += batch.forward_tokens
            else:
                # Nothing for this process in this micro-batch: a zero-loss forward still joins the collectives.
                dummy = torch.full((1, 1), pad_id, device=accelerator.device)
                kl = model(input_ids=dummy, use_cache=False).logits.sum() * 0.0
            accelerator.backward(kl * scale)
    return kl_sum, tokens


def _clip(accelerator, params: list[torch.nn.Parameter], max_norm: float) -> float | None:
    """Clip the gradients (DeepSpeed clips inside its own step; then this reads its norm); the norm before."""
    if max_norm <= 0:
        return None
    norm = accelerator.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return None if norm is None else float(norm)


def _save_final(accelerator, model, tokenizer, out_dir: Path, config: TrainConfig, dtype: torch.dtype) -> None:
    """The adapter (or model) and tokenizer, gathered on every process and written by the main one."""
    weights = distributed.gathered_weights(accelerator, model)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if config.full:  # trained in float32 master weights; saved in --dtype
            weights = {n: t.to(dtype) if t.is_floating_point() else t for n, t in weights.items()}
        final.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
        if config.full:
            final.config.dtype = dtype  # save_pretrained recorded the float32 the weights were trained in
            final.config.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


def _check_start(out_dir: Path, run: dict[str, Any], config: TrainConfig) -> bool:
    """Whether ``out_dir`` holds this run already, to be continued (``--resume``, same samples and settings);
    another run, or this one without ``--resume``, is refused."""
    started = run_started(out_dir)
    if started and not config.resume:
        raise LightReasonerError(f"{out_dir}: holds a training run already; pass --resume to continue it "
                                 "or choose another --out")
    if started:
        check_same_settings(out_dir / TRAIN_RUN_FILE, read_json(out_dir / TRAIN_RUN_FILE), run, RESUME_SETTINGS,
                            hint=f"--resume continues the run in {out_dir} with its samples and settings: use those, "
                                 "or another --out")
    return started


def _setup(accelerator, model_spec: str | Path, config: TrainConfig, dtype: torch.dtype, data: SampleSet):
    """The model (LoRA-wrapped unless ``--full``) and AdamW, prepared by accelerate: (model, optimizer, AdamW)."""
    model = _prepare_model(str(model_spec), config, dtype)
    rows = model.get_output_embeddings().weight.shape[0]
    if data.vocab_size > rows:
        raise LightReasonerError(f"samples cover {data.vocab_size} vocabulary rows but {model_spec} has only {rows}")
    distributed.check_backend(accelerator, max_grad_norm=config.max_grad_norm,
                              checkpoints=config.save_steps > 0 or config.resume)
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                              weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, adamw)
    return model, optimizer, adamw


def _restore(accelerator, model, adamw, out_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """The run's state: fresh, or that of the last checkpoint under ``--resume`` (the log trimmed back to it)."""
    state = {"step": 0, "seconds": 0.0, "tokens_tuned": 0, "forward_tokens": 0}
    checkpoint = last_checkpoint(accelerator, out_dir) if config.resume else None
    if checkpoint is not None:
        state = load_checkpoint(accelerator, model, adamw, checkpoint)
    if accelerator.is_main_process:
        trim_log(out_dir / TRAIN_LOG_FILE, state["step"])
    accelerator.wait_for_everyone()
    return state


def _optimizer_step(accelerator, model, optimizer, params: list[torch.nn.Parameter], pieces: list[Piece],
                    data: SampleSet, config: TrainConfig, pad_id: int, optimizer_step: int,
                    num_updates: int) -> dict[str, Any]:
    """Train optimizer step ``optimizer_step`` (0-based) on ``pieces``; its log record, but the seconds."""
    world, rank = accelerator.num_processes, accelerator.process_index
    labels = sum(p.num_labels for p in pieces)
    lr = learning_rate(config, optimizer_step, num_updates)
    for group in optimizer.param_groups:
        group["lr"] = lr  # before the backward passes: DeepSpeed steps inside the last one
    mine = micro_batches(pieces, data.examples, world, config.gradient_accumulation_steps)[rank]
    # Mean over the step's global label count: DDP, FSDP and DeepSpeed average gradients over processes.
    kl_sum, tokens = _backward(accelerator, model, mine, data.examples, pad_id, data.vocab_size, world / labels)
    grad_norm = _clip(accelerator, params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    totals = accelerator.reduce(torch.stack([kl_sum, tokens]), reduction="sum").tolist()
    return {"step": optimizer_step + 1, "loss": totals[0] / labels, "kept_steps": labels,
            "forward_tokens": int(totals[1]), "lr": lr, "grad_norm": grad_norm}


def _train_loop(accelerator, model, optimizer, adamw, data: SampleSet, config: TrainConfig, pad_id: int,
                out_dir: Path, state: dict[str, Any], callback: Callable[[dict[str, Any]], None] | None) -> None:
    """The optimizer steps from ``state["step"]`` to the end, each logged (``train_log.jsonl``, trackers,
    ``callback``), with a checkpoint every ``--save-steps``; ``state`` is kept up to date."""
    num_updates, num_labels = total_updates(config, data.num_labels)
    updates = iter_updates([e.num_labels for e in data.examples], config.steps_per_update, config.seed, num_labels)
    for _ in range(state["step"]):  # skip what the checkpoint already holds (the plan is deterministic)
        next(updates)
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare(): FSDP2 replaces the Parameters
    log = JsonlAppender(out_dir / TRAIN_LOG_FILE) if accelerator.is_main_process else None
    _start_trackers(accelerator, config, out_dir)
    bar = tqdm(total=num_updates, initial=state["step"], desc="train", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    start_time, base_seconds = time.perf_counter(), state["seconds"]
    for optimizer_step in range(state["step"], num_updates):
        update_start = time.perf_counter()
        record = _optimizer_step(accelerator, model, optimizer, params, next(updates), data, config, pad_id,
                                 optimizer_step, num_updates)
        state["step"] = done = optimizer_step + 1
        state["seconds"] = base_seconds + time.perf_counter() - start_time
        state["tokens_tuned"] += record["kept_steps"]
        state["forward_tokens"] += record["forward_tokens"]
        record["seconds"] = round(state["seconds"], 3)
        if log is not None:
            log.write([record])
        accelerator.log(_tracked(record, time.perf_counter() - update_start), step=done)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update()
        if callback is not None:
            callback(record)
        if config.save_steps and done % config.save_steps == 0 and done < num_updates:
            save_checkpoint(accelerator, model, adamw, out_dir, done, state, config.save_total_limit)
    bar.close()
    if log is not None:
        log.close()


def _summary(run: dict[str, Any], data: SampleSet, config: TrainConfig, processes: int,
             state: dict[str, Any]) -> dict[str, Any]:
    return {"model": run["model"], "samples": run["samples"], "format": data.format,
            "mode": "full" if config.full else "lora", "processes": processes, "optimizer_steps": state["step"],
            "seconds": round(state["seconds"], 3), "kept_steps": data.num_labels, "examples": len(data.examples),
            "steps_dropped_too_long": data.dropped_too_long, "tokens_tuned": state["tokens_tuned"],
            "forward_tokens": state["forward_tokens"], "epochs": state["tokens_tuned"] / data.num_labels,
            "config": config_to_dict(config)}


def train(model_spec: str | Path, data: SampleSet, config: TrainConfig, out_dir: str | Path, *,
          samples: str | None = None, callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``model_spec`` on ``data``; write the adapter (or model), tokenizer, log and summary.

    Run it as is for one process, or under ``accelerate launch`` for many. ``callback`` gets every
    log record (on every process). Returns the summary written to ``train_summary.json``.
    """
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    refuse_own_input(out_dir, {"model folder": model_spec})
    check_writable(out_dir)
    dtype = models.resolve_dtype(config.dtype, models.resolve_device(None))
    accelerator = _make_accelerator(config, dtype, out_dir)
    run = _run_record(config, data, str(model_spec), samples)
    if _check_start(out_dir, run, config) and (out_dir / TRAIN_SUMMARY_FILE).exists():
        accelerator.print(f"{out_dir}: training is already complete")
        return read_json(out_dir / TRAIN_SUMMARY_FILE)

    set_seed(config.seed)
    tokenizer = models.load_tokenizer(model_spec, trust_remote_code=config.trust_remote_code)
    model, optimizer, adamw = _setup(accelerator, model_spec, config, dtype, data)
    # Written once the model, adapter and optimizer are set up: a start that fails leaves no settings behind.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(out_dir / TRAIN_RUN_FILE, run)
    state = _restore(accelerator, model, adamw, out_dir, config)
    _train_loop(accelerator, model, optimizer, adamw, data, config, tokenizer.pad_token_id, out_dir, state, callback)

    summary = _summary(run, data, config, accelerator.num_processes, state)
    _save_final(accelerator, model, tokenizer, out_dir, config, dtype)
    if accelerator.is_main_process:
        write_json_atomic(out_dir / TRAIN_SUMMARY_FILE, summary)
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group a caller may still use
        tracker.finish()
    accelerator.wait_for_everyone()
    return summary


def train_from_file(model_spec: str | Path, samples: str | Path, config: TrainConfig, out_dir: str | Path,
                    **kwargs: Any) -> dict[str, Any]:
    """Read a sample file (either format) with the model's tokenizer and :func:`train` on it."""
    tokenizer = models.load_tokenizer(model_spec, trust_remote_code=config.trust_remote_code)
    data = load_samples(samples, tokenizer, system_prompt=config.system_prompt, max_length=config.max_length)
    return train(model_spec, data, config, out_dir, samples=str(samples), **kwargs)
