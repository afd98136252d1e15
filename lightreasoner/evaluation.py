"""Zero-shot greedy evaluation on the paper's benchmarks: generate, grade, summarise, resume.

``evaluate(config, out_dir)`` writes into ``out_dir``:

* ``<benchmark>.jsonl``: one line per question (id, prompt, completion, gold, pred, source,
  correct, correct_strict, tokens, finish, seconds, completion_ids), appended and fsynced as each
  chunk of answers ends (one answer with the hf and llamacpp backends, one engine call with vLLM). A
  rerun with the same ``out_dir`` skips the questions already there, so a killed evaluation resumes
  where it stopped.
  ``correct`` is the Qwen2.5-Math toolkit's verdict, ``correct_strict`` also asks for a stated final
  answer in a completion that was not cut off (:mod:`lightreasoner.grading`).
* ``run.json``: the settings that decide the completions (model, adapter, prompt, max tokens,
  dtype, backend); a rerun with different ones is refused rather than mixed into old results,
  except a larger ``max_new_tokens``: it grows the folder (see :func:`needs_growth`).
* ``summary.json``: per benchmark n, both verdicts' counts, accuracies and 95% Wilson intervals,
  the answers cut off at the token limit, tokens and seconds, plus the unweighted average over
  benchmarks (the paper's "Avg.") of both; rewritten as each benchmark ends, with the benchmarks
  still to come under ``pending``.

:func:`regrade` grades a folder's answers again (e.g. a published one, whose gold answers come back
from the data), and :func:`score` grades completions made elsewhere.

Generation is greedy pass@1 like the Qwen2.5-Math toolkit, through a backend of
:mod:`lightreasoner.backends` (the cached decoding loop with continuous batching, llama.cpp on the
model's GGUF file, or one vLLM engine for the whole evaluation), stopping on every end token of
:func:`lightreasoner.models.stop_token_ids`. Vocabulary rows past the tokenizer's real vocabulary
are never generated. The model's own generation config (which may sample) plays no part.
``workers`` > 1 runs one evaluation process per GPU over shards of the questions and merges them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


from . import grading, prompts
from .backends import (BACKENDS, STOP_STRING_TOKENS, Backend, HFBackend, Output, Request, Sampling, VLLMBackend,
                       resolve_backend)
from .config import SettingError, check_fields, config_to_dict
from .data import BENCHMARKS, GENERATED, check_same_problems, load_problems
from .problems import Problem
from .errors import LightReasonerError
from .records import (JsonlAppender, check_writable, first_record, iter_jsonl, read_json, refuse_own_input,
                      repair_torn_tail, write_json_atomic, write_text_atomic)

from .stats import wilson_interval

PAPER_BENCHMARKS = ["gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]
# Settings that decide the completions, recorded in run.json: a folder's answers are only resumed under the
# same ones, but for max_new_tokens, a budget that may grow (the cut-off answers are continued). The adapter
# counts by its content, not its path, so answers resume wherever the same adapter is rebuilt.
RESUME_SETTINGS = ("model", "adapter_sha256", "prompt", "max_new_tokens", "dtype", "backend", "split")


@dataclass
class EvalConfig:
    model: str = field(default="", metadata={"help": "model: short name, local folder, .gguf file or Hub id"})
    adapter: str | None = field(default=None, metadata={"help": "peft (LoRA) adapter folder to load on the model"})
    benchmarks: list[str] = field(default_factory=lambda: list(PAPER_BENCHMARKS),
                                  metadata={"help": "benchmarks to run, comma separated; default: the paper's seven, " + ",".join(PAPER_BENCHMARKS)})
    split: str = field(default="test", metadata={"help": "data split file <data-dir>/<name>/<split>.jsonl"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with <benchmark>/<split>.jsonl files"})
    limit: int | None = field(default=None, metadata={"help": "only the first N questions of each benchmark",
                                                      "min": 1})
    sample: int | dict[str, int] | None = field(default=None, metadata={
        "help": "a seeded random N questions of each benchmark, or per benchmark: gsm8k=300,math500=100 "
                "(benchmarks not named: all questions); a smaller N of the same seed is a subset of a larger one"})
    seed: int = field(default=0, metadata={"help": "seed for --sample"})
    prompt: str = field(default=prompts.DEFAULT_PROMPT, metadata={"help": "prompt template: qwen25-math-cot or plain"})
    max_new_tokens: int = field(default=2048, metadata={"help": "generation limit per answer", "min": 1})
    batch_size: int = field(default=16, metadata={
        "help": "hf and llamacpp: questions decoded together; vllm: questions per engine call, their answers "
                "written when it returns (the engine batches within a call by memory; a few hundred keep a GPU "
                "busy)", "min": 1})
    backend: str = field(default="auto", metadata={
        "help": "hf (the cached decoding loop), llamacpp (CPU, the model's GGUF; optional extra), vllm (GPU; "
                "optional extra) or auto: vllm on a CUDA GPU when installed; on a CPU llamacpp for a GGUF model "
                "(the embedded pair) when installed; else hf. A folder keeps the backend of its first answers",
        "choices": BACKENDS})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware computes it, else fp16 on GPU / fp32 on CPU), bfloat16, float16 or float32"})
    workers: int = field(default=1, metadata={
        "help": "evaluation processes, one per GPU (worker k sees only the k-th visible GPU): each answers every "
                "workers-th question into <out>/workers/, merged into --out when all are done", "min": 1})
    shard: str | None = field(default=None, metadata={
        "help": "K/N: only questions K, K+N, K+2N, ... of each benchmark (what --workers gives worker K)"})
    grading_timeout: float = field(default=grading.DEFAULT_TIMEOUT,
                                   metadata={"help": "seconds allowed to grade one answer", "above": 0})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the model folder"})

    def __post_init__(self) -> None:
        from .models import model_location

        check_fields(self)
        self.model = model_location(self.model)
        known = [*BENCHMARKS, *GENERATED]
        unknown = [name for name in self.benchmarks if name not in known]
        if unknown:
            raise SettingError("benchmarks", f"unknown benchmark {unknown[0]!r} (choose from {', '.join(known)})")
        if not self.benchmarks:
            raise SettingError("benchmarks", "no benchmark given")
        if self.prompt not in prompts.PROMPTS:
            raise SettingError("prompt", f"unknown prompt {self.prompt!r} (choose from {', '.join(prompts.PROMPTS)})")
        if self.workers > 1 and self.shard is not None:
            raise SettingError("shard", "a shard is one worker's part; give --shard or --workers, not both")
        if self.shard is not None:
            _parse_shard(self.shard)
        sizes = self.sample if isinstance(self.sample, dict) else {}
        stray = [name for name in sizes if name not in self.benchmarks]
        if stray:
            raise SettingError("sample", f"{stray[0]!r} is not one of the benchmarks {', '.join(self.benchmarks)}")
        if any(n < 1 for n in [*sizes.values(), *([self.sample] if isinstance(self.sample, int) else [])]):
            raise SettingError("sample", f"sizes must be whole numbers of at least 1, got {self.sample!r}")

    def shard_of(self, items: list[Problem]) -> list[Problem]:
        """This process's part of a benchmark's questions (all of them without ``shard``)."""
        if self.shard is None:
            return items
        index, count = _parse_shard(self.shard)
        return items[index::count]

    def sample_size(self, benchmark: str) -> int | None:
        """How many seeded random questions of ``benchmark`` to use (None: all)."""
        return self.sample.get(benchmark) if isinstance(self.sample, dict) else self.sample


def _parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None or not int(match[1]) < int(match[2]):
        raise SettingError("shard", f"expected K/N with 0 <= K < N, got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Generation:
    completion: str
    tokens: int  # generated tokens, the end token included
    finish: str  # "eos" (an end token), "stop" (a stop string) or "length"


# --------------------------------------------------------------------------- summaries


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n; the count, accuracy and 95% Wilson interval of each verdict (``correct``, ``correct_strict``);
    the answers cut off at the token limit (``cut_off``); tokens and seconds of one benchmark's records.
    Records graded before the strict verdict existed (no ``correct_strict``) give no strict figures."""
    n = len(records)
    result = {"n": n, **_verdict(records, "correct", "")}
    if all("correct_strict" in r for r in records):
        result.update(_verdict(records, "correct_strict", "_strict"))
    return {**result, "cut_off": sum(r.get("finish") == "length" for r in records),
            "tokens": sum(int(r.get("tokens", 0)) for r in records),
            "seconds": round(sum(float(r.get("seconds", 0.0)) for r in records), 3)}


