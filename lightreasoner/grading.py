"""Grade completions against gold answers, like the Qwen2.5-Math evaluation toolkit, with a strict
verdict beside the toolkit's.

Two steps, both usable on their own:

* :func:`locate_answer` pulls the final answer out of a completion, in the toolkit's order, and
  says where it found it (:data:`SOURCES`): the last ``\\boxed{...}`` (nested braces matched), else
  the text after "the answer is" / "final answer is", else the last number. Multiple-choice
  benchmarks (``mmlu_stem``) get a letter A-D instead (:func:`locate_choice`).
* :func:`is_equivalent` decides whether an extracted answer equals the gold answer: equal
  strings after normalisation, else equal numbers (percent forms accepted; an integer gold answer
  exactly, any other within a relative 1e-4), else symbolic equality by ``math-verify``
  (fractions, radicals, intervals, tuples, sets, degrees, ``\\text{}`` units), all under one
  per-answer time limit.

:func:`grade` does both and gives two verdicts: ``correct``, the toolkit's, and ``correct_strict``,
which also asks that the answer was stated (boxed or after "the answer is", not the last number of
the text) and that the completion finished rather than hit the token limit. The toolkit's
last-number fallback credits a cut-off answer whenever the last number it happened to write equals
the gold answer; the strict verdict does not. Other stages call :func:`grade` and
:func:`is_correct` (SFT rejection sampling grades thousands of completions with them). Model
output is only ever parsed, never evaluated as Python: the worst a pathological answer can do is
hit the time limit and count wrong.

Time limits: math-verify's own timeouts use ``signal.alarm``, which works only in the main
thread. We switch them off and set one ``SIGALRM`` timer of our own around the whole comparison
instead (sub-second, and it covers parsing and comparing together). Off the main thread, where
no signal can be used, the comparison runs in a helper process that is killed and restarted
when it overruns. See docs/EVALUATION.md.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

DEFAULT_TIMEOUT = 5.0  # seconds per answer (math-verify's default per operation)
REL_TOL = 1e-4  # the toolkit's numeric_equal
MULTIPLE_CHOICE = frozenset({"mmlu_stem"})


# Where an answer was found: stated as the final answer ("boxed", "answer-is": a box, or the text
# after "the answer is"), or guessed ("last-number" of the text, "last-letter" standing alone for a
# multiple-choice question); "none" when there is no answer at all.
SOURCES = ("boxed", "answer-is", "last-number", "last-letter", "none")
STATED_SOURCES = frozenset({"boxed", "answer-is"})


@dataclass(frozen=True)
class Grade:
    pred: str  # the extracted answer
    correct: bool  # the toolkit's verdict
    source: str  # where ``pred`` was found, one of SOURCES
    correct_strict: bool  # correct, stated as the final answer, in a completion that was not cut off


def is_strict(correct: bool, source: str, finish: str | None) -> bool:
    """The strict verdict: ``correct`` by the toolkit, an answer stated as final (boxed or after "the
    answer is"), and a completion that ended on its own (``finish`` not ``"length"``; None: unknown,
    taken as ended)."""
    return correct and source in STATED_SOURCES and finish != "length"


# --------------------------------------------------------------------------- extraction


def find_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` with nested braces matched.

    ``\\boxed 5`` (no braces) gives the text up to the next ``$``. An unclosed last box gives
    everything after its brace (a completion cut off by the token limit), like the toolkit.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].split("box", 1)[1]
    rest = rest[2:] if rest.startswith("ed") else rest
    if not rest.lstrip().startswith("{"):
        return rest.split("$")[0].strip() or None
    rest = rest.lstrip()
    depth = 0
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:index]
    return rest[1:]


_NUMBER = re.compile(r"-?\d*\.?\d+")


def locate_answer(completion: str, benchmark: str | None = None) -> tuple[str, str]:
    """The final answer of ``completion`` ("" when there is none) and where it was found (:data:`SOURCES`)."""
    if benchmark in MULTIPLE_CHOICE:
        return locate_choice(completion)
    text = completion.replace("\u043a\u0438", "")  # stray token some Qwen models emit; the toolkit drops it
    if "final answer is $" in text and "$. I hope" in text:  # Minerva's few-shot answer sentence
        answer, source = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0], "answer-is"
    elif "boxed" in text or "\\fbox" in text:
        answer, source = find_last_boxed(text) or "", "boxed"
    elif "he answer is" in text:
        answer, source = text.split("he answer is")[-1], "answer-is"
    elif "final answer is" in text:
        answer, source = text.split("final answer is")[-1], "answer-is"
    else:
        numbers = _NUMBER.findall(text.replace(",", ""))
        answer, source = (numbers[-1] if numbers else ""), "last-number"
    answer = re.sub(r"\n\s*", "", answer).strip()
    answer = answer[1:] if answer.startswith(":") else answer
    answer = answer.rstrip(".").rstrip("/").strip()
    return answer, source if answer else "none"


def locate_choice(completion: str) -> tuple[str, str]:
    """A multiple-choice letter A-D ("" if none) and where it was found: the letter in the last box,
    else the first one after the last "answer is", else the last one standing alone.

    Unlike the toolkit we do not upper-case the completion before searching, which reads the
    article "a" as choice A; a letter must be a capital with no letter or backslash beside it.
    """
    boxed = find_last_boxed(completion)
    if boxed and _CHOICE.findall(boxed):
        return _CHOICE.findall(boxed)[0], "boxed"
    if "answer is" in completion:
        letters = _CHOICE.findall(completion.split("answer is")[-1])
        if letters:
            return letters[0], "answer-is"
    letters = _CHOICE.findall(completion)
    return (letters[-1], "last-letter") if letters else ("", "none")


_CHOICE = re.compile(r"(?<![A-Za-z\\])([A-D])(?![A-Za-z])")


# --------------------------------------------------------------------------- normalisation

_TRAILING_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_SHORT_LHS = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!=)")


def normalize(answer: str) -> str:
    """Canonical string form for the exact-match step (close to the toolkit's ``strip_string``)."""
    text = str(answer).strip().replace("\n", "").rstrip(".")
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""), ("\\left", ""),
                     ("\\right", ""), ("tfrac", "frac"), ("dfrac", "frac"), ("\\neq", "\\ne"), ("\\leq", "\\le"),
                     ("\\geq", "\\ge"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("\\$", ""), ("$", ""),
                     ("\\%", ""), ("%", ""), ("\\{", "{"), ("\\}", "}")):
        text = text.replace(old, new)
    stripped = _TRAILING_UNIT.sub("", text).strip()
    if stripped:  # "10\text{ cm}" -> "10", but "\text{Evelyn}" stays
        text = stripped
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", text)
    without_lhs = _SHORT_LHS.sub("", text)
    if without_lhs.strip():  # "x = 5" -> "5", but "h =" alone stays
        text = without_lhs
    text = text.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    text = re.sub(r"(\d)\.0+(?!\d)", r"\1", text)  # 18.00 -> 18
    text = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", text)  # .5 -> 0.5
    return text


