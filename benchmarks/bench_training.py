"""Packed training vs the reference's one-example-per-kept-step scheme: wall time and forward tokens per epoch.

Both arms train the same model on the same kept steps with the same settings (16 kept steps per
optimizer step, 2 accumulation micro-batches, LoRA r=8 on q/v), one epoch each, in one process:

* packed    - one forward over prompt + trajectory trains all of a trajectory's kept steps;
* per-step  - every kept step is its own sequence (prompt + prefix), as the authors' trainer
              feeds them (but padded correctly).

Samples are synthetic with real shapes: GSM8K train questions with the chat prompt, trajectories
of ``--completion-tokens`` tokens taken from GSM8K solution text, and a fraction ``--kept`` of their
steps kept (11.5% is what the embedded pair gives at beta = 0.4) with 1-2 token soft labels.

    python benchmarks/bench_training.py --model tiny --questions 32
    python benchmarks/bench_training.py --model coder-1.5b --questions 4

``tiny`` is a random 4-layer, 256-wide Qwen2 with the real Qwen tokenizer and vocabulary (from
``--tokenizer``), so the output layer costs what it costs in the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

from lightreasoner import models
from lightreasoner.examples import REFERENCE_SYSTEM_PROMPT, PackedExample, SampleSet, one_hot_example
from lightreasoner.training import TrainConfig, train



def synthetic_samples(tokenizer, train_file: Path, questions: int, completion_tokens: int, kept: float,
                      seed: int) -> SampleSet:
    rng = random.Random(seed)
    records = [json.loads(line) for _, line in zip(range(questions + 8), train_file.open(encoding="utf-8"))]
    vocab = models.real_vocab_size(tokenizer)
    examples = []
    for index in range(questions):
        prompt = models.encode_prompt(tokenizer, models.chat_prompt(tokenizer, records[index]["question"],
                                                                    REFERENCE_SYSTEM_PROMPT))
        text = " ".join(r["answer"] for r in records[index:index + 8])
        completion = tokenizer(text, add_special_tokens=False)["input_ids"][:completion_tokens]
        steps = sorted(rng.sample(range(len(completion)), max(1, round(kept * len(completion)))))
        example = one_hot_example(prompt, completion, steps, source=f"synthetic:{index}")
        for ids, weights in zip(example.label_ids, example.label_weights):
            if rng.random() < 0.2:  # about a fifth of the plausible sets hold a second token
                ids.append((ids[0] + 1 + rng.randrange(vocab - 1)) % vocab)
                weights[:] = [0.7, 0.3]
        examples.append(example)
    return SampleSet(examples, vocab, "synthetic")


def per_step(data: SampleSet) -> SampleSet:
    """The reference scheme: one sequence per kept step, ending at its labelled position."""
    examples = [PackedExample(e.input_ids[:p + 1], [p], [ids], [w], e.source)
                for e in data.examples for p, ids, w in zip(e.positions, e.label_ids, e.label_weights)]
    return SampleSet(examples, data.vocab_size, "per-step")


def tiny_model(tokenizer_spec: str, root: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = models.load_tokenizer(tokenizer_spec)
    reference = Qwen2Config.from_pretrained(models.resolve_model_path(tokenizer_spec))
    config = Qwen2Config(vocab_size=reference.vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         eos_token_id=reference.eos_token_id, max_position_embeddings=4096)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    return root / "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or any model argument (short name, folder)")
    parser.add_argument("--tokenizer", default="coder-1.5b", help="tokenizer/vocabulary for --model tiny")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--kept", type=float, default=0.115, help="fraction of steps kept")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTREASONER_DATA_DIR"),
                        help="data folder holding gsm8k/train.jsonl (default: $LIGHTREASONER_DATA_DIR)")
    args = parser.parse_args()
    train_file = Path(args.data_dir or ".") / "gsm8k" / "train.jsonl"
    if not train_file.is_file():
        sys.exit(f"{train_file}: GSM8K train split not found (give --data-dir or set LIGHTREASONER_DATA_DIR)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(args.tokenizer, root) if args.model == "tiny" else args.model
        tokenizer = models.load_tokenizer(model)
        packed = synthetic_samples(tokenizer, train_file, args.questions, args.completion_tokens, args.kept, args.seed)
        config = TrainConfig(epochs=1.0, dtype=args.dtype, save_steps=0, seed=args.seed)
        results = {}
        for name, data in (("packed", packed), ("per-step", per_step(packed))):
            summary = train(model, data, config, root / name)
            results[name] = summary
            print(f"{name:9s} sequences {len(data.examples):5d}  kept steps {data.num_labels:5d}  optimizer steps "
                  f"{summary['optimizer_steps']:4d}  forward tokens {summary['forward_tokens']:8d}  "
                  f"seconds {summary['seconds']:8.1f}", flush=True)
    a, b = results["packed"], results["per-step"]
    print(f"model {args.model}, dtype {args.dtype}, {args.questions} trajectories x {args.completion_tokens} tokens, "
          f"{a['kept_steps']} kept steps, torch threads {torch.get_num_threads()}")
    print(f"per-step / packed: forward tokens {b['forward_tokens'] / a['forward_tokens']:.1f}x, "
          f"wall time {b['seconds'] / a['seconds']:.1f}x")


if __name__ == "__main__":
    main()
