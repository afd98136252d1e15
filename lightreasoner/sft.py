"""The paper's baseline, rejection-sampled SFT, trained by :func:`lightreasoner.training.train`.

The expert samples K solutions per training question (seeded temperature sampling through a backend
of :mod:`lightreasoner.backends`: the cached decoding loop with continuous batching, llama.cpp on the
model's GGUF, or vLLM); each is graded against the gold answer by the evaluation harness's grader;
the finished, correct, distinct ones are kept; the expert is fine-tuned with cross-entropy on their
completion tokens (prompt masked): :func:`examples.one_hot_example` with every completion token,
since KL to a one-hot label is cross-entropy. The control arms (:mod:`lightreasoner.controls`) share this module's
arm-folder settings check; the bookkeeping every arm shares (stages, efficiency) is :mod:`lightreasoner.arms`.

An arm folder is laid out like ``lightreasoner run``'s own arm: ``adapter/`` (LoRA adapter,
tokenizer, train log and summary), ``stages.json`` (wall seconds per stage, summed over resumed
attempts) and ``efficiency.json`` (the paper's cost accounting, see
:func:`lightreasoner.arms.efficiency_record`). Rerunning the same call resumes. See docs/SFT.md.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from . import grading, training
from .arms import Stages, arm_started, efficiency_record
from .backends import BACKENDS, Backend, HFBackend, Request, Sampling, VLLMBackend, resolve_backend
from .config import build_config, check_fields, config_to_dict
from .data import BENCHMARKS, check_same_problems, load_problems, resolve_data_dir
from .problems import Problem
from .decoding import derived_seed
from .errors import LightReasonerError
from .layout import ADAPTER_DIR, ARM_FILE, EFFICIENCY_FILE, SAMPLES_FILE, TRAIN_SUMMARY_FILE
from .models import (chat_prompt, check_prompts_fit, context_length, encode_prompt, load_model, load_tokenizer,
                     model_location, real_vocab_size, resolve_device, resolve_dtype, resolve_model_path,
                     tokenizer_fingerprint)
from .records import (JsonlAppender, check_writable, first_record, iter_jsonl, read_json, refuse_own_input,
                      repair_torn_tail, write_json_atomic)
from .examples import SampleSet, make_sample_set, one_hot_example
from .resume import RUNTIME_SETTINGS, check_same_settings, read_header, setting_names
from .training import TrainConfig

SFT_FORMAT = "lightreasoner-sft-samples"
FORMAT_VERSION = 1
# SFT trains on whole solutions: 4,096 completion tokens per optimizer step is about the paper's
# 16 trajectories per step; 16 tokens (LightReasoner's 16 kept steps) would re-run each solution's
# prefix dozens of times per epoch.
SFT_TOKENS_PER_UPDATE = 4096
# ... in 8 micro-batches of ~650 forward tokens: in 2, a 1.5B expert's float32 activations and
# full-vocabulary logits for ~2,600 tokens at once outgrew 23 GB of RAM.
SFT_MICRO_BATCHES = 8
# Settings that decide what the sample file holds: a resumed run must use the same ones.
RESUME_SETTINGS = ("model", "data", "split", "samples_per_question", "temperature", "top_p", "max_new_tokens",
                   "batch_size", "benchmark", "backend", "train.system_prompt", "train.dtype", "train.seed")
# What a sample file written before a setting existed was made with.
RESUME_DEFAULTS = {"backend": "hf"}

def sft_train_config(values: dict[str, Any] | None = None, origins: dict[str, str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` with SFT's defaults: one pass over every kept completion token (unless
    ``max_steps`` or ``epochs`` is given) at :data:`SFT_TOKENS_PER_UPDATE` tokens per optimizer step
    in :data:`SFT_MICRO_BATCHES` micro-batches;
    the LoRA and optimizer settings are TrainConfig's (the paper's), as the baseline requires.
    ``origins`` says where each value came from, for messages (:func:`config.build_config`)."""
    values = {key.replace("-", "_"): value for key, value in (values or {}).items()}
    if values.get("epochs") is None and "max_steps" not in values:
        values["epochs"] = 1.0
    values.setdefault("steps_per_update", SFT_TOKENS_PER_UPDATE)
    values.setdefault("gradient_accumulation_steps", SFT_MICRO_BATCHES)
    return build_config(TrainConfig, values, source="sft training settings", origins=origins)


