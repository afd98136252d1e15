"""The control arms: LightReasoner's trajectories trained at other positions or with other labels.

A control reads a LightReasoner sample file (the expert's greedy trajectories, the contrast's kept
steps) and trains the expert on one cell of a small grid, with ``train``'s settings:

positions (as many per trajectory as it has kept steps)
    ``kept``     the contrast's kept steps (KL(pi_E || pi_A) >= beta);
    ``random``   distinct positions drawn uniformly at random with the training seed;
    ``entropy``  the positions where the expert's own next-token distribution has the highest
                 entropy (ties: the earlier position first); no amateur involved.
labels
    ``one-hot``  the expert's greedy token ``completion_ids[t]``;
    ``contrast`` LightReasoner's soft label: at a kept step the stored label, as sampled;
                 elsewhere computed from both models' teacher-forced distributions with the
                 sample file's alpha;
    ``expert``   the expert's own distribution on its plausible set {pi_E >= alpha max pi_E},
                 renormalised.

kept/one-hot is the ``format-only`` arm and random/one-hot the ``random-positions`` arm (the names
published results use); the other cells are named ``<positions>-<labels>``; kept/contrast is
LightReasoner itself (``lightreasoner train``). Each control first writes the examples it trains on
to ``examples.jsonl`` in its folder, in the sample-file format (docs/FORMAT.md), then trains on what
it reads back from that file, so the file is exactly what was trained. The expert's (and, for
contrast labels away from the kept steps, the amateur's) distributions come from one teacher-forced
float32 forward per trajectory over the prompt and the whole completion; those logits can differ in
the last bits from the decode-time ones that chose the tokens (other kernels, other precision).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import training
from .arms import CONTROL_ARMS, LABELS, POSITIONS, Stages, control_started, efficiency_record
from .backends import release_memory
from .batching import logits_only_at
from .config import config_to_dict
from .contrast import entropy, log_probs, plausible_distribution, plausible_mask, soft_labels
from .errors import LightReasonerError
from .examples import sample_examples
from .models import check_same_vocabulary, load_model, load_tokenizer, model_location, resolve_device
from .records import (JsonlAppender, check_writable, file_sha256, read_json, refuse_own_input,
                      repair_torn_tail, write_json_atomic)
from .layout import ADAPTER_DIR, EFFICIENCY_FILE, EXAMPLES_FILE, TRAIN_SUMMARY_FILE, meta_path
from .resume import setting_names
from .sft import _check_arm_settings
from .training import TrainConfig

# What a control's arm.json binds once the folder holds work (:func:`resume_settings`): its cell, its models,
# the samples by content (samples_sha256, so the file may be named by another path) and every training setting
# but how the work is run (resume.RUNTIME_SETTINGS).
RESUME_SETTINGS = ("arm", "model", "amateur", "samples_sha256", *setting_names(TrainConfig, "train."))
# Trajectories per teacher-forced forward: 8 x 128 steps of 151,665 float32 logits is about 0.6 GB.
PASS_BATCH_SIZE = 8


def control_arm(positions: str, labels: str = "one-hot") -> str:
    """The arm name of a grid cell (refusing kept/contrast, which is LightReasoner itself)."""
    if positions not in POSITIONS:
        raise LightReasonerError(f"positions: {positions!r} is not one of {', '.join(POSITIONS)}")
    if labels not in LABELS:
        raise LightReasonerError(f"labels: {labels!r} is not one of {', '.join(LABELS)}")
    if (positions, labels) == ("kept", "contrast"):
        raise LightReasonerError("positions kept with labels contrast is LightReasoner itself: use `lightreasoner train`")
    return CONTROL_ARMS[positions, labels]


def needs_expert(positions: str, labels: str) -> bool:
    return positions == "entropy" or labels == "expert" or needs_amateur(positions, labels)


def needs_amateur(positions: str, labels: str) -> bool:
    return labels == "contrast" and positions != "kept"


def resume_settings(out_dir: Path, positions: str) -> tuple[str, ...]:
    """The settings a rerun must keep in a control's folder: until its training got somewhere, only those its
    examples depend on (no training setting but the seed that drew random positions), so a training start
    that failed locks only what its examples were made with."""
    if training.run_started(out_dir / ADAPTER_DIR):
        return RESUME_SETTINGS
    return tuple(name for name in RESUME_SETTINGS
                 if not name.startswith("train.") or (name == "train.seed" and positions == "random"))


# ----------------------------------------------------------------------------------------------
# Teacher-forced distributions and the choice of positions


@torch.inference_mode()
def teacher_forced_log_probs(model: Any, trajectories: Sequence[tuple[list[int], list[int]]],
                             vocab_size: int) -> list[torch.Tensor]:
    """float32 log pi(.|s_t) over the first ``vocab_size`` rows for every step t of each
    ``(prompt_ids, completion_ids)``: a ``[len(completion_ids), vocab_size]`` tensor each, from one
    forward of the batch. Rows are padded on the right, so real tokens never attend to padding, and
    the output layer runs only at the positions that predict a completion token (the training loop's
    hook, :func:`batching.logits_only_at`)."""
    device = next(model.parameters()).device
    inputs = [list(prompt) + list(completion[:-1]) for prompt, completion in trajectories]
    width = max(map(len, inputs))
    input_ids = torch.zeros((len(inputs), width), dtype=torch.long)
    attention_mask = torch.zeros((len(inputs), width), dtype=torch.long)
    keep = torch.zeros((len(inputs), width), dtype=torch.bool)
    for row, (tokens, (prompt, completion)) in enumerate(zip(inputs, trajectories)):
        input_ids[row, :len(tokens)] = torch.tensor(tokens)
        attention_mask[row, :len(tokens)] = 1
        keep[row, len(prompt) - 1:len(prompt) - 1 + len(completion)] = True  # position of s_t predicts y_t
    if not keep.any():
        return [torch.zeros((0, vocab_size)) for _ in trajectories]
    with logits_only_at(model, keep.to(device)):
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                       position_ids=torch.arange(width).expand(len(inputs), width).to(device), use_cache=False).logits
    return list(log_probs(logits, vocab_size).split([len(c) for _, c in trajectories]))


def highest_entropy_steps(entropies: Sequence[float], count: int) -> list[int]:
    """The ``count`` steps of highest entropy, ascending; of equal entropies the earlier step is taken."""
    ranked = sorted(range(len(entropies)), key=lambda t: (-entropies[t], t))
    return sorted(ranked[:count])


def random_steps(records: Sequence[dict[str, Any]], seed: int) -> list[list[int]]:
    """Per trajectory, as many distinct random steps as it has kept steps: one generator seeded with
    ``seed`` drawing for every trajectory in file order (the published random-positions draw)."""
    rng = random.Random(seed)
    return [sorted(rng.sample(range(len(r["completion_ids"])), len(r["steps"]))) for r in records]


# ----------------------------------------------------------------------------------------------
# Labels


def label_steps(record: dict[str, Any], steps: list[int], labels: str, alpha: float,
                expert_logp: torch.Tensor | None = None, amateur_logp: torch.Tensor | None = None
                ) -> list[dict[str, Any]]:
    """The sample-file ``steps`` entries of one trajectory at ``steps`` with ``labels`` (see the
    module docstring); ``kl`` is the sample file's KL at that step, when it has one."""
    kept = {s["step"]: s for s in record["steps"]}
    kl = record.get("kl") or []
    entries = []
    for t in steps:
        if labels == "contrast" and t in kept:
            entries.append(kept[t])  # the stored label, as sampled
            continue
        entry: dict[str, Any] = {"step": t}
        if t in kept or t < len(kl):
            entry["kl"] = kept[t]["kl"] if t in kept else kl[t]
        if labels == "one-hot":
            entry.update(ids=[record["completion_ids"][t]], weights=[1.0])
        else:
            logp = expert_logp[t]
            mask = plausible_mask(logp, alpha)
            label = (soft_labels(logp, amateur_logp[t], mask) if labels == "contrast"
                     else plausible_distribution(logp, mask))
            ids = torch.nonzero(mask).flatten()
            entry.update(ids=ids.tolist(), weights=label[ids].tolist())
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------------------------
# examples.jsonl


