"""The sampling stage: expert trajectories -> contrastive soft-label steps (the method: docs/METHOD.md).

For a batch of questions the expert decodes greedily with a KV cache (our own loop, not
``generate``: the raw logits that chose each token are the ones contrasted, and no logits
processor or sampling setting of the model can interfere). The amateur follows behind with
its own KV cache: every ``contrast_every`` steps it is fed the new expert tokens in one
teacher-forced chunk, which yields pi_A for those steps at prefill speed. The chunk is then
reduced to KL values and sparse soft labels, so at most ``batch x contrast_every``
vocabulary-sized rows are ever held.

Records are appended one batch at a time; rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from . import __version__
from .config import check_fields, config_to_dict
from .contrast import KeptStep, select_steps
from .data import check_same_problems, load_problems
from .problems import Problem
from .decoding import cached_forward, left_padded
from .errors import LightReasonerError
from .layout import STAGES_FILE, meta_path
from .models import (DTYPE_HELP, chat_prompt, check_prompts_fit, check_same_vocabulary, context_length, encode_prompt,
                     load_model, load_tokenizer, model_location, real_vocab_size, resolve_device, resolve_dtype,
                     stop_token_ids, tokenizer_fingerprint)
from .records import JsonlAppender, check_writable, first_record, read_json, repair_torn_tail, write_json_atomic
from .resume import check_header, check_same_settings, read_header

log = logging.getLogger(__name__)

FORMAT = "lightreasoner-samples"
FORMAT_VERSION = 1
# Settings that change what a record contains: a resumed run must use the same ones.
RESUME_SETTINGS = ("expert", "amateur", "data", "split", "max_new_tokens", "alpha", "beta", "system_prompt", "dtype",
                   "batch_size")


@dataclass
class SampleConfig:
    expert: str = field(default="coder-1.5b", metadata={"help": "expert model: short name, folder, .gguf or Hub id"})
    amateur: str = field(default="coder-0.5b", metadata={"help": "amateur model: short name, folder, .gguf or Hub id"})
    data: str = field(default="gsm8k", metadata={"help": "benchmark name or JSONL file of questions"})
    split: str = field(default="train", metadata={"help": "benchmark split"})
    data_dir: str | None = field(default=None, metadata={"help": "folder holding <benchmark>/<split>.jsonl"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N questions", "min": 1})
    max_new_tokens: int = field(default=128, metadata={"help": "trajectory length (prefix termination)", "min": 1})
    alpha: float = field(default=0.2, metadata={"help": "plausible set: pi_E(a) >= alpha * max pi_E", "above": 0,
                                                "max": 1})
    beta: float = field(default=0.4, metadata={"help": "keep steps with KL(pi_E || pi_A) >= beta", "min": 0})
    system_prompt: str = field(default="Please reason step by step.", metadata={"help": "system prompt"})
    batch_size: int = field(default=16, metadata={"help": "questions decoded together", "min": 1})
    contrast_every: int = field(default=16, metadata={"help": "amateur catches up every N decoding steps", "min": 1})
    dtype: str = field(default="auto", metadata={"help": "model dtype: " + DTYPE_HELP})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    seed: int = field(default=0, metadata={"help": "seed (for sampled data subsets)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model repositories' own code"})

    def __post_init__(self) -> None:
        check_fields(self)
        self.expert, self.amateur = model_location(self.expert), model_location(self.amateur)


@dataclass
class Trajectory:
    """One question's greedy expert trajectory and its kept steps."""

    problem: Problem
    prompt: str
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    finish: str = "length"
    steps: list[KeptStep] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # every step's KL, for statistics

    def record(self) -> dict[str, Any]:
        return {
            "type": "sample", "id": self.problem.id, "question": self.problem.question, "gold": self.problem.gold,
            "prompt": self.prompt, "prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids,
            "finish": self.finish, "kl": self.kl,
            "steps": [{"step": s.step, "kl": s.kl, "ids": s.token_ids, "weights": s.weights} for s in self.steps],
        }


@dataclass
class ModelPair:
    expert: PreTrainedModel
    amateur: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int  # shared real vocabulary rows: the contrast is computed over these
    stop_ids: list[int]