@dataclass
class SFTConfig:
    """Rejection sampling settings. Training settings (LoRA, optimizer, dtype, seed, system prompt)
    are the nested :class:`TrainConfig` ``train``; its ``system_prompt`` is the sampling prompt and its
    ``dtype`` the sampling dtype too."""

    model: str = field(default="coder-1.5b", metadata={"help": "expert: short name, folder, .gguf or Hub id"})
    data: str = field(default="gsm8k", metadata={"help": "benchmark name or JSONL file of questions with gold answers"})
    split: str = field(default="train", metadata={"help": "benchmark split"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding <benchmark>/<split>.jsonl"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N questions", "min": 1})
    samples_per_question: int = field(default=4, metadata={"help": "K solutions sampled per question", "min": 1})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature", "above": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold (1 = off)", "above": 0, "max": 1})
    max_new_tokens: int = field(default=512, metadata={
        "help": "generation limit per solution (a solution cut off here is not kept)", "min": 1})
    batch_size: int = field(default=16, metadata={
        "help": "hf and llamacpp: sequences decoded together (continuous batching: a finished one makes room for "
                "the next); vllm: sequences per engine call (a few hundred keep a GPU busy)", "min": 1})
    backend: str = field(default="auto", metadata={
        "help": "sampling backend: hf, llamacpp (CPU, the model's GGUF; optional extra), vllm (GPU; optional extra) "
                "or auto: vllm on a CUDA GPU when installed, else hf", "choices": BACKENDS})
    benchmark: str | None = field(default=None, metadata={
        "help": "grading rules of this benchmark (default: --data when it is a benchmark name)"})
    device: str = field(default="auto", metadata={"help": "sampling device: auto, cpu, cuda, cuda:1, mps"})
    train: TrainConfig = field(default_factory=sft_train_config, metadata={"help": "training settings"})

    def __post_init__(self) -> None:
        check_fields(self)
        self.model = model_location(self.model)

    @property
    def grading_benchmark(self) -> str | None:
        return self.benchmark or (self.data if self.data in BENCHMARKS else None)


def sft_config_dict(config: SFTConfig) -> dict[str, Any]:
    return {**config_to_dict(config), "train": config_to_dict(config.train)}


# What an SFT arm folder's arm.json binds once the folder holds work: every setting but how the work is run
# (resume.RUNTIME_SETTINGS; the sample file refuses another backend's samples on its own).
ARM_RESUME_SETTINGS = ("arm", *setting_names(SFTConfig, but=RUNTIME_SETTINGS | {"train"}),
                       *setting_names(TrainConfig, "train."))


# ----------------------------------------------------------------------------------------------
# Rejection sampling


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # generated tokens, the end token included when it stopped on one
    text: str  # decoded without special tokens: what is graded
    finish: str  # "eos" (an end token) or "length"


def generate_samples(backend: Backend, prompts: list[list[int]], *, num_samples: int, temperature: float,
                     top_p: float, max_new_tokens: int, seeds: list[int]) -> Iterator[tuple[int, list[Completion]]]:
    """``num_samples`` sampled completions of each prompt (token ids), yielded as ``(prompt index,
    completions)`` in prompt order, each prompt as soon as it and every earlier one are done.

    The ``len(prompts) x num_samples`` sequences go to ``backend`` as one request each: sample k of
    prompt i draws from its own random stream, seeded from ``seeds[i]`` and k, so what it samples does
    not depend on what shares its batch (hf: exactly; vLLM: up to the batch's effect on the logits).
    Only this sampling applies: the checkpoint's own generation config (Qwen2.5-Instruct ships top-k
    and a repetition penalty) plays no part. Vocabulary rows past the real vocabulary are never sampled.
    """
    tokenizer = backend.tokenizer
    rows = [(i, k) for i in range(len(prompts)) for k in range(num_samples)]
    requests = [Request(prompts[i], max_new_tokens, derived_seed(seeds[i], k)) for i, k in rows]
    pending: dict[int, dict[int, Completion]] = {}
    next_prompt = 0
    for chunk in backend.generate(requests, Sampling(temperature=temperature, top_p=top_p)):
        for output in chunk:
            i, k = rows[output.index]
            ids = output.token_ids
            text = tokenizer.decode(ids[:-1] if output.finish == "eos" else ids, skip_special_tokens=True)
            pending.setdefault(i, {})[k] = Completion(ids, text, output.finish)
        while len(pending.get(next_prompt, {})) == num_samples:
            finished = pending.pop(next_prompt)
            yield next_prompt, [finished[k] for k in range(num_samples)]
            next_prompt += 1


def open_sampling_backend(config: SFTConfig, tokenizer: Any) -> Backend:
    """The expert on ``config.backend`` (resolved), in the sampling dtype (llamacpp: the GGUF's own weights)."""
    if config.backend == "vllm":
        return VLLMBackend(resolve_model_path(config.model), tokenizer, dtype=config.train.dtype,
                           chunk_size=config.batch_size, device=config.device,
                           trust_remote_code=config.train.trust_remote_code, seed=config.train.seed)
    if config.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(config.model, tokenizer, slots=config.batch_size, device=config.device,
                               trust_remote_code=config.train.trust_remote_code)
    device = resolve_device(config.device)
    model = load_model(config.model, dtype=resolve_dtype(config.train.dtype, device), device=device,
                       trust_remote_code=config.train.trust_remote_code)
    return HFBackend(model, tokenizer, slots=config.batch_size, owns_model=True)


