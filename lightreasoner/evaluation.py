"""Zero-shot greedy evaluation on the paper's benchmarks: generate, grade, summarise, resume.

``evaluate(config, out_dir)`` writes into ``out_dir``:

* ``<benchmark>.jsonl``: one line per question (id, prompt, completion, pred, gold, correct,
  tokens, finish, seconds), appended and fsynced as each answer ends. A rerun with the same
  ``out_dir`` skips the questions already there, so a killed evaluation resumes where it stopped.
* ``run.json``: the settings that decide the completions (model, adapter, prompt, max tokens,
  dtype, backend); a rerun with different ones is refused rather than mixed into old results.
* ``summary.json``: per benchmark n, correct, accuracy, its 95% Wilson interval, tokens and
  seconds, plus the unweighted average over benchmarks (the paper's "Avg."); rewritten as each
  benchmark ends, with the benchmarks still to come under ``pending``.

Generation is greedy pass@1 like the Qwen2.5-Math toolkit: a cached decoding loop with continuous
batching (:mod:`lightreasoner.decoding`; or vLLM, imported only when asked for), stopping on every
end token of :func:`lightreasoner.models.stop_token_ids`. Vocabulary rows past the tokenizer's real
vocabulary are never generated. The model's own generation config (which may sample) plays no part.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence


from . import grading, prompts
from .config import SettingError, check_fields, config_to_dict
from .data import BENCHMARKS, GENERATED, Problem, check_same_problems, load_problems
from .errors import LightReasonerError
from .records import (JsonlAppender, check_writable, first_record, iter_jsonl, read_json, refuse_own_input,
                      repair_torn_tail, write_json_atomic)

PAPER_BENCHMARKS = ["gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]
Z95 = 1.959963984540054  # two-sided 95% normal quantile
# A stop string is looked for in the text of a completion's last tokens, decoded at every step.
STOP_STRING_TOKENS = 16
# Settings that decide the completions: a folder's answers are only resumed under the same ones. The
# adapter counts by its content, not its path, so answers resume wherever the same adapter is rebuilt.
RUN_KEYS = ("model", "adapter_sha256", "prompt", "max_new_tokens", "dtype", "backend", "split")


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
    batch_size: int = field(default=16, metadata={"help": "questions decoded together (HF backend)", "min": 1})
    backend: str = field(default="hf", metadata={"help": "hf or vllm (optional extra)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware computes it, else fp16 on GPU / fp32 on CPU), bfloat16, float16 or float32"})
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
        if self.backend not in ("hf", "vllm"):
            raise SettingError("backend", f"expected hf or vllm, got {self.backend!r}")
        if self.prompt not in prompts.PROMPTS:
            raise SettingError("prompt", f"unknown prompt {self.prompt!r} (choose from {', '.join(prompts.PROMPTS)})")
        sizes = self.sample if isinstance(self.sample, dict) else {}
        stray = [name for name in sizes if name not in self.benchmarks]
        if stray:
            raise SettingError("sample", f"{stray[0]!r} is not one of the benchmarks {', '.join(self.benchmarks)}")
        if any(n < 1 for n in [*sizes.values(), *([self.sample] if isinstance(self.sample, int) else [])]):
            raise SettingError("sample", f"sizes must be whole numbers of at least 1, got {self.sample!r}")

    def sample_size(self, benchmark: str) -> int | None:
        """How many seeded random questions of ``benchmark`` to use (None: all)."""
        return self.sample.get(benchmark) if isinstance(self.sample, dict) else self.sample


@dataclass(frozen=True)
class Generation:
    completion: str
    tokens: int  # generated tokens, the end token included
    finish: str  # "eos" (an end token), "stop" (a stop string) or "length"


# --------------------------------------------------------------------------- statistics


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sane at 0 and n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, correct, accuracy, 95% interval, tokens and seconds of one benchmark's records."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [low, high],
            "tokens": sum(int(r.get("tokens", 0)) for r in records),
            "seconds": round(sum(float(r.get("seconds", 0.0)) for r in records), 3)}


# --------------------------------------------------------------------------- generation


def hf_generate(model: Any, tokenizer: Any, prompt_texts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                stop_strings: Sequence[str] = (), progress: bool = True,
                desc: str = "generate") -> Iterator[list[tuple[int, Generation, float]]]:
    """Greedy completions of ``prompt_texts``, ``batch_size`` decoded together with continuous
    batching (:mod:`lightreasoner.decoding`), longest prompts first.

    Yields each completion as it ends, as a list of one ``(index into prompt_texts, generation,
    seconds)``, so that the caller can store it durably before the next one.
    """
    from tqdm.auto import tqdm

    from .decoding import decode
    from .models import encode_prompt, real_vocab_size, stop_token_ids

    stops = stop_token_ids(tokenizer, model)
    encoded = [encode_prompt(tokenizer, text) for text in prompt_texts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))

    def stop_text(ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-STOP_STRING_TOKENS:], skip_special_tokens=True)
        return any(stop in tail for stop in stop_strings)

    with tqdm(total=len(order), desc=desc, unit="q", disable=not progress) as bar:
        for done in decode(model, [encoded[i] for i in order], slots=batch_size, max_new_tokens=max_new_tokens,
                           stop_ids=stops, vocab_size=real_vocab_size(tokenizer, model), pad_id=tokenizer.pad_token_id,
                           stop_text=stop_text if stop_strings else None):
            yield [(order[done.index], _finish(tokenizer, done.token_ids, stops, stop_strings), done.seconds)]
            bar.update(1)


def _finish(tokenizer: Any, new_ids: list[int], stops: Sequence[int], stop_strings: Sequence[str]) -> Generation:
    """Cut the generated ids at the first end token (rows that ended early are padded after it)."""
    end = next((i for i, token in enumerate(new_ids) if token in stops), None)
    kept = new_ids if end is None else new_ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    if end is not None:
        return Generation(text, end + 1, "eos")
    for stop in stop_strings:
        if stop in text:
            return Generation(text[:text.index(stop)], len(kept), "stop")
    return Generation(text, len(kept), "length")


def vllm_generate(model_path: str, tokenizer: Any, prompt_texts: Sequence[str], *, max_new_tokens: int,
                  dtype: str, adapter: str | None, stop_strings: Sequence[str] = (),
                  trust_remote_code: bool = False) -> list[Generation]:
    """Greedy completions with vLLM (optional extra ``pip install lightreasoner[vllm]``)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise LightReasonerError("--backend vllm: vLLM is not installed (pip install 'lightreasoner[vllm]')") from None
    from .models import encode_prompt, real_vocab_size, stop_token_ids

    llm = LLM(model=model_path, dtype="auto" if dtype == "auto" else dtype, enable_lora=adapter is not None,
              trust_remote_code=trust_remote_code, seed=0)
    vocab = real_vocab_size(tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tokenizer),
                            stop=list(stop_strings) or None, skip_special_tokens=True,
                            allowed_token_ids=list(range(vocab)))
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, adapter)
    inputs = [{"prompt_token_ids": encode_prompt(tokenizer, text)} for text in prompt_texts]
    outputs = llm.generate(inputs, params, lora_request=lora)
    results = []
    for output in outputs:
        choice = output.outputs[0]
        # vLLM's stop_reason is the stop string that ended the text, or a token id / None for an end token.
        finish = "length" if choice.finish_reason == "length" else (
            "stop" if isinstance(choice.stop_reason, str) else "eos")
        results.append(Generation(choice.text, len(choice.token_ids), finish))
    return results


