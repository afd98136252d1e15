"""Sizing ``lightreasoner run`` to a time budget on the machine it runs on (``--time-budget MINUTES``).

CPUs differ by more than 3x in what the default run costs (AVX-512 with bf16 against AVX2 only),
so the run measures its own speed first (1-4 minutes, taken off the budget): a few cached decoding
steps and a prefill of the expert at the run's batch width on torch, without and with a fresh LoRA
adapter of the run's settings (sampling runs the bare expert; training and evaluation after training run it with an
adapter, which peft keeps unmerged and in float32: 1.1x the bare expert's decoding step in
bfloat16 on an AMX CPU), and the evaluation backend's steps (llama.cpp or torch). The
stages' costs follow from those speeds through ratios measured on this project's own runs (the
constants below), and the plan scales the demonstration's proportions (16 training questions : 6
optimizer steps : 16 evaluation questions, so training leaves about a third of the kept steps
unseen for the adapter fit) until the estimate fills what measuring left of the budget. The plan is
printed before any stage starts and recorded in run.json, so a resumed run keeps it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

# The demonstration's proportions, scaled by the plan (at least half of them: 8 : 3 : 8). 6 optimizer steps
# of 16 kept steps train on 96 of the ~140 that 16 arithmetic questions keep (8.9 per question at 128
# tokens, beta 0.4; GSM8K keeps more), leaving the rest for the adapter fit's never-seen group.
UNIT = {"questions": 16, "max_steps": 6, "eval_limit": 16}
SMALLEST_SCALE = 0.5
# From results/embedded-gsm8k (float32, batch 32, one machine; benchmarks/README.md): sampling generated
# 18.1 tokens/s where evaluation of the same expert generated 26.2, i.e. the amateur's teacher-forced chunks
# and the contrast cost 1.45x plain decoding per generated token. Two default runs (16 questions, one batch)
# took 1.16x and 1.42x that estimate (loading the amateur and prefilling the prompts weigh more on a small
# run): 1.45 x 1.3.
SAMPLING_OVERHEAD = 1.9
# Training's forward tokens per kept step trained: a default run forwarded 3,175 tokens (192-token
# sequences: prompt and trajectory) for 128 kept steps, one sequence per 7.7 kept steps (pieces of a
# trajectory in two updates are forwarded twice; micro-batches are padded).
KEPT_PER_FORWARD = 7.7
TRAIN_PASSES = 3.0  # forward and backward cost about three forward passes (measured: 3.2x the prefill token)
# The adapter fit scores in float32 whatever the run's dtype: 2.2x the bfloat16 prefill per token on an
# AMX CPU (131 s for 15 trajectories scored twice, the float32 load included).
FLOAT32_FIT_COST = 2.2
# Decoding steps of one batch of evaluation answers (at most the token limit): the embedded expert's
# GSM8K answers averaged 306 tokens (results/embedded-gsm8k), and a batch lasts as long as its longest.
ANSWER_TOKENS = 400
# Starting Python and writing the report: each stage's time includes loading its models, and measuring the
# speeds (2-3 minutes with llama.cpp, which it loads twice: bare and with the LoRA) is timed where it happens.
FIXED_SECONDS = 30.0


@dataclass(frozen=True)
class Speeds:
    """Seconds per cached decoding step at the run's batch width, and per prefilled token."""

    torch_step: float  # expert, torch, batch width rows (sampling's unit, hf evaluation before training)
    torch_prefill_token: float  # expert, torch, one teacher-forced token
    adapter_step: float  # the same with a LoRA attached (hf evaluation after training)
    adapter_prefill_token: float  # the same with a LoRA attached (training's unit)
    eval_step: float  # the evaluation backend, batch width rows
    eval_adapter_step: float  # the evaluation backend with the adapter
    batch: int
    float32: bool = False  # the run computes in float32 (the adapter fit's dtype)

    def on_torch(self) -> Speeds:
        """The same machine evaluating on torch."""
        return replace(self, eval_step=self.torch_step, eval_adapter_step=self.adapter_step)

    def record(self) -> dict[str, Any]:
        return {name: round(value, 5) if isinstance(value, float) else value for name, value in asdict(self).items()}


def _seconds(work: Any) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