def _problem_source(config: SFTConfig) -> Path | None:
    """The JSONL file the questions come from, when there is one (for file:line messages)."""
    if config.data in BENCHMARKS:
        folder = resolve_data_dir(config.data_dir)
        return folder / config.data / f"{config.split}.jsonl" if folder is not None else None
    path = Path(config.data)
    return path if path.is_file() else None


def check_golds(problems: list[Problem], config: SFTConfig) -> None:
    """Refuse questions without a gold answer, naming the first one's file:line."""
    missing = [index for index, problem in enumerate(problems) if not (problem.gold or "").strip()]
    if not missing:
        return
    index = missing[0]
    source = _problem_source(config)
    if source is not None:
        # load_problems keeps file order and takes the first --limit, so index i is the i-th record.
        line = next(number for i, (number, _) in enumerate(iter_jsonl(source)) if i == index)
        where = f"{source}:{line}"
    else:
        where = f"{config.data} ({config.split}) question {problems[index].id!r}"
    raise LightReasonerError(f"{where}: no gold answer ({len(missing)} of {len(problems)} questions lack one); "
                             "SFT keeps only sampled solutions graded correct against it (LightReasoner "
                             "sampling needs no answers)")


def _header(config: SFTConfig, tokenizer: Any) -> dict[str, Any]:
    return {"type": "header", "format": SFT_FORMAT, "version": FORMAT_VERSION, "model": config.model,
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": real_vocab_size(tokenizer)},
            "settings": sft_config_dict(config)}