_SCI = re.compile(r"(-?\d*\.?\d+)\s*(?:\\times|\\cdot|\*|x)\s*10\^\{?(-?\d+)\}?")


def to_number(answer: str) -> float | None:
    """A plain number (``1,234``, ``4.5e33``, ``3.2\\times 10^{5}``, ``25\\%``) as a float, else None.

    Percentages are returned as written (25 for ``25%``): the equality check accepts x, x/100
    and x*100 like the toolkit.
    """
    text = normalize(answer)
    match = _SCI.fullmatch(text)
    if match:
        return float(match.group(1)) * 10.0 ** int(match.group(2))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def numbers_equal(pred: float, gold: float, *, exact: bool = False) -> bool:
    """Equal, also when ``pred`` is ``gold`` as a percentage or the reverse (gold/100, gold*100: the
    toolkit's percentage rule); exactly when ``exact`` (an integer gold answer), else within a
    relative 1e-4. The toolkit uses the tolerance for integers too, and so takes 9,999 for 10,000."""
    targets = (gold, gold / 100, gold * 100)
    if exact:
        return pred in targets
    return any(math.isclose(pred, target, rel_tol=REL_TOL) for target in targets)


def is_integer_answer(answer: str) -> bool:
    """Whether an answer is written as a whole number (``10,000``, ``-3``, ``18.00``, ``\\$5``, ``25\\%``)."""
    return re.fullmatch(r"-?\d+", normalize(answer)) is not None


def _is_words(text: str) -> bool:
    """Plain words such as ``Evelyn`` or ``yes``: compared as text, never as a product of symbols."""
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z' ]*[A-Za-z]", text)) and "\\" not in text


# --------------------------------------------------------------------------- time limits