MEASURE_TOKENS = 32  # prompt tokens per row when measuring: enough context, few seconds of prefill


def measure_torch(model: Any, prompt: list[int], batch: int, steps: int = 3) -> tuple[float, float]:
    """(seconds per decoding step at ``batch`` rows, seconds per prefilled token) of a torch model,
    from a prefill of ``batch`` copies of ``prompt`` (its first MEASURE_TOKENS) after a warm-up one, and
    ``steps`` cached steps after one warm-up."""
    from transformers import DynamicCache

    from .decoding import cached_forward

    device = next(model.parameters()).device
    ids = torch.tensor([prompt[:MEASURE_TOKENS]] * batch, device=device)
    mask = torch.ones_like(ids)
    cached_forward(model, ids, mask, DynamicCache())  # warm-up: the first forward after loading is many times slower
    cache = DynamicCache()
    prefill = _seconds(lambda: cached_forward(model, ids, mask, cache))
    token = ids[:, -1:]

    def step() -> None:
        nonlocal mask
        mask = torch.nn.functional.pad(mask, (0, 1), value=1)
        cached_forward(model, token, mask, cache)

    step()
    return sum(_seconds(step) for _ in range(steps)) / steps, prefill / ids.numel()


def measure_llamacpp(gguf: Any, prompt: list[int], batch: int, vocab_size: int, steps: int = 4,
                     adapter: Any = None) -> float:
    """Seconds per llama.cpp decoding step at ``batch`` sequences: ``steps`` more tokens each, less
    the same prefill with one token each (``adapter``: a llama.cpp LoRA file applied)."""
    from .llamacpp import LlamaCppModel

    prompts = [prompt[:MEASURE_TOKENS]] * batch
    with LlamaCppModel(gguf, adapter=adapter) as model:
        def decode_seconds(tokens: int) -> float:
            return _seconds(lambda: list(model.decode(prompts, slots=batch, max_new_tokens=tokens, stop_ids=[],
                                                      vocab_size=vocab_size)))

        decode_seconds(1)  # warm-up
        return max(decode_seconds(1 + steps) - decode_seconds(1), 0.0) / steps


def measure_with_fresh_lora(model: Any, attach: Any, prompt: list[int], batch: int, *, gguf: Any = None,
                            vocab_size: int = 0) -> tuple[float, float, float | None]:
    """(:func:`measure_torch`'s two numbers, llama.cpp's seconds per step or None) with a fresh LoRA
    adapter (``attach(model)``: the model with one, as training makes it) applied as a trained one is:
    in torch, and, given the model's ``gguf``, converted to llama.cpp's format and applied there. The
    adapter is removed again and ``model`` left as it was."""
    params = list(model.parameters())
    trainable, training = [p.requires_grad for p in params], model.training
    adapted = attach(model).eval()
    try:
        step, prefill = measure_torch(adapted, prompt, batch)
        if gguf is None:
            return step, prefill, None
        from .gguf_export import adapter_gguf

        # Its B matrices are zero, but llama.cpp does the same work for them as for a trained adapter's.
        with tempfile.TemporaryDirectory() as folder:
            adapted.save_pretrained(folder)
            lora_file = adapter_gguf(folder, gguf, out=Path(folder) / "lora.gguf")
            return step, prefill, measure_llamacpp(gguf, prompt, batch, vocab_size, adapter=lora_file)
    finally:
        adapted.unload().train(training)
        for param, flag in zip(params, trainable):
            param.requires_grad_(flag)


def measure(model: Any, prompt: list[int], batch: int, *, attach_lora: Any = None, gguf: Any = None,
            vocab_size: int = 0) -> Speeds:
    """This machine's speeds at ``batch`` rows: the expert ``model`` on torch, bare and with a fresh LoRA
    (``attach_lora(model)``; None: full fine-tuning, no adapter), and on llama.cpp when evaluation runs
    there (``gguf``: the expert's file)."""
    torch_step, prefill = measure_torch(model, prompt, batch)
    adapter_step, adapter_prefill, cpp_adapter_step = (torch_step, prefill, None) if attach_lora is None else \
        measure_with_fresh_lora(model, attach_lora, prompt, batch, gguf=gguf, vocab_size=vocab_size)
    speeds = Speeds(torch_step, prefill, adapter_step, adapter_prefill, torch_step, adapter_step, batch,
                    float32=model.dtype == torch.float32)
    if gguf is None:
        return speeds
    cpp_step = measure_llamacpp(gguf, prompt, batch, vocab_size)
    return replace(speeds, eval_step=cpp_step, eval_adapter_step=cpp_step if cpp_adapter_step is None
                   else cpp_adapter_step)