def examples_header(samples_header: dict[str, Any], samples: Path, *, model: str, positions: str, labels: str,
                    seed: int, amateur: str | None) -> dict[str, Any]:
    """The sample file's header (tokenizer, models, settings) plus what the control did."""
    control = {"arm": control_arm(positions, labels), "positions": positions, "labels": labels,
               "samples_sha256": file_sha256(samples)}
    if positions == "random":
        control["seed"] = seed
    if needs_expert(positions, labels):
        control["teacher_forced"] = {"expert": model_location(model), "dtype": "float32"}
        if needs_amateur(positions, labels):
            control["teacher_forced"]["amateur"] = model_location(amateur)
    return {**samples_header, "control": control}


def _resume_examples(out: Path, header: dict[str, Any], records: Sequence[dict[str, Any]], batch_size: int) -> int:
    """How many trajectories ``out`` holds after cutting it back to whole batches (a torn line and
    any part of a batch go: batches are fixed slices of the file, so a redone batch is computed in
    the same company, to the last bit); it must have been made from the same samples and settings."""
    if not out.exists() or out.stat().st_size == 0:
        return 0
    from .sampling import iter_samples

    repair_torn_tail(out)
    _, previous, lines = iter_samples(out)
    if previous != header:  # its header is the samples' header and the control's settings: all of it must match
        raise LightReasonerError(f"{out}: written from other samples or with other settings; remove it to redo it")
    done = 0
    for (where, written), record in zip(lines, records):
        if written.get("id") != record.get("id"):
            raise LightReasonerError(f"{where}: trajectory {written.get('id')!r} is not the samples' "
                                     f"{record.get('id')!r}; remove the file to redo it")
        done += 1
    done -= done % batch_size
    with out.open("rb+") as handle:
        for _ in range(done + 1):
            handle.readline()
        handle.truncate(handle.tell())
    return done


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_examples(samples: str | Path, out: str | Path, *, model: str, positions: str = "kept",
                   labels: str = "one-hot", seed: int = 0, amateur: str | None = None,
                   trust_remote_code: bool = False, batch_size: int = PASS_BATCH_SIZE,
                   progress: bool = True) -> Path:
    """Write the control's training examples to ``out`` (the sample-file format, one record per
    trajectory, ``steps`` holding its positions and labels; when the expert ran, ``entropy`` holds
    its entropy at every step). Appended a batch at a time; rerunning resumes. ``amateur`` defaults
    to the one named in the sample file."""
    from .sampling import read_samples

    samples, out = Path(samples), Path(out)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    sample_examples(samples, tokenizer)  # header, tokenizer and step checks, before any model loads
    samples_header, records = read_samples(samples)
    amateur = (amateur or samples_header.get("amateur")) if needs_amateur(positions, labels) else None
    header = examples_header(samples_header, samples, model=model, positions=positions, labels=labels, seed=seed,
                             amateur=amateur)
    done = _resume_examples(out, header, records, batch_size)
    vocab_size = samples_header["tokenizer"]["vocab_size"]
    alpha = samples_header.get("settings", {}).get("alpha", 0.2)
    drawn = random_steps(records, seed) if positions == "random" else None
    expert = amateur_model = None
    if done < len(records) and needs_expert(positions, labels):
        device = resolve_device(None)
        expert = load_model(model, dtype=torch.float32, device=device, trust_remote_code=trust_remote_code)
        if needs_amateur(positions, labels):
            check_same_vocabulary(tokenizer, load_tokenizer(amateur, trust_remote_code=trust_remote_code),
                                  expert_name=f"expert {model}", amateur_name=f"amateur {amateur}")
            amateur_model = load_model(amateur, dtype=torch.float32, device=device,
                                       trust_remote_code=trust_remote_code)
    if done == 0:
        out.unlink(missing_ok=True)  # a header alone starts afresh
    bar = tqdm(total=len(records), initial=done, desc=f"{control_arm(positions, labels)} examples", unit="traj",
               disable=not progress, dynamic_ncols=True)
    # A new file is written with its first batch, so a start that fails leaves none behind.
    with JsonlAppender(out, header=header) as writer:
        for batch in _batches(range(done, len(records)), batch_size):
            pairs = [(records[i]["prompt_ids"], records[i]["completion_ids"]) for i in batch]
            expert_logp = ([None] * len(batch) if expert is None
                           else teacher_forced_log_probs(expert, pairs, vocab_size))
            amateur_logp = ([None] * len(batch) if amateur_model is None
                            else teacher_forced_log_probs(amateur_model, pairs, vocab_size))
            lines = []
            for i, logp_e, logp_a in zip(batch, expert_logp, amateur_logp):
                record = records[i]
                line = {key: value for key, value in record.items() if key != "steps"}
                if logp_e is not None:
                    line["entropy"] = entropy(logp_e).tolist()
                if positions == "kept":
                    steps = [s["step"] for s in record["steps"]]
                elif positions == "random":
                    steps = drawn[i]
                else:
                    steps = highest_entropy_steps(line["entropy"], len(record["steps"]))
                line["steps"] = label_steps(record, steps, labels, alpha, logp_e, logp_a)
                lines.append(line)
            writer.write(lines)
            bar.update(len(lines))
    bar.close()
    del expert, amateur_model
    release_memory()  # before anything else needs the device (a vLLM engine measures free memory)
    return out


