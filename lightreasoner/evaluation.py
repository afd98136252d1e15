"""Zero-shot greedy evaluation on the paper's benchmarks: generate, grade, summarise, resume.

``evaluate(config, out_dir)`` writes into ``out_dir``:

* ``<benchmark>.jsonl``: one line per question (id, prompt, completion, gold, pred, source,
  correct, correct_strict, tokens, finish, seconds), appended and fsynced as each answer ends. A
  rerun with the same ``out_dir`` skips the questions already there, so a killed evaluation
  resumes where it stopped. ``correct`` is the Qwen2.5-Math toolkit's verdict, ``correct_strict``
  also asks for a stated final answer in a completion that was not cut off (:mod:`lightreasoner.grading`).
* ``run.json``: the settings that decide the completions (model, adapter, prompt, max tokens,
  dtype, backend); a rerun with different ones is refused rather than mixed into old results.
* ``summary.json``: per benchmark n, both verdicts' counts, accuracies and 95% Wilson intervals,
  the answers cut off at the token limit, tokens and seconds, plus the unweighted average over
  benchmarks (the paper's "Avg.") of both; rewritten as each benchmark ends, with the benchmarks
  still to come under ``pending``.

:func:`regrade` grades a folder's answers again (e.g. a published one, whose gold answers come back
from the data), and :func:`score` grades completions made elsewhere.

Generation is greedy pass@1 like the Qwen2.5-Math toolkit: a cached decoding loop with continuous
batching (:mod:`lightreasoner.decoding`; or vLLM, imported only when asked for), stopping on every
end token of :func:`lightreasoner.models.stop_token_ids`. Vocabulary rows past the tokenizer's real
vocabulary are never generated. The model's own generation config (which may sample) plays no part.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence


from . import grading, prompts
from .config import config_to_dict
from .data import BENCHMARKS, GENERATED, Problem, check_same_problems, load_problems
from .errors import LightReasonerError
from .records import JsonlAppender, iter_jsonl, read_json, repair_torn_tail, write_json_atomic
from .stats import wilson_interval

PAPER_BENCHMARKS = ["gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem"]
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
    limit: int | None = field(default=None, metadata={"help": "only the first N questions of each benchmark"})
    sample: int | dict[str, int] | None = field(default=None, metadata={
        "help": "a seeded random N questions of each benchmark, or per benchmark: gsm8k=300,math500=100 "
                "(benchmarks not named: all questions); a smaller N of the same seed is a subset of a larger one"})
    seed: int = field(default=0, metadata={"help": "seed for --sample"})
    prompt: str = field(default=prompts.DEFAULT_PROMPT, metadata={"help": "prompt template: qwen25-math-cot or plain"})
    max_new_tokens: int = field(default=2048, metadata={"help": "generation limit per answer"})
    batch_size: int = field(default=16, metadata={"help": "questions decoded together (HF backend)"})
    backend: str = field(default="hf", metadata={"help": "hf or vllm (optional extra)"})
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
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend: expected hf or vllm, got {self.backend!r}")
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
            if model is None or tokenizer is None:
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
    else:
        batches = hf_generate(model, tokenizer, texts, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size, stop_strings=template.stop_strings, progress=progress,
                              desc=benchmark)
    for batch in batches:
        records = []
        for index, generation, seconds in batch:
            problem = todo[index]
            record = {"id": problem.id, "benchmark": benchmark, "prompt": texts[index],
                      "completion": generation.completion, "gold": problem.gold, "tokens": generation.tokens,
                      "finish": generation.finish, "seconds": round(seconds, 4)}
            records.append(_graded(record, problem.gold, benchmark, config.grading_timeout))
        yield records


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
    """An evaluation folder: its run.json records the settings of its answers (RUN_KEYS)."""
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
        lines = list(iter_jsonl(path))
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
        finish = record.get("finish")
        if finish is not None and not isinstance(finish, str):
            raise LightReasonerError(f"{where}: field 'finish' must be a string (\"length\" when cut off)")
        result = grading.grade(completion, _gold_text(gold) or "", benchmark, finish=finish, timeout=timeout)
        graded.append({**record, "pred": result.pred, "source": result.source, "correct": result.correct,
                       "correct_strict": result.correct_strict})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _replace_jsonl(out_path, graded)
    return {"benchmark": benchmark, **summarize(graded)}


def _gold_text(gold: Any) -> str | None:
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    return None if gold is None else str(gold)
