"""Every file and folder name the stages write, and what kind of folder a run.json describes.

A ``lightreasoner run`` folder::

    run.json                 kind "run": the settings (a rerun that changes a setting of a started stage is
                             refused, except a larger eval budget: it grows every evaluation), and with a time
                             budget the plan and the speeds it was made from
    stages.json              per stage: done, seconds
    samples.jsonl(.meta.json)  sampling stage (docs/FORMAT.md)
    adapter/                 training stage: LoRA adapter, tokenizer, train_run.json, train_log.jsonl,
                             train_summary.json, checkpoints/
    adapter_fit.json         the adapter's fit to kept steps trained on and never reached
    eval_before/ eval_after/ evaluation folders of the expert without and with the adapter
    efficiency.json          the paper's cost accounting of this (the lightreasoner) arm
    sft/ format-only/ random-positions/ entropy-one-hot/ ...
                             the other arms when asked for: each an arm folder plus eval_after/
    report.md report.html kl.png loss.png (arms.png gains.png)

An arm folder (``lightreasoner sft`` / ``control``): arm.json (its settings), stages.json, samples.jsonl
(sft) or examples.jsonl (a control), adapter/, efficiency.json, and eval_after/ once evaluated.

An evaluation folder: run.json (kind "eval": the settings its answers were made with),
``<benchmark>.jsonl`` (one answer per line), summary.json, and workers/ with ``--workers``.
A published folder (``lightreasoner publish``) holds samples.outputs.jsonl and examples.outputs.jsonl
in place of the sample files.
"""

from __future__ import annotations

from pathlib import Path

from .records import read_json

RUN_FILE = "run.json"
STAGES_FILE = "stages.json"
SAMPLES_FILE = "samples.jsonl"
ADAPTER_DIR = "adapter"
ADAPTER_FIT_FILE = "adapter_fit.json"
EFFICIENCY_FILE = "efficiency.json"
EVAL_BEFORE_DIR = "eval_before"
EVAL_AFTER_DIR = "eval_after"
ARM_FILE = "arm.json"
EXAMPLES_FILE = "examples.jsonl"

# Inside an adapter folder (lightreasoner train).
TRAIN_RUN_FILE = "train_run.json"
TRAIN_LOG_FILE = "train_log.jsonl"
TRAIN_SUMMARY_FILE = "train_summary.json"
CHECKPOINTS_DIR = "checkpoints"  # step-N/ inside: the checkpoint format is training's own
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft needs to load it

# Inside an evaluation folder, besides the answer files (answers_file).
SUMMARY_FILE = "summary.json"
WORKERS_DIR = "workers"
WORKER_CONFIG_FILE = "config.json"
WORKER_LOG_FILE = "log.txt"

REPORT_MD, REPORT_HTML = "report.md", "report.html"
KL_FIGURE, LOSS_FIGURE, ARMS_FIGURE, GAINS_FIGURE = "kl.png", "loss.png", "arms.png", "gains.png"

PUBLISHED_SAMPLES_FILE = "samples.outputs.jsonl"
PUBLISHED_EXAMPLES_FILE = "examples.outputs.jsonl"

# What run.json describes, in its "kind".
RUN_KIND = "run"
EVAL_KIND = "eval"


def meta_path(samples: Path) -> Path:
    """The sidecar of a sample file: what its sampling did (``<samples>.meta.json``)."""
    return samples.with_name(samples.name + ".meta.json")


def answers_file(eval_dir: Path, benchmark: str) -> Path:
    """An evaluation folder's answers to one benchmark."""
    return eval_dir / f"{benchmark}.jsonl"


def folder_kind(folder: str | Path) -> str | None:
    """What the run.json of ``folder`` describes (:data:`RUN_KIND`, :data:`EVAL_KIND`); None without one.
    A run.json written before it recorded its kind is told by its keys: a run folder's has a settings
    section, an evaluation's the token budget of its answers."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        return None
    if "kind" in record:
        return record["kind"]
    if "settings" in record:
        return RUN_KIND
    return EVAL_KIND if "max_new_tokens" in record else None
