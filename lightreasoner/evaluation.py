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
batching (:mod:`lightreasoner.decoding`; or llama.cpp on the model's GGUF, :mod:`lightreasoner.llamacpp`;
or vLLM; both imported only when asked for), stopping on every end token of
:func:`lightreasoner.models.stop_token_ids`. Vocabulary rows past the tokenizer's real
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
from .config import config_to_dict
from .data import BENCHMARKS, GENERATED, Problem, check_same_problems, load_problems
from .errors import LightReasonerError
from .records import JsonlAppender, iter_jsonl, read_json, repair_torn_tail, write_json_atomic

PAPER_BENCHMARKS = ["gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]
Z95 = 1.959963984540054  # two-sided 95% normal quantile
# A stop string is looked for in the text of a completion's last tokens, decoded at every step.
STOP_STRING_TOKENS = 16
# Settings that decide the completions: a folder's answers are only resumed under the same ones. The
# adapter counts by its content, not its path, so answers resume wherever the same adapter is rebuilt.
RUN_KEYS = ("model", "adapter_sha256", "prompt", "max_new_tokens", "dtype", "backend", "split")
BACKENDS = ("hf", "llamacpp", "vllm")


@dataclass
class EvalConfig:
    model: str = field(default="", metadata={"help": "model: short name, local folder, .gguf file or Hub id"})
    adapter: str | None = field(default=None, metadata={"help": "peft (LoRA) adapter folder to load on the model"})
    benchmarks: list[str] = field(default_factory=lambda: list(PAPER_BENCHMARKS),
                                  metadata={"help": "benchmarks to run, comma separated; default: the paper's seven, " + ",".join(PAPER_BENCHMARKS)})
    split: str = field(default="test", metadata={"help": "data split file <data-dir>/<name>/<split>.jsonl"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with <benchmark>/<split>.jsonl files"})
    limit: int | None = field(default=None, metadata={"help": "only the first N questions of each benchmark"})
    sample: int | dict[str, int] | None = field(default=None, metadata={
        "help": "a seeded random N questions of each benchmark, or per benchmark: gsm8k=300,math500=100 "
                "(benchmarks not named: all questions); a smaller N of the same seed is a subset of a larger one"})
    seed: int = field(default=0, metadata={"help": "seed for --sample"})
    prompt: str = field(default=prompts.DEFAULT_PROMPT, metadata={"help": "prompt template: qwen25-math-cot or plain"})
    max_new_tokens: int = field(default=2048, metadata={"help": "generation limit per answer"})
    batch_size: int = field(default=16, metadata={"help": "questions decoded together (hf and llamacpp backends)"})
    backend: str = field(default="hf", metadata={
        "help": f"{' or '.join(BACKENDS)}: llamacpp and vllm are optional extras (docs/EVALUATION.md)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware computes it, else fp16 on GPU / fp32 on CPU), bfloat16, float16 or float32"})
    grading_timeout: float = field(default=grading.DEFAULT_TIMEOUT,
                                   metadata={"help": "seconds allowed to grade one answer"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run model code from the model folder"})

    def __post_init__(self) -> None:
        known = [*BENCHMARKS, *GENERATED]
        unknown = [name for name in self.benchmarks if name not in known]
        if unknown:
            raise ValueError(f"--benchmarks: unknown benchmark {unknown[0]!r} (choose from {', '.join(known)})")
        if not self.benchmarks:
            raise ValueError("--benchmarks: no benchmark given")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend: expected {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.prompt not in prompts.PROMPTS:
            raise ValueError(f"--prompt: unknown prompt {self.prompt!r} (choose from {', '.join(prompts.PROMPTS)})")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
        sizes = self.sample if isinstance(self.sample, dict) else {}
        stray = [name for name in sizes if name not in self.benchmarks]
        if stray:
            raise ValueError(f"--sample: {stray[0]!r} is not one of the benchmarks {', '.join(self.benchmarks)}")
        if any(not isinstance(n, int) or n < 1 for n in [*sizes.values(), *([self.sample] if isinstance(
                self.sample, int) else [])]):
            raise ValueError(f"--sample: sizes must be whole numbers of at least 1, got {self.sample!r}")

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


def llamacpp_generate(model_spec: str, tokenizer: Any, prompt_texts: Sequence[str], *, max_new_tokens: int,
                      batch_size: int, adapter: str | None = None, stop_strings: Sequence[str] = (),
                      progress: bool = True, desc: str = "generate") -> Iterator[list[tuple[int, Generation, float]]]:
    """Greedy completions with llama.cpp on the model's GGUF (optional extra, :mod:`lightreasoner.llamacpp`):
    the same prompt token ids, end tokens, stop strings and real-vocabulary rows as :func:`hf_generate`,
    ``batch_size`` sequences decoded together with continuous batching; yields each completion as it ends."""
    from tqdm.auto import tqdm

    from .gguf_export import adapter_gguf, model_gguf
    from .llamacpp import LlamaCppModel, import_llama_cpp
    from .models import encode_prompt, model_configs, real_vocab_size, stop_token_ids

    import_llama_cpp()  # refused before any conversion when the extra is missing
    gguf = model_gguf(model_spec, progress=progress)
    stops = stop_token_ids(tokenizer, model_configs(model_spec))
    encoded = [encode_prompt(tokenizer, text) for text in prompt_texts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))

    def stop_text(ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-STOP_STRING_TOKENS:], skip_special_tokens=True)
        return any(stop in tail for stop in stop_strings)

    with LlamaCppModel(gguf, adapter=adapter_gguf(adapter, gguf) if adapter else None) as model, \
            tqdm(total=len(order), desc=desc, unit="q", disable=not progress) as bar:
        for done in model.decode([encoded[i] for i in order], slots=batch_size, max_new_tokens=max_new_tokens,
                                 stop_ids=stops, vocab_size=real_vocab_size(tokenizer),
                                 stop_text=stop_text if stop_strings else None):
            yield [(order[done.index], _finish(tokenizer, done.token_ids, stops, stop_strings), done.seconds)]
            bar.update(1)


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


def _check_run_settings(out_dir: Path, config: EvalConfig) -> None:
    settings = {key: getattr(config, key) for key in RUN_KEYS if key != "adapter_sha256"}
    settings["adapter_sha256"] = adapter_fingerprint(config.adapter) if config.adapter else None
    path = out_dir / "run.json"
    if path.exists():
        previous = read_json(path)
        changed = [key for key in RUN_KEYS if previous.get(key) != settings[key]]
        if changed:
            key = changed[0]
            raise LightReasonerError(
                f"{path}: this folder holds results for {key}={previous.get(key)!r}, not {settings[key]!r}; "
                f"use another --out folder, or delete {out_dir} to answer again")
    else:
        write_json_atomic(path, {**settings, "adapter": config.adapter})


def _done_records(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by question id (a torn last line is cut off and redone)."""
    if not path.exists():
        return {}
    repair_torn_tail(path)
    return {str(record["id"]): record for _, record in iter_jsonl(path)}


def load_for_eval(config: EvalConfig) -> tuple[Any, Any]:
    """The model (with its adapter, if any) and tokenizer, ready for generation."""
    from .models import load_model, load_tokenizer, resolve_device, resolve_dtype

    if not config.model:
        raise LightReasonerError("--model: no model given")
    # Before the model loads, which takes minutes for a real expert (evaluate() checks this earlier
    # still, with the adapter's fingerprint; this is for callers of load_for_eval itself).
    if config.adapter and not (Path(config.adapter) / "adapter_config.json").is_file():
        raise LightReasonerError(f"{config.adapter}: no adapter_config.json here, so it is not a peft adapter folder")
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    if config.backend == "llamacpp":
        return None, tokenizer  # llama.cpp loads the model's GGUF itself
    model = load_model(config.model, dtype=resolve_dtype(config.dtype, device), device=device,
                       trust_remote_code=config.trust_remote_code)
    if config.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(config.adapter), use_safetensors=True).eval()
    return model, tokenizer


def evaluate(config: EvalConfig, out_dir: str | Path, *, model: Any = None, tokenizer: Any = None,
             progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation ``config`` into ``out_dir`` and return the summary.

    ``model``/``tokenizer`` may be passed in already loaded (e.g. by ``lightreasoner run``);
    otherwise they are loaded from ``config.model`` (+ ``config.adapter``) when there is work left.
    """
    if config.backend == "llamacpp":
        from .llamacpp import import_llama_cpp

        import_llama_cpp()  # a missing extra is refused before the folder records this backend
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_settings(out_dir, config)
    template = prompts.get_template(config.prompt)
    problems = {name: load_problems(name, split=config.split, data_dir=config.data_dir, limit=config.limit,
                                    sample=config.sample_size(name), seed=config.seed) for name in config.benchmarks}
    results: dict[str, dict[str, Any]] = {}
    for name, items in problems.items():
        path = out_dir / f"{name}.jsonl"
        done = _done_records(path)
        check_same_problems(path, done.values(), items)
        todo = [p for p in items if p.id not in done]
        if todo:
            if tokenizer is None or (model is None and config.backend != "llamacpp"):
                model, tokenizer = load_for_eval(config)
            with JsonlAppender(path) as appender:
                for batch in _generate(config, model, tokenizer, name, todo, template, progress):
                    appender.write(batch)
                    done.update((record["id"], record) for record in batch)
        results[name] = summarize([done[p.id] for p in items])
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
    elif config.backend == "llamacpp":
        batches = llamacpp_generate(config.model, tokenizer, texts, max_new_tokens=config.max_new_tokens,
                                    batch_size=config.batch_size, adapter=config.adapter,
                                    stop_strings=template.stop_strings, progress=progress, desc=benchmark)
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
    input_path = Path(input_path)
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
    out_path = Path(out_path)
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
