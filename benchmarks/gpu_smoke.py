"""GPU smoke check: every GPU path once, on the paper's pair, in one command (about 15 minutes on one GPU).

    pip install -e ".[vllm]"
    python benchmarks/gpu_smoke.py --expert Qwen/Qwen2.5-Math-1.5B --amateur Qwen/Qwen2.5-0.5B \
        --data-dir DATA --out runs/gpu-smoke

Stages, each timed: LightReasoner sampling of 20 GSM8K training questions (hf, both models on the
GPU); 5 optimizer steps of training; rejection sampling of the same questions through vLLM (2
seeded samples each, the SFT baseline's path); 20 GSM8K test questions answered with the adapter,
first by the hf backend, then by vLLM. It asserts that the two backends' extracted answers agree on
at least 90% of the questions (in bf16 a few near-ties may go either way) and exits 1 otherwise.
vLLM uses the GPUs that CUDA_VISIBLE_DEVICES shows. Models are Hub ids or local folders; data come
from --data-dir (gsm8k/train.jsonl, gsm8k/test.jsonl) or the Hub. Use a fresh --out: every stage
resumes what a folder holds.

Unrun: this project has no GPU. tests/test_backends.py runs this script end to end on a CPU with
tiny random models and a stand-in vLLM, so its code is exercised; its timings and agreement on a
real GPU are unknown until someone runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lightreasoner.evaluation import EvalConfig, evaluate
from lightreasoner.sampling import SampleConfig, sample
from lightreasoner.sft import SFTConfig, sample_solutions, sft_train_config
from lightreasoner.training import TrainConfig, train_from_file


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert", required=True, help="expert: Hub id or local folder")
    parser.add_argument("--amateur", required=True, help="amateur: Hub id or local folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for every stage's files")
    parser.add_argument("--data-dir", default=None, help="folder with gsm8k/train.jsonl and gsm8k/test.jsonl")
    parser.add_argument("--questions", type=int, default=20, help="training questions sampled")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps")
    parser.add_argument("--eval-questions", type=int, default=20, help="test questions per backend")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="evaluation and SFT sampling token limit")
    parser.add_argument("--beta", type=float, default=0.4, help="KL threshold of LightReasoner sampling")
    parser.add_argument("--device", default="cuda", help="device of the hf stages")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--min-agreement", type=float, default=0.9, help="share of equal hf/vLLM answers required")
    return parser.parse_args(argv)


def agreement(hf_dir: Path, vllm_dir: Path) -> tuple[float, list[str]]:
    """Share of questions whose extracted answers (``pred``) are equal, and the ids that differ."""
    def preds(folder: Path) -> dict[str, str]:
        lines = (folder / "gsm8k.jsonl").read_text().splitlines()
        return {r["id"]: r["pred"] for r in map(json.loads, lines)}

    hf, vllm = preds(hf_dir), preds(vllm_dir)
    if hf.keys() != vllm.keys() or not hf:
        raise SystemExit(f"the backends answered different questions: {sorted(hf)} against {sorted(vllm)}")
    differ = sorted(qid for qid in hf if hf[qid] != vllm[qid])
    return 1 - len(differ) / len(hf), differ


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def stage(name: str, work: Callable[[], Any]) -> None:
        print(f"[{name}] ...", flush=True)
        began = time.perf_counter()
        work()
        seconds[name] = time.perf_counter() - began
        print(f"[{name}] {seconds[name]:.1f} s", flush=True)

    data = dict(data="gsm8k", split="train", data_dir=args.data_dir, limit=args.questions)
    stage("sample (hf)", lambda: sample(SampleConfig(expert=args.expert, amateur=args.amateur, max_new_tokens=128,
                                                     beta=args.beta, batch_size=args.questions, dtype=args.dtype,
                                                     device=args.device, **data),
                                        out / "samples.jsonl", progress=False))
    train = TrainConfig(max_steps=args.steps, dtype=args.dtype, save_steps=0, resume=True)
    stage("train", lambda: train_from_file(args.expert, out / "samples.jsonl", train, out / "adapter"))
    sft = SFTConfig(model=args.expert, samples_per_question=2, max_new_tokens=args.max_new_tokens,
                    batch_size=2 * args.questions, backend="vllm", device="auto",
                    train=sft_train_config({"dtype": args.dtype}), **data)
    stage("sft sampling (vllm)", lambda: sample_solutions(sft, out / "sft_samples.jsonl", progress=False))
    for backend in ("hf", "vllm"):
        config = EvalConfig(model=args.expert, adapter=str(out / "adapter"), benchmarks=["gsm8k"],
                            data_dir=args.data_dir, limit=args.eval_questions, max_new_tokens=args.max_new_tokens,
                            batch_size=args.eval_questions, backend=backend, dtype=args.dtype,
                            device=args.device if backend == "hf" else "auto")
        stage(f"eval ({backend})", lambda: evaluate(config, out / f"eval_{backend}", progress=False))

    share, differ = agreement(out / "eval_hf", out / "eval_vllm")
    print()
    for name, value in seconds.items():
        print(f"{name:<22} {value:8.1f} s")
    print(f"{'total':<22} {sum(seconds.values()):8.1f} s")
    print(f"hf and vLLM answers agree on {share:.0%} of {args.eval_questions} questions"
          + (f" (differ: {', '.join(differ)})" if differ else ""))
    if share < args.min_agreement:
        print(f"FAILED: below {args.min_agreement:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