def load_pair(config: SampleConfig) -> ModelPair:
    """Load both models and check, before any work, that they share one vocabulary."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = load_tokenizer(config.expert, trust_remote_code=config.trust_remote_code)
    amateur_tokenizer = load_tokenizer(config.amateur, trust_remote_code=config.trust_remote_code)
    shared = check_same_vocabulary(tokenizer, amateur_tokenizer, expert_name=f"expert {config.expert}",
                                   amateur_name=f"amateur {config.amateur}")
    expert = load_model(config.expert, dtype=dtype, device=device, trust_remote_code=config.trust_remote_code)
    amateur = load_model(config.amateur, dtype=dtype, device=device, trust_remote_code=config.trust_remote_code)
    rows = min(m.get_output_embeddings().weight.shape[0] for m in (expert, amateur))
    vocab_size = min(shared, rows, real_vocab_size(tokenizer, expert))
    return ModelPair(expert, amateur, tokenizer, vocab_size, stop_token_ids(tokenizer, expert))


@torch.inference_mode()
def sample_batch(pair: ModelPair, problems: list[Problem], config: SampleConfig) -> list[Trajectory]:
    """Greedy expert rollouts for a batch of questions, contrasted with the amateur step by step."""
    device = pair.expert.device
    batch = []
    for problem in problems:
        text = chat_prompt(pair.tokenizer, problem.question, config.system_prompt)
        batch.append(Trajectory(problem, text, encode_prompt(pair.tokenizer, text)))
    pad = pair.tokenizer.pad_token_id
    input_ids, prompt_mask = left_padded([t.prompt_ids for t in batch], pad, device)

    def mask_after(new_tokens: int) -> torch.Tensor:
        return torch.cat([prompt_mask, prompt_mask.new_ones(len(batch), new_tokens)], dim=1)

    stop = torch.tensor(pair.stop_ids, device=device)
    expert_cache, amateur_cache = DynamicCache(), DynamicCache()
    expert_row = cached_forward(pair.expert, input_ids, prompt_mask, expert_cache, keep_last=True)[:, -1]
    amateur_carry = cached_forward(pair.amateur, input_ids, prompt_mask, amateur_cache, keep_last=True)[:, -1]
    expert_rows: list[torch.Tensor] = []  # expert logits of the steps not yet contrasted, [B, V] each
    tokens: list[torch.Tensor] = []  # y_t of every step, [B] each
    lengths = torch.full((len(batch),), config.max_new_tokens, device=device)
    done = torch.zeros(len(batch), dtype=torch.bool, device=device)
    start = 0  # first step of the chunk being collected

    for step in range(config.max_new_tokens):
        expert_rows.append(expert_row)
        next_tokens = expert_row[:, :pair.vocab_size].argmax(-1)  # padding rows are never generated
        next_tokens = torch.where(done, pad, next_tokens)
        tokens.append(next_tokens)
        finished_now = ~done & torch.isin(next_tokens, stop)
        lengths = torch.where(finished_now, step + 1, lengths)
        done |= finished_now
        last = step + 1 == config.max_new_tokens or bool(done.all())
        if last or len(expert_rows) == config.contrast_every:
            # The amateur holds the row of step `start`; one teacher-forced chunk over the tokens
            # since then gives the rest (and, unless this is the end, the row of step + 1).
            fed = step - start + (0 if last else 1)
            rows = [amateur_carry]
            if fed:
                chunk = torch.stack(tokens[start:start + fed], dim=1)
                rows += cached_forward(pair.amateur, chunk, mask_after(start + fed), amateur_cache,
                                       keep_last=False).unbind(1)
            if not last:
                amateur_carry = rows.pop()
            _contrast_chunk(batch, start, expert_rows, rows, lengths.tolist(), pair.vocab_size, config)
            expert_rows, start = [], step + 1
        if last:
            break
        expert_row = cached_forward(pair.expert, next_tokens[:, None], mask_after(step + 1), expert_cache,
                              keep_last=True)[:, -1]

    all_tokens = torch.stack(tokens, dim=1).tolist()
    for trajectory, row, length, stopped in zip(batch, all_tokens, lengths.tolist(), done.tolist()):
        trajectory.completion_ids = row[:length]
        trajectory.finish = "eos" if stopped else "length"
    return batch


def _contrast_chunk(batch: list[Trajectory], start: int, expert_rows: list[torch.Tensor],
                    amateur_rows: list[torch.Tensor], lengths: list[int], vocab_size: int,
                    config: SampleConfig) -> None:
    """Reduce steps ``start..start+len(rows)-1`` of every sequence to KL values and kept steps."""
    expert = torch.stack(expert_rows, dim=1)  # [B, C, V]
    amateur = torch.stack(amateur_rows, dim=1)
    owners = [(i, start + c) for i in range(len(batch)) for c in range(expert.shape[1]) if start + c < lengths[i]]
    if not owners:
        return
    index_b = torch.tensor([i for i, _ in owners], device=expert.device)
    index_c = torch.tensor([s - start for _, s in owners], device=expert.device)
    try:
        kept, kl = select_steps(expert[index_b, index_c], amateur[index_b, index_c], vocab_size=vocab_size,
                                alpha=config.alpha, beta=config.beta)
    except FloatingPointError:
        ids = sorted({batch[i].problem.id for i, _ in owners})
        raise LightReasonerError(f"NaN or infinite logits while contrasting questions {ids[:5]} "
                                 f"(--dtype {config.dtype}): try --dtype float32") from None
    for (i, _), value in zip(owners, kl.tolist()):
        batch[i].kl.append(value)
    for step in kept:
        i, position = owners[step.step]
        batch[i].steps.append(KeptStep(position, step.kl, step.token_ids, step.weights))


@dataclass
class SampleStats:
    """What a sampling run did (accumulated over resumed runs); saved as ``<out>.meta.json``."""

    questions: int = 0
    questions_planned: int = 0  # questions the run asked for (all done when complete)
    kept_steps: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    sessions: int = 0
    complete: bool = False
    versions: dict[str, str] = field(default_factory=dict)

    def add(self, trajectories: list[Trajectory]) -> None:
        for t in trajectories:
            self.questions += 1
            self.kept_steps += len(t.steps)
            self.tokens_generated += len(t.completion_ids)


def _header(config: SampleConfig, pair: ModelPair) -> dict[str, Any]:
    return {"type": "header", "format": FORMAT, "version": FORMAT_VERSION, "expert": config.expert,
            "amateur": config.amateur,
            "tokenizer": {"fingerprint": tokenizer_fingerprint(pair.tokenizer), "vocab_size": pair.vocab_size},
            "settings": config_to_dict(config)}


def iter_samples(path: str | Path) -> tuple[str, dict[str, Any], Iterator[tuple[str, dict[str, Any]]]]:
    """The one reader of the sample file (docs/FORMAT.md), JSONL or its Parquet export (``export --format
    parquet``): where its header is, the header (format and version checked), and ``(where, record)`` of
    each trajectory, read lazily; a line that is not a trajectory, or a torn last line, is an error here."""
    path = Path(path)
    if path.suffix == ".parquet":
        from .parquet import read_parquet

        header, records = read_parquet(path)
        origin = f"{path} (schema metadata)"
        check_header(header, origin, FORMAT, FORMAT_VERSION, "lightreasoner sample file")
        lines: Iterator[tuple[str, dict[str, Any]]] = ((f"{path} row {i}", r) for i, r in enumerate(records, start=1))
    else:
        origin, header, lines = read_header(path, FORMAT, FORMAT_VERSION, "lightreasoner sample file")
    return origin, header, (_trajectory(where, record) for where, record in lines)


def _trajectory(where: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if record.get("type") != "sample":
        raise LightReasonerError(f"{where}: expected a line with \"type\": \"sample\"")
    return where, record


def read_samples(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the trajectories of a sample file (:func:`iter_samples`)."""
    _, header, lines = iter_samples(path)
    return header, [record for _, record in lines]