@dataclass(frozen=True)
class Plan:
    budget_minutes: float
    scale: float
    questions: int
    max_steps: int
    eval_limit: int
    fit_trajectories: int
    seconds: dict[str, float]  # estimate per stage

    def record(self) -> dict[str, Any]:
        return {"budget_minutes": self.budget_minutes, "scale": round(self.scale, 3), "questions": self.questions,
                "max_steps": self.max_steps, "eval_limit": self.eval_limit, "fit_trajectories": self.fit_trajectories,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()}}

    def text(self) -> str:
        stages = ", ".join(f"{name.replace('_', ' ')} {seconds / 60:.1f}" for name, seconds in self.seconds.items())
        total = sum(self.seconds.values()) / 60
        return (f"plan for {self.budget_minutes:g} minutes: {self.questions} training questions, {self.max_steps} "
                f"optimizer steps, {self.eval_limit} evaluation questions per benchmark before and after; "
                f"estimated minutes: {stages} (total {total:.1f})")


def estimate(scale: float, speeds: Speeds, *, prompt_tokens: int, trajectory_tokens: int, answer_tokens: int,
             benchmarks: int, steps_per_update: int = 16) -> tuple[dict[str, int], dict[str, float]]:
    """The sizes at ``scale`` and the seconds each stage should take with them."""
    sizes = {name: max(1, round(unit * scale)) for name, unit in UNIT.items()}
    questions, steps, evals = sizes["questions"], sizes["max_steps"], sizes["eval_limit"]
    sequence = prompt_tokens + trajectory_tokens
    sample = -(-questions // min(speeds.batch, questions)) * trajectory_tokens * speeds.torch_step * SAMPLING_OVERHEAD
    train = steps * steps_per_update / KEPT_PER_FORWARD * sequence * speeds.adapter_prefill_token * TRAIN_PASSES
    fit_trajectories = min(40, questions)
    # Both groups together hold at most every trajectory; each is scored twice (without and with the adapter).
    scored = min(questions, 2 * fit_trajectories)
    fit = scored * 2 * sequence * speeds.torch_prefill_token * (1.0 if speeds.float32 else FLOAT32_FIT_COST)
    answers = benchmarks * evals
    batches = -(-answers // min(speeds.batch, answers))
    # Named as the run's stages (stages.json), in their order, so the report can set each beside its time.
    seconds = {"eval_before": batches * answer_tokens * speeds.eval_step, "sample": sample, "train": train,
               "adapter_fit": fit, "eval_after": batches * answer_tokens * speeds.eval_adapter_step,
               "fixed": FIXED_SECONDS}
    return {**sizes, "fit_trajectories": fit_trajectories}, seconds


def plan(budget_minutes: float, speeds: Speeds, *, measuring: float = 0.0, **shape: int) -> Plan:
    """The largest scale of the demonstration's proportions whose estimate fits what ``measuring``
    (the seconds measuring took) left of the budget (never below half of them: a machine too slow for
    that gets the smallest plan, with its estimate)."""
    budget = budget_minutes * 60 - measuring
    low, high = SMALLEST_SCALE, SMALLEST_SCALE
    while sum(estimate(high * 2, speeds, **shape)[1].values()) <= budget and high < 1024:
        high *= 2
    high *= 2
    for _ in range(30):  # bisection on the scale: the estimate grows with it
        middle = (low + high) / 2
        if sum(estimate(middle, speeds, **shape)[1].values()) <= budget:
            low = middle
        else:
            high = middle
    sizes, seconds = estimate(low, speeds, **shape)
    return Plan(budget_minutes, low, sizes["questions"], sizes["max_steps"], sizes["eval_limit"],
                sizes["fit_trajectories"], {"measuring": measuring, **seconds})