class _Overrun(BaseException):
    """Raised by our SIGALRM handler; BaseException so that library ``except Exception`` can't swallow it."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Overrun

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _signals_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _math_verify_equal(pred: str, gold: str) -> bool:
    """Symbolic comparison by math-verify, its own (signal-based) timeouts switched off."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # We enforce the time limit ourselves; silence the library's one-time warning about that.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    targets = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
    gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}", targets, parsing_timeout=None)
    pred_parsed = math_verify.parse(f"\\boxed{{{pred}}}", targets, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    gold_value, pred_value = _sympy_float(gold_parsed[0]), _sympy_float(pred_parsed[0])
    if gold_value is not None and pred_value is not None:
        return numbers_equal(pred_value, gold_value, exact=getattr(gold_parsed[0], "is_integer", None) is True)
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _sympy_float(expr: Any) -> float | None:
    """A real number's float value (e.g. ``\\frac{\\sqrt2}{2}``), else None."""
    try:
        if getattr(expr, "is_number", False) and expr.is_real:
            value = float(expr.evalf())
            return value if math.isfinite(value) else None
    except (TypeError, ValueError, AttributeError):
        pass
    return None


def _equivalent_now(pred: str, gold: str) -> bool:
    """All comparison steps, without a time limit (the caller sets one)."""
    if pred.strip() == gold.strip():
        return True
    norm_pred, norm_gold = normalize(pred), normalize(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred.lower() == norm_gold.lower():
        return True
    pred_number, gold_number = to_number(pred), to_number(gold)
    if pred_number is not None and gold_number is not None:
        return numbers_equal(pred_number, gold_number, exact=is_integer_answer(gold))
    if _is_words(norm_pred) or _is_words(norm_gold):
        return False
    try:
        return _math_verify_equal(pred, gold)
    except Exception:  # a parser failure on odd LaTeX counts as "not equal", never as a crash
        return False


def is_equivalent(pred: str, gold: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """Whether the extracted answer ``pred`` equals ``gold``; False on overrunning ``timeout`` seconds."""
    if not str(pred).strip() or not str(gold).strip():
        return False
    if not timeout or timeout <= 0:
        return _equivalent_now(pred, gold)
    if not _signals_usable():
        return _worker().compare(pred, gold, timeout)
    try:
        with _time_limit(timeout):
            return _equivalent_now(pred, gold)
    except _Overrun:
        return False


def grade(completion: str, gold: str, benchmark: str | None = None, *, finish: str | None = None,
          timeout: float | None = DEFAULT_TIMEOUT) -> Grade:
    """Extract the answer from ``completion`` and compare it with ``gold`` (an extracted final answer).
    ``finish`` is how the completion ended ("eos", "stop", or "length" when cut off by the token limit;
    None when unknown), which only the strict verdict reads."""
    pred, source = locate_answer(completion or "", benchmark)
    if benchmark in MULTIPLE_CHOICE:
        correct = bool(pred) and pred == str(gold).strip().upper()
    else:
        correct = is_equivalent(pred, gold, timeout=timeout)
    return Grade(pred, correct, source, is_strict(correct, source, finish))


def is_correct(completion: str, gold: str, benchmark: str | None = None, *,
               timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """``grade(...).correct``: the one-call check for rejection sampling and friends."""
    return grade(completion, gold, benchmark, timeout=timeout).correct


# --------------------------------------------------------------------------- off-main-thread worker


def _serve() -> None:
    """Helper-process main loop: one JSON ``[pred, gold, timeout]`` per stdin line -> one JSON bool.

    It runs in the helper's main thread, so the signal-based limit works here too.
    """
    replies = sys.stdout
    sys.stdout = sys.stderr  # a library print must not corrupt the reply stream
    for line in sys.stdin:
        pred, gold, timeout = json.loads(line)
        replies.write(json.dumps(is_equivalent(pred, gold, timeout=timeout)) + "\n")
        replies.flush()


class _WorkerProcess:
    """One helper process for comparisons requested off the main thread; killed if it overruns.

    A plain subprocess rather than multiprocessing: "spawn" would re-import the caller's
    ``__main__`` and "fork" is unsafe in a threaded process.
    """

    GRACE = 2.0  # seconds on top of the limit for process overhead before we kill it
    STARTUP = 60.0  # extra seconds for a fresh process to import sympy and math-verify

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._started = False  # the first answer also waits for the process start and its imports

    def _start(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent,
                                                                           os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from lightreasoner.grading import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env)
        self._replies = queue.Queue()
        threading.Thread(target=self._read, args=(self._process.stdout, self._replies), daemon=True).start()
        self._started = False

    @staticmethod
    def _read(stream: Any, replies: queue.Queue) -> None:
        for line in stream:
            replies.put(line)
        replies.put(None)  # the process ended

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def compare(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps([pred, gold, timeout]) + "\n")
                self._process.stdin.flush()
                reply = self._replies.get(timeout=timeout + self.GRACE + (0.0 if self._started else self.STARTUP))
            except (OSError, queue.Empty):  # died, or overran even the signal limit: kill, count wrong
                reply = None
            if reply is None:
                self._stop()
                return False
            self._started = True
            return bool(json.loads(reply))


_WORKER: _WorkerProcess | None = None


def _worker() -> _WorkerProcess:
    global _WORKER
    if _WORKER is None:
        _WORKER = _WorkerProcess()
    return _WORKER