# --------------------------------------------------------------------------- the evaluation loop


def adapter_fingerprint(adapter: str | Path) -> str:
    """sha256 of a peft adapter's weights and its settings (paths left out): equal iff it is the same adapter."""
    folder = Path(adapter)
    weights = folder / "adapter_model.safetensors"
    if not (folder / "adapter_config.json").is_file() or not weights.is_file():
        raise LightReasonerError(f"{folder}: no adapter_config.json and adapter_model.safetensors here, "
                                 "so it is not a peft adapter folder")
    settings = {k: v for k, v in read_json(folder / "adapter_config.json").items()
                if k not in ("base_model_name_or_path", "revision")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_run_settings(out_dir: Path, config: EvalConfig) -> dict[str, Any]:
    """The run.json settings of this evaluation, refused if ``out_dir`` holds answers made otherwise, or
    files that are not a lightreasoner evaluation's (before anything touches them)."""
    from .models import check_adapter, same_model

    settings = {key: getattr(config, key) for key in RUN_KEYS if key != "adapter_sha256"}
    settings["adapter_sha256"] = adapter_fingerprint(check_adapter(config.adapter)) if config.adapter else None
    path = out_dir / "run.json"
    if path.exists():
        previous = read_json(path)
        if not isinstance(previous, dict) or "max_new_tokens" not in previous:
            raise LightReasonerError(f"{path}: not the run.json of a lightreasoner evaluation; choose another --out")
        changed = [key for key in RUN_KEYS if previous.get(key) != settings[key]
                   and not (key == "model" and same_model(previous.get(key), settings[key]))]
        if changed:
            key = changed[0]
            raise LightReasonerError(
                f"{path}: this folder holds results for {key}={previous.get(key)!r}, not {settings[key]!r}; "
                f"use another --out folder, or delete {out_dir} to answer again")
    else:
        found = [name for name in config.benchmarks if (out_dir / f"{name}.jsonl").exists()]
        if found:
            raise LightReasonerError(f"{out_dir / found[0]}.jsonl: exists without the run.json of a lightreasoner "
                                     "evaluation beside it, so it was left as it is; choose another --out")
    return {**settings, "adapter": config.adapter}


def _done_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by question id (a torn last line is cut off and redone)."""
    if not path.exists():
        return {}
    repair_torn_tail(path)
    return {str(record["id"]): record for _, record in iter_jsonl(path)}


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

    ``model``/``tokenizer`` may be passed in already loaded (e.g. by ``lightreasoner run``);
    otherwise they are loaded from ``config.model`` (+ ``config.adapter``) when there is work left.
    """
    out_dir = Path(out_dir)
    if model is None and not config.model:
        raise LightReasonerError("--model: no model given")
    refuse_own_input(out_dir, {"model folder": config.model, "adapter folder": config.adapter})
    check_writable(out_dir)
    settings = _check_run_settings(out_dir, config)
    template = prompts.get_template(config.prompt)
    problems = {name: load_problems(name, split=config.split, data_dir=config.data_dir, limit=config.limit,
                                    sample=config.sample_size(name), seed=config.seed) for name in config.benchmarks}
    done = {name: _done_records(out_dir / f"{name}.jsonl") for name in problems}
    for name, items in problems.items():
        check_same_problems(out_dir / f"{name}.jsonl", done[name].values(), items)
    todo = {name: [p for p in items if p.id not in done[name]] for name, items in problems.items()}
    _check_prompts_fit(config, tokenizer, todo)
    results: dict[str, dict[str, Any]] = {}
    for name, items in problems.items():
        path = out_dir / f"{name}.jsonl"
        if todo[name]:
            if model is None or tokenizer is None:
                model, tokenizer = load_for_eval(config)
            with JsonlAppender(path) as appender:
                for batch in _generate(config, model, tokenizer, name, todo[name], template, progress):
                    if not (out_dir / "run.json").exists():  # with the first answer: a failed start locks nothing
                        write_json_atomic(out_dir / "run.json", settings)
                    appender.write(batch)
                    done[name].update((record["id"], record) for record in batch)
        results[name] = summarize([done[name][p.id] for p in items])
        _write_summary(out_dir, config, results)
    return _write_summary(out_dir, config, results)


def _generate(config: EvalConfig, model: Any, tokenizer: Any, benchmark: str, todo: list[Problem],
              template: prompts.PromptTemplate, progress: bool) -> Iterator[list[dict[str, Any]]]:
    """Records for ``todo``, batch by batch (one batch for vLLM, which schedules on its own)."""
    texts = [prompts.build_prompt(config.prompt, prompts.toolkit_question(p.question, p.gold), tokenizer)
             for p in todo]
    if config.backend == "vllm":
        from .models import resolve_model_path

        began = time.perf_counter()
        generations = vllm_generate(resolve_model_path(config.model), tokenizer, texts,
                                    max_new_tokens=config.max_new_tokens, dtype=config.dtype, adapter=config.adapter,
                                    stop_strings=template.stop_strings, trust_remote_code=config.trust_remote_code)
        seconds = (time.perf_counter() - began) / max(1, len(todo))
        batches: Any = [[(i, g, seconds) for i, g in enumerate(generations)]]
    else:
        batches = hf_generate(model, tokenizer, texts, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size, stop_strings=template.stop_strings, progress=progress,
                              desc=benchmark)
    for batch in batches:
        records = []
        for index, generation, seconds in batch:
            problem = todo[index]
            graded = grading.grade(generation.completion, problem.gold or "", benchmark,
                                   timeout=config.grading_timeout)
            records.append({"id": problem.id, "benchmark": benchmark, "prompt": texts[index],
                            "completion": generation.completion, "pred": graded.pred, "gold": problem.gold,
                            "correct": graded.correct and problem.gold is not None, "tokens": generation.tokens,
                            "finish": generation.finish, "seconds": round(seconds, 4)})
        yield records


def _write_summary(out_dir: Path, config: EvalConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in results.values()]
    summary = {"model": config.model, "adapter": config.adapter, "settings": config_to_dict(config),
               "benchmarks": results, "pending": [name for name in config.benchmarks if name not in results],
               "average": sum(accuracies) / len(accuracies) if accuracies else 0.0,
               "tokens": sum(r["tokens"] for r in results.values()),
               "seconds": round(sum(r["seconds"] for r in results.values()), 3)}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- grading files made elsewhere


def score(benchmark: str, input_path: str | Path, out_path: str | Path, *, data_dir: str | Path | None = None,
          split: str = "test", timeout: float | None = grading.DEFAULT_TIMEOUT,
          progress: bool = True) -> dict[str, Any]:
    """Grade completions made elsewhere; write each input line plus ``pred`` and ``correct``.

    Every line needs ``completion`` and either ``gold`` (an extracted final answer) or an ``id``
    of the benchmark's data, whose gold answer is then parsed like ``evaluate`` does.
    Returns the summary (n, correct, accuracy, ci95, ...).
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
        gold = _gold_text(gold)
        result = grading.grade(completion, gold or "", benchmark, timeout=timeout)
        graded.append({**record, "pred": result.pred, "correct": result.correct})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with JsonlAppender(temporary) as appender:
        appender.write(graded)
    temporary.replace(out_path)
    return {"benchmark": benchmark, **summarize(graded)}


def _gold_text(gold: Any) -> str | None:
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    return None if gold is None else str(gold)