def _verdict(records: Sequence[dict[str, Any]], key: str, suffix: str) -> dict[str, Any]:
    n, correct = len(records), sum(bool(r[key]) for r in records)
    return {f"correct{suffix}": correct, f"accuracy{suffix}": correct / n if n else 0.0,
            f"ci95{suffix}": list(wilson_interval(correct, n))}


# --------------------------------------------------------------------------- generation


def completion_of(tokenizer: Any, output: Output, stop_strings: Sequence[str]) -> Generation:
    """The graded text of a backend's output: decoded without special tokens, the end token left out,
    cut before a stop string."""
    ids = output.token_ids[:-1] if output.finish == "eos" else output.token_ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if output.finish == "stop":
        stop = next((stop for stop in stop_strings if stop in text), None)
        text = text if stop is None else text[:text.index(stop)]
    return Generation(text, len(output.token_ids), output.finish)


def open_backend(config: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> Backend:
    """The backend ``config`` asks for; hf uses ``model``/``tokenizer`` when given, else loads them."""
    from .models import load_tokenizer, resolve_model_path

    if config.backend == "vllm":
        tokenizer = tokenizer or load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        return VLLMBackend(resolve_model_path(config.model), tokenizer, dtype=config.dtype,
                           chunk_size=config.batch_size, adapter=config.adapter, device=config.device,
                           trust_remote_code=config.trust_remote_code)
    if config.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        tokenizer = tokenizer or load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        return LlamaCppBackend(config.model, tokenizer, slots=config.batch_size, adapter=config.adapter,
                               device=config.device, trust_remote_code=config.trust_remote_code)
    if model is not None and tokenizer is not None:
        return HFBackend(model, tokenizer, slots=config.batch_size)
    model, tokenizer = load_for_eval(config)
    return HFBackend(model, tokenizer, slots=config.batch_size, owns_model=True)


# --------------------------------------------------------------------------- the evaluation loop


def answering_backend(config: EvalConfig, out_dir: Path) -> str:
    """The backend that answers: ``auto`` resolved (:func:`lightreasoner.backends.resolve_backend`), except
    in a folder that holds answers already, where ``auto`` keeps the backend that made them: an extra
    installed since must not mix two engines' answers in one folder."""
    if config.backend == "auto" and (out_dir / "run.json").is_file():
        recorded = read_json(out_dir / "run.json")
        if isinstance(recorded, dict) and recorded.get("backend") in set(BACKENDS) - {"auto"}:
            return recorded["backend"]
    return resolve_backend(config.backend, config.device, llamacpp_model=config.model)


def _check_run_settings(out_dir: Path, config: EvalConfig) -> dict[str, Any]:
    """The run.json settings of this evaluation, refused if ``out_dir`` holds answers made otherwise (a
    smaller ``max_new_tokens`` too; a larger one grows the folder), or files that are not a lightreasoner
    evaluation's (before anything touches them)."""
    from .models import adapter_fingerprint, check_adapter
    from .resume import check_same_settings

    settings = {key: getattr(config, key) for key in RESUME_SETTINGS if key != "adapter_sha256"}
    settings["adapter_sha256"] = adapter_fingerprint(check_adapter(config.adapter)) if config.adapter else None
    path = out_dir / "run.json"
    if not path.exists():
        found = [name for name in config.benchmarks if (out_dir / f"{name}.jsonl").exists()]
        if found:
            raise LightReasonerError(f"{out_dir / found[0]}.jsonl: exists without the run.json of a lightreasoner "
                                     "evaluation beside it, so it was left as it is; choose another --out")
        return {**settings, "adapter": config.adapter}
    previous = read_json(path)
    if not isinstance(previous, dict) or not isinstance(previous.get("max_new_tokens"), int):
        raise LightReasonerError(f"{path}: not the run.json of a lightreasoner evaluation; choose another --out")
    check_same_settings(path, previous, settings, [key for key in RESUME_SETTINGS if key != "max_new_tokens"],
                        hint=f"its answers were made otherwise: use another --out folder, or delete {out_dir} to "
                             "answer again")
    budget = previous["max_new_tokens"]
    if config.max_new_tokens < budget:
        raise LightReasonerError(
            f"{path}: this folder's answers were made with max_new_tokens={budget}; a budget can grow, not shrink: "
            f"use --max-new-tokens {budget} or more, or another --out folder")
    return {**previous, "max_new_tokens": config.max_new_tokens}  # a grown budget is all that is ever written back


def _done_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by question id, the last line of a question winning (a grown answer
    replaces the one it continued); a torn last line is cut off and redone."""
    if not path.exists():
        return {}
    repair_torn_tail(path)
    return {str(record["id"]): record for _, record in iter_jsonl(path)}


def needs_growth(record: dict[str, Any], max_new_tokens: int) -> bool:
    """Whether an answer was cut off at a smaller budget than ``max_new_tokens``, so that it is continued.

    Growing a folder's budget (a rerun with a larger ``max_new_tokens``) writes the new budget into
    run.json before the first longer answer, then appends each continued answer as a new line for
    its question (the last line wins), and rewrites the file with one line per question when the
    benchmark is done (:func:`_keep_last_answers`). The test is on the answer itself, so a growth
    killed at any point resumes with what is left: an answer that ended (eos, stop), or that reached
    this budget, is never touched again."""
    return record.get("finish") == "length" and int(record.get("tokens", 0)) < max_new_tokens


def _keep_last_answers(path: Path) -> None:
    """Rewrite ``path`` with one line per question, its last (a grown answer in place of the one it
    continued), in the order the questions first appear; atomically, and only when a question is
    there twice. The lines are kept as they are, so untouched answers stay byte for byte."""
    if not path.exists():
        return
    lines: dict[str, str] = {}
    count = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                lines[str(json.loads(line)["id"])] = line  # a repeated id keeps its first place
                count += 1
    if count > len(lines):
        write_text_atomic(path, "".join(lines.values()))


def load_for_eval(config: EvalConfig) -> tuple[Any, Any]:
    """The model (with its adapter, if any) and tokenizer, ready for generation."""
    from .models import check_adapter, load_adapter, load_model, load_tokenizer, resolve_device, resolve_dtype

    if not config.model:
        raise LightReasonerError("--model: no model given")
    if config.adapter:  # before the model loads, which takes minutes for a real expert
        check_adapter(config.adapter)
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_model(config.model, dtype=resolve_dtype(config.dtype, device), device=device,
                       trust_remote_code=config.trust_remote_code)
    if config.adapter:
        model = load_adapter(model, config.adapter).eval()
    return model, tokenizer


def _check_prompts_fit(config: EvalConfig, tokenizer: Any, todo: dict[str, list[Problem]]) -> None:
    """Refuse, before any model work, a question whose prompt and answer cannot fit the model's context."""
    from .models import check_prompts_fit, context_length, encode_prompt, load_tokenizer

    if not any(todo.values()):
        return
    tokenizer = tokenizer or load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    context = context_length(config.model, trust_remote_code=config.trust_remote_code)
    for name, problems in todo.items():
        lengths = {p.id: len(encode_prompt(tokenizer, prompts.build_prompt(
            config.prompt, prompts.toolkit_question(p.question, p.gold), tokenizer))) for p in problems}
        check_prompts_fit(lengths, config.max_new_tokens, context, model=config.model, source=name)


def evaluate(config: EvalConfig, out_dir: str | Path, *, model: Any = None, tokenizer: Any = None,
             progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation ``config`` into ``out_dir`` and return the summary.

    ``model``/``tokenizer`` may be passed in already loaded (e.g. by ``lightreasoner run``) for the
    hf backend; otherwise the backend is opened from ``config.model`` (+ ``config.adapter``) when
    there is work left: one backend (one vLLM engine) for all benchmarks, closed before returning.
    """
    out_dir = Path(out_dir)
    config = replace(config, backend=answering_backend(config, out_dir))
    if model is None and not config.model:
        raise LightReasonerError("--model: no model given")
    refuse_own_input(out_dir, {"model folder": config.model, "adapter folder": config.adapter})
    check_writable(out_dir)
    settings = _check_run_settings(out_dir, config)
    template = prompts.get_template(config.prompt)
    problems = {name: config.shard_of(load_problems(name, split=config.split, data_dir=config.data_dir,
                                                    limit=config.limit, sample=config.sample_size(name),
                                                    seed=config.seed)) for name in config.benchmarks}
    done = {name: _done_records(out_dir / f"{name}.jsonl") for name in problems}
    for name, items in problems.items():
        check_same_problems(out_dir / f"{name}.jsonl", done[name].values(), items)
    # New questions, and answers cut off at a smaller budget: those are continued where they stopped.
    todo = {name: [p for p in items if p.id not in done[name] or needs_growth(done[name][p.id], config.max_new_tokens)]
            for name, items in problems.items()}
    begun = {name: {p.id: done[name][p.id] for p in todo[name] if p.id in done[name]} for name in problems}
    _check_prompts_fit(config, tokenizer, todo)
    recorded = False

    def append(path: Path, records: list[dict[str, Any]]) -> None:
        nonlocal recorded
        # run.json with the first answer (a failed start locks nothing), and at a grown budget before
        # the first answer that is longer than the old one.
        if not recorded and (not (out_dir / "run.json").exists() or read_json(out_dir / "run.json") != settings):
            write_json_atomic(out_dir / "run.json", settings)
        recorded = True
        with JsonlAppender(path) as appender:
            appender.write(records)

    if config.workers > 1 and any(todo.values()):
        run_workers(config, out_dir)
    results: dict[str, dict[str, Any]] = {}
    backend: Backend | None = None
    try:
        for name, items in problems.items():
            path = out_dir / f"{name}.jsonl"
            if todo[name] and config.workers > 1:
                todo[name] = adopt_worker_answers(out_dir, path, todo[name], done[name], append,
                                                  config.max_new_tokens)
            if todo[name]:
                backend = backend or open_backend(config, model=model, tokenizer=tokenizer)
                for batch in _generate(config, backend, name, todo[name], template, progress, begun[name]):
                    append(path, batch)
                    done[name].update((record["id"], record) for record in batch)
            _keep_last_answers(path)
            results[name] = summarize([done[name][p.id] for p in items])
            _write_summary(out_dir, config, results)
    finally:
        if backend is not None:
            backend.close()
    return _write_summary(out_dir, config, results)


def _generate(config: EvalConfig, backend: Backend, benchmark: str, todo: list[Problem],
              template: prompts.PromptTemplate, progress: bool,
              begun: dict[str, dict[str, Any]] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Records for ``todo``, chunk by chunk as the backend yields them; longest prompts first, so
    the hf loop's batch narrows as it goes. A question with a record in ``begun`` (an answer cut off
    at a smaller budget) is continued where that answer stopped: the request is the prompt's ids and
    the answer's ids so far, with what is left of ``max_new_tokens``."""
    from tqdm.auto import tqdm

    from .models import encode_prompt

    begun = begun or {}
    tokenizer = backend.tokenizer
    texts = [prompts.build_prompt(config.prompt, prompts.toolkit_question(p.question, p.gold), tokenizer)
             for p in todo]
    so_far = [answer_ids(tokenizer, begun[p.id]) if p.id in begun else [] for p in todo]
    encoded = [encode_prompt(tokenizer, text) + answer for text, answer in zip(texts, so_far)]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    # An answer whose text, encoded again, already fills the budget has nothing left to generate.
    full = [i for i in order if len(so_far[i]) >= config.max_new_tokens]
    order = [i for i in order if len(so_far[i]) < config.max_new_tokens]
    sampling = Sampling(stop_strings=tuple(template.stop_strings))
    requests = [Request(encoded[i], config.max_new_tokens - len(so_far[i])) for i in order]

    def record(index: int, output: Output) -> dict[str, Any]:
        problem, new, finish = todo[index], output.token_ids, output.finish
        cut = _stop_across(tokenizer, so_far[index], new, sampling.stop_strings)
        if cut is not None:
            new, finish = new[:cut], "stop"
        whole = Output(index, so_far[index] + new, finish, output.seconds)
        generation = completion_of(tokenizer, whole, sampling.stop_strings)
        result = {"id": problem.id, "benchmark": benchmark, "prompt": texts[index],
                  "completion": generation.completion, "gold": problem.gold, "tokens": generation.tokens,
                  "finish": generation.finish, "seconds": round(output.seconds, 4)}
        if problem.id in begun:
            old = begun[problem.id]
            result["seconds"] = round(output.seconds + float(old.get("seconds", 0.0)), 4)
            by_text = "completion_ids" not in old or old.get("continued_from") == "text"
            result["continued_from"] = "text" if by_text else "ids"
        result["completion_ids"] = whole.token_ids
        return _graded(result, problem.gold, benchmark, config.grading_timeout)

    with tqdm(total=len(todo), desc=benchmark, unit="q", disable=not progress) as bar:
        if full:
            yield [record(i, Output(i, [], "length", 0.0)) for i in full]
            bar.update(len(full))
        for chunk in backend.generate(requests, sampling) if requests else ():
            yield [record(order[output.index], output) for output in chunk]
            bar.update(len(chunk))


def answer_ids(tokenizer: Any, record: dict[str, Any]) -> list[int]:
    """The token ids of a record's answer: as generated (``completion_ids``), or, for a record written
    before they were kept, its completion text encoded again; that can split the text differently
    than the model did (rare for byte-level BPE), and a continuation then starts from other ids."""
    if "completion_ids" in record:
        return [int(token) for token in record["completion_ids"]]
    return tokenizer(record["completion"], add_special_tokens=False)["input_ids"]


def _stop_across(tokenizer: Any, so_far: list[int], new: list[int], stop_strings: Sequence[str]) -> int | None:
    """How many of a continuation's ``new`` tokens an answer generated in one go would have kept, when
    it would have stopped on a stop string that begins in the answer ``so_far`` (else None). The
    backends look for a stop string in the text of a sequence's newest ``STOP_STRING_TOKENS``
    generated tokens, and a continuation's first windows lack the tokens before it."""
    if not so_far or not stop_strings:
        return None
    whole = so_far + new
    for kept in range(1, min(len(new), STOP_STRING_TOKENS - 1) + 1):
        end = len(so_far) + kept
        tail = tokenizer.decode(whole[max(0, end - STOP_STRING_TOKENS):end], skip_special_tokens=True)
        if any(stop in tail for stop in stop_strings):
            return kept
    return None


# --------------------------------------------------------------------------- one process per GPU

WORKERS_DIR = "workers"


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


def run_workers(config: EvalConfig, out_dir: Path) -> None:
    """``config.workers`` processes of ``lightreasoner eval``, worker k on GPU k with ``--shard k/N``
    into ``out_dir/workers/k-of-N``; returns when all have finished, raises if one failed (each
    resumes its own folder on a rerun)."""
    if config.device not in ("auto", "cuda", "cpu"):
        raise LightReasonerError(f"--device {config.device}: with --workers each worker gets its own GPU; "
                                 "use --device cuda (or auto)")
    processes = []
    try:
        for index, gpu in enumerate(worker_gpus(config.workers)):
            folder = out_dir / WORKERS_DIR / f"{index}-of-{config.workers}"
            folder.mkdir(parents=True, exist_ok=True)
            settings = config_to_dict(replace(config, workers=1, shard=f"{index}/{config.workers}"))
            write_json_atomic(folder / "config.json", settings)  # JSON is YAML, what --config reads
            env = dict(os.environ) if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            with (folder / "log.txt").open("a") as log:
                command = [sys.executable, "-m", "lightreasoner.cli", "eval", "--config", str(folder / "config.json"),
                           "--out", str(folder), "--quiet"]
                processes.append((folder, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)))
        codes = [process.wait() for _, process in processes]
    finally:
        for _, process in processes:
            if process.poll() is None:  # interrupted: stop the others too; a rerun resumes them all
                process.terminate()
                process.wait()
    for (folder, _), code in zip(processes, codes):
        if code != 0:
            lines = (folder / "log.txt").read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise LightReasonerError(f"{folder}: evaluation worker stopped with exit code {code}: {lines[-1]} "
                                     f"(log: {folder / 'log.txt'}); rerun to resume")


def adopt_worker_answers(out_dir: Path, path: Path, todo: list[Problem], done: dict[str, dict[str, Any]],
                         append: Callable[[Path, list[dict[str, Any]]], None], max_new_tokens: int) -> list[Problem]:
    """Append the workers' answers to ``todo`` to ``path`` (and ``done``); returns the questions left.
    A worker grows the cut-off answers of its own folder, so an answer to grow is taken once it has."""
    answers: dict[str, dict[str, Any]] = {}
    for folder in sorted((out_dir / WORKERS_DIR).iterdir()):
        if (folder / path.name).exists():
            answers.update((key, record) for key, record in _done_records(folder / path.name).items()
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


GRADE_FIELDS = ("pred", "source", "correct", "correct_strict")


def _graded(record: dict[str, Any], gold: str | None, benchmark: str, timeout: float | None) -> dict[str, Any]:
    """``record`` with its grade (GRADE_FIELDS, placed before ``tokens``) from its ``completion`` and
    ``finish`` against ``gold``; no gold answer (None) grades wrong."""
    result = grading.grade(record["completion"], gold or "", benchmark, finish=record.get("finish"), timeout=timeout)
    grade = {"pred": result.pred, "source": result.source, "correct": result.correct and gold is not None,
             "correct_strict": result.correct_strict and gold is not None}
    rest = [(key, value) for key, value in record.items() if key not in GRADE_FIELDS]
    at = next((i for i, (key, _) in enumerate(rest) if key == "tokens"), len(rest))
    return dict(rest[:at] + list(grade.items()) + rest[at:])


def _write_summary(out_dir: Path, config: EvalConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    head = {"model": config.model, "adapter": config.adapter, "settings": config_to_dict(config)}
    return _write_summary_file(out_dir, head, config.benchmarks, results)


def _write_summary_file(out_dir: Path, head: dict[str, Any], benchmarks: Sequence[str],
                        results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json: ``head`` (model, adapter, settings), the results per benchmark, those still pending,
    the average accuracy over benchmarks by each verdict, tokens and seconds."""
    summary = {**head, "benchmarks": results, "pending": [name for name in benchmarks if name not in results]}
    for key in ("accuracy", "accuracy_strict"):
        if results and all(key in r for r in results.values()):
            summary[key.replace("accuracy", "average")] = sum(r[key] for r in results.values()) / len(results)
    summary.setdefault("average", 0.0)
    summary["tokens"] = sum(r["tokens"] for r in results.values())
    summary["seconds"] = round(sum(r["seconds"] for r in results.values()), 3)
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- grading again


def is_eval_folder(folder: str | Path) -> bool:
    """An evaluation folder: its run.json records the settings of its answers (RESUME_SETTINGS)."""
    path = Path(folder) / "run.json"
    return path.is_file() and "max_new_tokens" in read_json(path)


def find_eval_folders(folder: str | Path) -> list[Path]:
    """``folder`` if it is an evaluation folder, else every evaluation folder under it (a run's arms)."""
    folder = Path(folder)
    if is_eval_folder(folder):
        return [folder]
    return sorted(path.parent for path in folder.rglob("run.json") if is_eval_folder(path.parent))


def regrade(eval_dir: str | Path, *, data_dir: str | Path | None = None,
            timeout: float | None = grading.DEFAULT_TIMEOUT, progress: bool = True) -> dict[str, Any]:
    """Grade the answers of the evaluation folder ``eval_dir`` again with the current rules (both
    verdicts), rewrite its answer files and summary.json, and return the summary.

    A record without its gold answer (a published folder keeps none) gets it from the data, loaded
    as the evaluation loaded it (the benchmarks, split and subset of its summary's settings) from
    ``data_dir``, else from the folder the evaluation read. Nothing is added to a record but its grade.
    """
    from tqdm.auto import tqdm

    eval_dir = Path(eval_dir)
    if not is_eval_folder(eval_dir) or not (eval_dir / "summary.json").is_file():
        raise LightReasonerError(f"{eval_dir}: no run.json and summary.json of an evaluation here")
    summary = read_json(eval_dir / "summary.json")
    settings = summary["settings"]
    results = {}
    for name in summary["benchmarks"]:
        path = eval_dir / f"{name}.jsonl"
        # A growth stopped before its file was rewritten holds a question twice: the last line counts.
        lines = list({str(record["id"]): (number, record) for number, record in iter_jsonl(path)}.values())
        golds = _golds(path, lines, name, settings, data_dir)
        graded = [_graded(record, golds[str(record["id"])], name, timeout)
                  for _, record in tqdm(lines, desc=f"regrade {name}", unit="answer", disable=not progress)]
        _replace_jsonl(path, graded)
        results[name] = summarize(graded)
    head = {key: value for key, value in summary.items() if key in ("model", "adapter", "settings")}
    return _write_summary_file(eval_dir, head, settings["benchmarks"], results)


def _golds(path: Path, lines: list[tuple[int, dict[str, Any]]], benchmark: str, settings: dict[str, Any],
           data_dir: str | Path | None) -> dict[str, str | None]:
    """The gold answer of every record of ``path`` by id: its own, else the data's (loaded as ``settings`` say)."""
    golds = {str(record["id"]): record["gold"] for _, record in lines if "gold" in record}
    if len(golds) == len(lines):
        return golds
    sample = settings.get("sample")
    problems = load_problems(benchmark, split=settings.get("split", "test"), limit=settings.get("limit"),
                             data_dir=data_dir or settings.get("data_dir"), seed=settings.get("seed"),
                             sample=sample.get(benchmark) if isinstance(sample, dict) else sample)
    from_data = {p.id: p.gold for p in problems}
    for number, record in lines:
        if str(record["id"]) not in golds and str(record["id"]) not in from_data:
            raise LightReasonerError(f"{path}:{number}: question {record['id']!r} is not among the {benchmark} "
                                     "questions this evaluation's settings select from the data")
    return {**from_data, **golds}


def _replace_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write ``records`` to ``path`` as a whole: the old file stays until the new one is complete."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with JsonlAppender(temporary) as appender:
        appender.write(records)
    temporary.replace(path)


# --------------------------------------------------------------------------- grading files made elsewhere


def score(benchmark: str, input_path: str | Path, out_path: str | Path, *, data_dir: str | Path | None = None,
          split: str = "test", timeout: float | None = grading.DEFAULT_TIMEOUT,
          progress: bool = True) -> dict[str, Any]:
    """Grade completions made elsewhere; write each input line plus its grade (``pred``, ``source``,
    ``correct``, ``correct_strict``).

    Every line needs ``completion`` and either ``gold`` (an extracted final answer) or an ``id``
    of the benchmark's data, whose gold answer is then parsed like ``evaluate`` does. An optional
    ``finish`` ("length" when the completion was cut off by the token limit) informs the strict
    verdict; without it a completion counts as finished.
    Returns the summary (n, correct, accuracy, ci95, the strict ones, ...).
    """
    from tqdm.auto import tqdm

    if benchmark not in BENCHMARKS:
        raise LightReasonerError(f"--benchmark: unknown benchmark {benchmark!r} (choose from {', '.join(BENCHMARKS)})")
    input_path, out_path = Path(input_path), Path(out_path)
    refuse_own_input(out_path, {"--input file": input_path})
    if out_path.is_file() and out_path.stat().st_size and not {"pred", "correct"} <= (first_record(out_path) or {}).keys():
        raise LightReasonerError(f"{out_path}: exists and is not a graded file of `lightreasoner score` (no 'pred' "
                                 "and 'correct' on its first line); it was left as it is: choose another --out")
    check_writable(out_path)  # before grading, which can take long
    lines = list(iter_jsonl(input_path))
    if not lines:
        raise LightReasonerError(f"{input_path}: no records in file (empty)")
    golds: dict[str, str | None] | None = None
    graded = []
    for number, record in tqdm(lines, desc=f"score {benchmark}", unit="answer", disable=not progress):
        where = f"{input_path}:{number}"
        completion = record.get("completion")
        if not isinstance(completion, str):
            raise LightReasonerError(f"{where}: field 'completion' missing or not a string")
        gold = record.get("gold")
        if gold is None:
            if "id" not in record:
                raise LightReasonerError(f"{where}: needs 'gold' or an 'id' of the {benchmark} data")
            if golds is None:
                golds = {p.id: p.gold for p in load_problems(benchmark, split=split, data_dir=data_dir)}
            if str(record["id"]) not in golds:
                raise LightReasonerError(f"{where}: id {record['id']!r} is not in the {benchmark} {split} data")
            gold = golds[str(record["id"])]
        elif isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
            raise LightReasonerError(f"{where}: field 'gold' must be a string or a number")
        finish = record.get("finish")
        if finish is not None and not isinstance(finish, str):
            raise LightReasonerError(f"{where}: field 'finish' must be a string (\"length\" when cut off)")
        result = grading.grade(completion, _gold_text(gold) or "", benchmark, finish=finish, timeout=timeout)
        graded.append({**record, "pred": result.pred, "source": result.source, "correct": result.correct,
                       "correct_strict": result.correct_strict})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _replace_jsonl(out_path, graded)
    return {"benchmark": benchmark, **summarize(graded)}


def _gold_text(gold: Any) -> str | None:
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    return None if gold is None else str(gold)