def _resume_state(out: Path, config: SampleConfig, problems: list[Problem]) -> tuple[set[str], SampleStats]:
    """Ids already done in ``out`` (after repairing a torn tail), checking the settings and questions match.
    A file that is not a sample file is refused before anything touches it."""
    if not out.exists() or out.stat().st_size == 0:
        return set(), SampleStats()
    if not out.is_file() or (first_record(out) or {}).get("format") != FORMAT:
        raise LightReasonerError(f"{out}: exists and is not a lightreasoner sample file (no '{FORMAT}' header); "
                                 "it was left as it is: choose another --out")
    removed = repair_torn_tail(out)
    if removed:
        log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run; redoing it", out, removed)
    header, records = read_samples(out)
    check_same_settings(out, header.get("settings", {}), config_to_dict(config), RESUME_SETTINGS,
                        hint="use another --out to start a new file")
    check_same_problems(out, records, problems)
    stats = SampleStats(**read_json(meta_path(out))) if meta_path(out).exists() else SampleStats()
    # The records are the truth; the sidecar may be one batch behind after a crash.
    recount = SampleStats(seconds=stats.seconds, sessions=stats.sessions)
    recount.questions = len(records)
    recount.kept_steps = sum(len(r["steps"]) for r in records)
    recount.tokens_generated = sum(len(r["completion_ids"]) for r in records)
    return {r["id"] for r in records}, recount


