"""Zero-shot greedy evaluation on the paper's benchmarks: generate, grade, summarise, resume.

``evaluate(config, out_dir)`` writes into ``out_dir``:

* ``<benchmark>.jsonl``: one line per question (id, prompt, completion, gold, pred, source,
  correct, correct_strict, tokens, finish, seconds, completion_ids), appended and fsynced as each
  chunk of answers ends (one answer with the hf and llamacpp backends, one engine call with vLLM). A
  rerun with the same ``out_dir`` skips the questions already there, so a killed evaluation resumes
  where it stopped.
  ``correct`` is the Qwen2.5-Math toolkit's verdict, ``correct_strict`` also asks for a stated final
  answer in a completion that was not cut off (:mod:`lightreasoner.grading`).
* ``run.json``: kind "eval" and the settings that decide the completions (model, adapter, prompt,
  max tokens, dtype, backend); a rerun with different ones is refused rather than mixed into old
  results, except a larger ``max_new_tokens``: it grows the folder (see
  :func:`lightreasoner.answers.needs_growth`).
* ``summary.json``: per benchmark n, both verdicts' counts, accuracies and 95% Wilson intervals,
  the answers cut off at the token limit, tokens and seconds, plus the unweighted average over
  benchmarks (the paper's "Avg.") of both; rewritten as each benchmark ends, with the benchmarks
  still to come under ``pending``.

What reads or rewrites those files without a model (summaries, growth, ``regrade``, ``score``) is
:mod:`lightreasoner.answers`.

Generation is greedy pass@1 like the Qwen2.5-Math toolkit, through a backend of
:mod:`lightreasoner.backends` (the cached decoding loop with continuous batching, llama.cpp on the
model's GGUF file, or one vLLM engine for the whole evaluation), stopping on every end token of
:func:`lightreasoner.models.stop_token_ids`. Vocabulary rows past the tokenizer's real vocabulary
are never generated. The model's own generation config (which may sample) plays no part.
``workers`` > 1 runs one evaluation process per GPU over shards of the questions and merges them
(:mod:`lightreasoner.eval_workers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import grading, prompts
from .answers import answer_ids, done_records, graded_record, keep_last_answers, needs_growth, summarize, write_summary
from .backends import (BACKENDS, STOP_STRING_TOKENS, Backend, HFBackend, Output, Request, Sampling, VLLMBackend,
                       resolve_backend)
from .config import SettingError, check_fields, config_to_dict
from .data import BENCHMARKS, GENERATED, check_same_problems, load_problems
from .problems import Problem
from .errors import LightReasonerError
from .eval_workers import adopt_worker_answers, answer_in_workers
from .layout import EVAL_KIND, RUN_FILE, answers_file
from .models import DTYPE_HELP
from .records import JsonlAppender, check_writable, read_json, refuse_own_input, write_json_atomic

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
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP})
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
    if config.backend == "auto" and (out_dir / RUN_FILE).is_file():
        recorded = read_json(out_dir / RUN_FILE)
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
    path = out_dir / RUN_FILE
    if not path.exists():
        found = [name for name in config.benchmarks if answers_file(out_dir, name).exists()]
        if found:
            raise LightReasonerError(f"{answers_file(out_dir, found[0])}: exists without the run.json of a "
                                     "lightreasoner evaluation beside it, so it was left as it is; "
                                     "choose another --out")
        return {**settings, "adapter": config.adapter}
    previous = read_json(path)
    if not isinstance(previous, dict) or not isinstance(previous.get("max_new_tokens"), int):
        raise LightReasonerError(f"{path}: not the run.json of a lightreasoner evaluation; choose another --out")
    if config.adapter and previous.get("adapter_sha256") not in (None, settings["adapter_sha256"]) \
            and previous["adapter_sha256"] == adapter_fingerprint(config.adapter, as_written=True):
        previous = {**previous, "adapter_sha256": settings["adapter_sha256"]}  # the same adapter, hashed as it was
    check_same_settings(path, previous, settings, [key for key in RESUME_SETTINGS if key != "max_new_tokens"],
                        hint=f"its answers were made otherwise: use another --out folder, or delete {out_dir} to "
                             "answer again")
    budget = previous["max_new_tokens"]
    if config.max_new_tokens < budget:
        raise LightReasonerError(
            f"{path}: this folder's answers were made with max_new_tokens={budget}; a budget can grow, not shrink: "
            f"use --max-new-tokens {budget} or more, or another --out folder")
    return {**previous, "max_new_tokens": config.max_new_tokens}  # a grown budget is all that is ever written back


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
    settings = {"kind": EVAL_KIND, **_check_run_settings(out_dir, config)}
    template = prompts.get_template(config.prompt)
    problems = {name: config.shard_of(load_problems(name, split=config.split, data_dir=config.data_dir,
                                                    limit=config.limit, sample=config.sample_size(name),
                                                    seed=config.seed)) for name in config.benchmarks}
    done = {name: done_records(answers_file(out_dir, name)) for name in problems}
    for name, items in problems.items():
        check_same_problems(answers_file(out_dir, name), done[name].values(), items)
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
        if not recorded and (not (out_dir / RUN_FILE).exists() or read_json(out_dir / RUN_FILE) != settings):
            write_json_atomic(out_dir / RUN_FILE, settings)
        recorded = True
        with JsonlAppender(path) as appender:
            appender.write(records)

    if config.workers > 1 and any(todo.values()):
        answer_in_workers(config_to_dict(config), out_dir)
    results: dict[str, dict[str, Any]] = {}
    backend: Backend | None = None
    try:
        for name, items in problems.items():
            path = answers_file(out_dir, name)
            if todo[name] and config.workers > 1:
                todo[name] = adopt_worker_answers(out_dir, path, todo[name], done[name], append,
                                                  config.max_new_tokens)
            if todo[name]:
                backend = backend or open_backend(config, model=model, tokenizer=tokenizer)
                for batch in _generate(config, backend, name, todo[name], template, progress, begun[name]):
                    append(path, batch)
                    done[name].update((record["id"], record) for record in batch)
            keep_last_answers(path)
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
        return graded_record(result, problem.gold, benchmark, config.grading_timeout)

    with tqdm(total=len(todo), desc=benchmark, unit="q", disable=not progress) as bar:
        if full:
            yield [record(i, Output(i, [], "length", 0.0)) for i in full]
            bar.update(len(full))
        for chunk in backend.generate(requests, sampling) if requests else ():
            yield [record(order[output.index], output) for output in chunk]
            bar.update(len(chunk))


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


def _write_summary(out_dir: Path, config: EvalConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    head = {"model": config.model, "adapter": config.adapter, "settings": config_to_dict(config)}
    return write_summary(out_dir, head, config.benchmarks, results)
