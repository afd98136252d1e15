"""Record what the commands write on the tiny pair, one SHA-256 per file, for a refactor's before/after check.

A change meant to move code without changing behaviour should leave every output file identical.
Record into the same folder both times (paths are part of what the commands write):

    python tests/record_outputs.py /tmp/lr-record > before.sha256 && rm -r /tmp/lr-record   # old code
    python tests/record_outputs.py /tmp/lr-record > after.sha256                           # new code
    diff before.sha256 after.sha256                                                        # silent: same

It builds the tiny pair (tests/tiny.py), then runs through the command line, each command in its own
process as a user would: `sample`, `train` (with checkpoints), `eval` of the adapter, `run` with the
arms of ARMS, `report` (redrawn over the run's own) and `publish`. The folder must not exist.

Commands run with PYTHONHASHSEED=0 (see ENVIRONMENT). Then wall-clock times are the one thing two
runs of the same code write differently: the values of the
keys in TIME_KEYS (seconds per stage, answer, optimizer step, evaluation; an arm's total). They are
read as 0 when hashing (the rest of the file byte for byte), and set to 0 in the run folder before
`report` redraws it, so the report's time columns are compared too, as zeros. Every other file,
weights, optimizer and RNG state, figures and tokenizer files included, is hashed as its bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

# Every arm but sft: its rejection sampling keeps only solutions graded correct, which a tiny random model
# never writes (tests/test_sft.py scripts them instead).
ARMS = ("baseline,lightreasoner,format-only,random-positions,kept-expert,random-contrast,random-expert,"
        "entropy-one-hot,entropy-contrast,entropy-expert")
TIME_KEYS = ("seconds", "total_seconds")
NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# A time key's value: a number, or an object of numbers (an arm's seconds per stage).
TIME_VALUE = re.compile(rf'("(?:{"|".join(TIME_KEYS)})":\s*)({NUMBER}|\{{[^{{}}]*\}})')
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".html")
# peft writes an adapter's target_modules from a set, in an order that follows Python's string hashing,
# which differs between processes unless fixed (and so does the adapter fingerprint evaluations record).
ENVIRONMENT = {**os.environ, "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}


def lightreasoner(*args: str | Path) -> None:
    """One command in its own process, failing loudly: a recording of a failed run means nothing."""
    code = "import sys; from lightreasoner.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, stdout=sys.stderr, env=ENVIRONMENT)


def run_commands(out: Path, arms: str) -> None:
    expert, amateur = tiny.save_pair(out / "pair")
    common = ["--dtype", "float32", "--device", "cpu", "--quiet"]
    lightreasoner("sample", "--expert", expert, "--amateur", amateur, "--data", "arith", "--limit", 6,
                  "--max-new-tokens", 12, "--batch-size", 4, "--out", out / "samples.jsonl", *common)
    lightreasoner("train", "--model", expert, "--samples", out / "samples.jsonl", "--out", out / "adapter",
                  "--max-steps", 7, "--save-steps", 3, "--steps-per-update", 8, "--learning-rate", "1e-2",
                  "--dtype", "float32")
    lightreasoner("eval", "--model", expert, "--adapter", out / "adapter", "--benchmarks", "arith", "--limit", 5,
                  "--max-new-tokens", 8, "--batch-size", 4, "--out", out / "eval", *common)
    lightreasoner("run", "--expert", expert, "--amateur", amateur, "--questions", 6, "--max-new-tokens", 10,
                  "--max-steps", 3, "--eval-limit", 5, "--eval-max-new-tokens", 8, "--batch-size", 4,
                  "--arms", arms, "--out", out / "run", *common)
    for path in (out / "run").rglob("*.json*"):
        path.write_text(zero_times(path.read_text(encoding="utf-8")), encoding="utf-8")
    lightreasoner("report", out / "run")
    lightreasoner("publish", out / "run", out / "published")


def zero_times(text: str) -> str:
    return TIME_VALUE.sub(lambda m: m.group(1) + re.sub(NUMBER, "0", m.group(2)), text)


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in TEXT_SUFFIXES:
        data = zero_times(data.decode("utf-8")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (must not exist)")
    parser.add_argument("--arms", default=ARMS, help=f"arms of the run (default: {ARMS})")
    parser.add_argument("--hash-only", action="store_true", help="hash an existing folder without running")
    args = parser.parse_args()
    out = args.out.resolve()
    if not args.hash_only:
        out.mkdir(parents=True)
        run_commands(out, args.arms)
    print(f"# {out}, arms {args.arms}; read as 0 in {', '.join(TEXT_SUFFIXES)} files: {', '.join(TIME_KEYS)}")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"{digest(path)}  {path.relative_to(out).as_posix()}")


if __name__ == "__main__":
    main()