def expert_entropies(model: str, records: Sequence[dict[str, Any]], vocab_size: int, *,
                     trust_remote_code: bool = False, batch_size: int = PASS_BATCH_SIZE,
                     progress: bool = True) -> list[list[float]]:
    """The entropy of the expert's own next-token distribution at every step of each trajectory
    (teacher-forced, float32, over the first ``vocab_size`` rows)."""
    if any("prompt_ids" not in r for r in records):
        raise LightReasonerError("the trajectories have no prompt_ids (a published file: restore it first)")
    expert = load_model(model, dtype=torch.float32, device=resolve_device(None), trust_remote_code=trust_remote_code)
    result: list[list[float]] = []
    with tqdm(total=len(records), desc="expert entropies", unit="traj", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in _batches(records, batch_size):
            pairs = [(r["prompt_ids"], r["completion_ids"]) for r in batch]
            result += [entropy(logp).tolist() for logp in teacher_forced_log_probs(expert, pairs, vocab_size)]
            bar.update(len(batch))
    return result


# ----------------------------------------------------------------------------------------------
# The arm


def control(model: str, samples: str | Path, config: TrainConfig, out_dir: str | Path, *, positions: str = "kept",
            labels: str = "one-hot", amateur: str | None = None, sample_seconds: float | None = None,
            progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """A control into ``out_dir`` (examples.jsonl, adapter/, efficiency.json); resumes.

    Its cost includes the LightReasoner sampling that made the trajectories (``sample_seconds``, or
    the seconds in the sample file's ``.meta.json`` sidecar) and, for a cell that needs the models'
    distributions, the teacher-forced pass that wrote the examples. Returns the efficiency record.
    """
    from .sampling import read_samples

    out_dir, samples = Path(out_dir), Path(samples)
    arm = control_arm(positions, labels)
    refuse_own_input(out_dir, {"model folder": model, "amateur model folder": amateur})
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config, resume=True)
    settings = {"arm": arm, "model": model_location(model), "samples": str(samples),
                "samples_sha256": file_sha256(samples), "train": config_to_dict(config)}
    if needs_amateur(positions, labels):
        settings["amateur"] = model_location(amateur or read_samples(samples)[0].get("amateur"))
    _check_arm_settings(out_dir, settings, resume_settings(out_dir, positions), started=control_started)
    stages = Stages(out_dir)
    examples = out_dir / EXAMPLES_FILE
    if not examples.exists():
        stages.state.pop("examples", None)  # e.g. a restored arm folder: write them again
    stages.timed("examples", lambda: write_examples(samples, examples, model=model, positions=positions, labels=labels,
                                                    seed=config.seed, amateur=amateur,
                                                    trust_remote_code=config.trust_remote_code, progress=progress),
                 say)
    stages.finish("examples")

    def fine_tune() -> None:
        tokenizer = load_tokenizer(model, trust_remote_code=config.trust_remote_code)
        data = replace(sample_examples(examples, tokenizer, max_length=config.max_length), format=arm)
        training.train(model, data, config, out_dir / ADAPTER_DIR, samples=str(examples))

    stages.timed("train", fine_tune, say)
    stages.finish("train")
    _, records = read_samples(samples)
    if sample_seconds is None:
        meta = meta_path(samples)
        sample_seconds = float(read_json(meta).get("seconds", 0.0)) if meta.exists() else 0.0
    counts = {"problems_sampled": len(records), "tokens_generated": sum(len(r["completion_ids"]) for r in records),
              "examples_kept": sum(len(r["steps"]) for r in records)}
    seconds = {"sample": round(sample_seconds, 2)}
    if needs_expert(positions, labels):
        seconds["examples"] = stages.state["examples"]["seconds"]
    seconds["train"] = stages.state["train"]["seconds"]
    record = efficiency_record(arm, seconds, counts, read_json(out_dir / ADAPTER_DIR / TRAIN_SUMMARY_FILE))
    write_json_atomic(out_dir / EFFICIENCY_FILE, record)
    return record