def sample(config: SampleConfig, out: str | Path, *, progress: bool = True,
           pair: ModelPair | None = None) -> SampleStats:
    """Run the sampling stage into ``out`` (JSONL, see docs/FORMAT.md); resume if it exists."""
    out = Path(out)
    check_writable(out)
    problems = load_problems(config.data, split=config.split, data_dir=config.data_dir, limit=config.limit,
                             seed=config.seed)
    done_ids, stats = _resume_state(out, config, problems)
    todo = [p for p in problems if p.id not in done_ids]
    pair = pair or load_pair(config)
    _check_prompts_fit(pair, todo, config)
    torch.manual_seed(config.seed)
    stats.sessions += 1
    stats.questions_planned = len(problems)
    stats.complete = not todo
    stats.versions = {"lightreasoner": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                      "python": platform.python_version()}
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="sampling", unit="q",
               disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    session_tokens = 0
    # The header goes in with the first batch: a run that fails before its first result leaves no file.
    with JsonlAppender(out, header=_header(config, pair)) as writer:
        for offset in range(0, len(todo), config.batch_size):
            trajectories = sample_batch(pair, todo[offset:offset + config.batch_size], config)
            writer.write([t.record() for t in trajectories])
            stats.add(trajectories)
            session_tokens += sum(len(t.completion_ids) for t in trajectories)
            elapsed = time.perf_counter() - started
            stats.complete = offset + config.batch_size >= len(todo)
            write_json_atomic(meta_path(out), {**dataclasses.asdict(stats), "seconds": stats.seconds + elapsed})
            bar.update(len(trajectories))
            bar.set_postfix(kept=stats.kept_steps, tok_s=f"{session_tokens / elapsed:.1f}")
    bar.close()
    stats.seconds += time.perf_counter() - started
    write_json_atomic(meta_path(out), dataclasses.asdict(stats))
    return stats


def _check_prompts_fit(pair: ModelPair, todo: list[Problem], config: SampleConfig) -> None:
    """Refuse, before any decoding, a question whose prompt and trajectory do not fit both models' context."""
    contexts = [c for c in (context_length(pair.expert), context_length(pair.amateur)) if c is not None]
    lengths = {p.id: len(encode_prompt(pair.tokenizer, chat_prompt(pair.tokenizer, p.question, config.system_prompt)))
               for p in todo}
    check_prompts_fit(lengths, config.max_new_tokens, min(contexts, default=None),
                      model=f"expert {config.expert} and amateur {config.amateur}", source=config.data)


def check_complete(path: str | Path) -> None:
    """Refuse a sample file whose sampling run did not finish (its ``.meta.json`` says ``complete: false``,
    or is missing), saying how many questions it holds; files of the authors' format are not checked.
    A control's ``examples.jsonl`` is complete once its folder's ``stages.json`` says it was written whole."""
    path = Path(path)
    header = first_record(path) or {}
    if header.get("format") != FORMAT:
        return
    if "control" in header:
        stages = path.parent / STAGES_FILE
        if stages.is_file() and read_json(stages).get("examples", {}).get("done"):
            return
        raise LightReasonerError(f"{path}: a control's examples, and no stages.json beside it says the control "
                                 "finished writing them; rerun the same `lightreasoner control` to complete them, "
                                 "or pass --allow-incomplete to train on what it holds")
    meta = read_json(meta_path(path)) if meta_path(path).is_file() else None
    if meta is not None and meta.get("complete"):
        return
    lines = path.read_bytes().split(b"\n")[:-1]  # whole lines only: a torn last one is no question held
    held = sum(1 for line in lines if line.startswith(b'{"type": "sample"'))
    planned = (meta or {}).get("questions_planned")
    count = f"{held:,} of the {planned:,} questions its run asked for" if planned else f"{held:,} question(s)"
    why = "its sampling run did not finish" if meta is not None else f"no {meta_path(path).name} beside it says " \
        "its sampling run finished"
    raise LightReasonerError(f"{path}: {why}: it holds {count}; rerun the same `lightreasoner sample` to complete "
                             "it, or pass --allow-incomplete to train on what it holds")


def summary(stats: SampleStats, out: Path, config: SampleConfig) -> str:
    """One paragraph for the end of a run."""
    share = f"{stats.kept_steps / max(stats.tokens_generated, 1):.1%} of all steps"
    rate = stats.tokens_generated / stats.seconds if stats.seconds else 0.0
    return (f"Sampled {stats.questions:,} questions with expert {config.expert} and amateur {config.amateur}: "
            f"{stats.tokens_generated:,} tokens generated ({rate:.1f} tok/s over {stats.seconds:.0f} s), "
            f"{stats.kept_steps:,} steps kept with KL >= {config.beta} ({share}), "
            f"{stats.kept_steps / max(stats.questions, 1):.1f} per question. Samples: {out}")