def read_sft_samples(path: str | Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The header and the ``(file:line, record)`` pairs of an SFT sample file."""
    _, header, lines = read_header(path, SFT_FORMAT, FORMAT_VERSION, "SFT sample file")
    return header, list(lines)


def _check_resumable(path: Path, config: SFTConfig, problems: list[Problem]) -> set[str]:
    """Ids already sampled into ``path`` (a torn last line is cut and redone); settings and questions must match."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    if (first_record(path) or {}).get("format") != SFT_FORMAT:
        raise LightReasonerError(f"{path}: exists and is not an SFT sample file (no '{SFT_FORMAT}' header); it was "
                                 "left as it is: choose another --out")
    repair_torn_tail(path)
    header, records = read_sft_samples(path)
    check_same_settings(path, header.get("settings", {}), sft_config_dict(config), RESUME_SETTINGS,
                        defaults=RESUME_DEFAULTS)
    check_same_problems(path, (record for _, record in records), problems)
    return {str(record["id"]) for _, record in records}


def grade_samples(problem: Problem, completions: list[Completion], benchmark: str | None,
                  timeout: float = grading.DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Grade each completion; ``kept`` = correct, finished (not cut off), and not a repeat of a kept one."""
    graded, seen = [], set()
    for completion in completions:
        result = grading.grade(completion.text, problem.gold or "", benchmark, timeout=timeout)
        key = completion.text.strip()
        kept = result.correct and completion.finish == "eos" and key not in seen
        if kept:
            seen.add(key)
        graded.append({"completion": completion.text, "completion_ids": completion.ids, "finish": completion.finish,
                       "pred": result.pred, "correct": result.correct, "kept": kept})
    return graded


def sample_solutions(config: SFTConfig, out: str | Path, *, progress: bool = True) -> dict[str, int]:
    """Rejection sampling into ``out`` (JSONL, one line per question with its K graded samples).

    Appended one question at a time, in question order; rerunning resumes. Returns the counts of
    the whole file.
    """
    out = Path(out)
    config = replace(config, backend=resolve_backend(config.backend, config.device))
    problems = load_problems(config.data, split=config.split, data_dir=config.data_dir, limit=config.limit,
                             seed=config.train.seed)
    check_golds(problems, config)
    done = _check_resumable(out, config, problems)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.train.trust_remote_code)
    todo = [p for p in problems if p.id not in done]
    texts = [chat_prompt(tokenizer, p.question, config.train.system_prompt) for p in todo]
    prompt_ids = [encode_prompt(tokenizer, text) for text in texts]
    if todo:
        check_prompts_fit({p.id: len(ids) for p, ids in zip(todo, prompt_ids)}, config.max_new_tokens,
                          context_length(config.model, trust_remote_code=config.train.trust_remote_code),
                          model=config.model, source=config.data)
    # A question's samples depend on the run's seed and the question, not on what ran before it, so a
    # resumed run samples what an uninterrupted one would have.
    seeds = [derived_seed("lightreasoner-sft", config.train.seed, p.id) for p in todo]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="sft sampling", unit="q",
               disable=not progress, dynamic_ncols=True)
    kept = 0
    with ExitStack() as stack:
        # The header is written with the first question, so a start that fails leaves no file behind.
        writer = stack.enter_context(JsonlAppender(out, header=_header(config, tokenizer)))
        backend = stack.enter_context(open_sampling_backend(config, tokenizer)) if todo else None
        for i, completions in (generate_samples(backend, prompt_ids, num_samples=config.samples_per_question,
                                                temperature=config.temperature, top_p=config.top_p,
                                                max_new_tokens=config.max_new_tokens, seeds=seeds)
                               if backend is not None else ()):
            problem = todo[i]
            samples = grade_samples(problem, completions, config.grading_benchmark)
            writer.write([{"type": "question", "id": problem.id, "question": problem.question, "gold": problem.gold,
                           "prompt": texts[i], "prompt_ids": prompt_ids[i], "samples": samples}])
            kept += sum(s["kept"] for s in samples)
            bar.update(1)
            bar.set_postfix(kept=kept)
    bar.close()
    return sample_counts(out)


def sample_counts(path: str | Path) -> dict[str, int]:
    """Questions sampled, tokens generated, solutions sampled/correct/kept, and kept completion tokens."""
    _, records = read_sft_samples(path)
    samples = [s for _, r in records for s in r["samples"]]
    return {"problems_sampled": len(records), "tokens_generated": sum(len(s["completion_ids"]) for s in samples),
            "solutions_sampled": len(samples), "solutions_correct": sum(bool(s["correct"]) for s in samples),
            "examples_kept": sum(bool(s["kept"]) for s in samples),
            "kept_tokens": sum(len(s["completion_ids"]) for s in samples if s["kept"])}


def sft_examples(path: str | Path, tokenizer: Any, *, max_length: int = 2048) -> SampleSet:
    """One example per kept solution: one-hot labels on every completion token, the prompt masked."""
    path = Path(path)
    header, records = read_sft_samples(path)
    info = header.get("tokenizer") or {}
    if info.get("fingerprint") != tokenizer_fingerprint(tokenizer):
        raise LightReasonerError(f"{path}:1: sampled with a different tokenizer than the model being trained")
    examples = [one_hot_example(record["prompt_ids"], sample["completion_ids"], source=where)
                for where, record in records for sample in record["samples"] if sample["kept"]]
    if not examples:
        raise LightReasonerError(f"{path}: no sampled solution was graded correct, so there is nothing to fine-tune "
                                 "on; sample more questions, more --samples-per-question or a larger --max-new-tokens")
    # training's own loader tail: drop labels past max_length (with a warning) as for every other format
    return make_sample_set(examples, info["vocab_size"], "sft", path, max_length)


# ----------------------------------------------------------------------------------------------
# Arm folders


def _check_arm_settings(out_dir: Path, settings: dict[str, Any], compared: tuple[str, ...] = ARM_RESUME_SETTINGS,
                        started: Callable[[Path], bool] = arm_started) -> None:
    """``arm.json`` records what the folder was made with; once it holds work (``started``), a rerun whose
    ``compared`` settings differ is refused (before that, as after a start that failed, the new settings
    replace the old)."""
    path = out_dir / ARM_FILE
    if path.exists() and started(out_dir):
        check_same_settings(path, read_json(path), settings, compared)
    write_json_atomic(path, settings)


def sft(config: SFTConfig, out_dir: str | Path, *, progress: bool = True,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Rejection-sampled SFT into ``out_dir`` (samples.jsonl, adapter/, efficiency.json); resumes.

    Returns the efficiency record (arm ``"sft"``).
    """

    out_dir = Path(out_dir)
    refuse_own_input(out_dir, {"model folder": config.model})
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config, train=replace(config.train, resume=True))  # a rerun continues the folder
    _check_arm_settings(out_dir, {"arm": "sft", **sft_config_dict(config)})
    stages = Stages(out_dir)
    samples = out_dir / SAMPLES_FILE
    stages.timed("sample", lambda: sample_solutions(config, samples, progress=progress), say)
    stages.finish("sample")

    def fine_tune() -> None:
        tokenizer = load_tokenizer(config.model, trust_remote_code=config.train.trust_remote_code)
        data = sft_examples(samples, tokenizer, max_length=config.train.max_length)
        training.train(config.model, data, config.train, out_dir / ADAPTER_DIR, samples=str(samples))

    stages.timed("train", fine_tune, say)
    stages.finish("train")
    seconds = {name: stages.state[name]["seconds"] for name in ("sample", "train")}
    record = efficiency_record("sft", seconds, sample_counts(samples),
                         read_json(out_dir / ADAPTER_DIR / TRAIN_SUMMARY_FILE))
    write_json_atomic(out_dir / EFFICIENCY_FILE, record)
    return record
