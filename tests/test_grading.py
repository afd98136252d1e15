"""Answer extraction and equivalence: hand-written cases per benchmark, time limits, gold self-check."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import pytest

from lightreasoner import grading
from lightreasoner.data import BENCHMARKS

DATA = Path(__file__).parents[2] / "shared" / "data"

# (bench, completion, gold, expected pred, expected correct)
CASES = [
    # gsm8k: boxed, "the answer is", last number, thousands separators, dollars, wrong answers
    ("gsm8k", "48/2 = 24 clips in May, so 48+24 = \\boxed{72}.", "72", "72", True),
    ("gsm8k", "So she sold 72 clips. The answer is 72.", "72", "72", True),
    ("gsm8k", "April 48, May 24, total 72", "72", "72", True),
    ("gsm8k", "The total is 2,125 dollars", "2125", "2125", True),
    ("gsm8k", "\\boxed{\\$18.00}", "18", "\\$18.00", True),
    ("gsm8k", "\\boxed{71}", "72", "71", False),
    ("gsm8k", "I do not know.", "72", "", False),
    ("gsm8k", "", "72", "", False),
    ("gsm8k", "\\boxed{-3}", "-3", "-3", True),
    # math / math500: LaTeX variants, nested braces, intervals, tuples, text answers, units, degrees
    ("math", "Thus $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}", "\\frac{14}{3}", True),
    ("math", "\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", "\\dfrac{14}{3}", True),
    ("math", "\\boxed{14/3}", "\\frac{14}{3}", "14/3", True),
    ("math", "\\boxed{4.6667}", "\\frac{14}{3}", "4.6667", True),
    ("math", "\\boxed{4.67}", "\\frac{14}{3}", "4.67", False),
    ("math", "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("math", "\\boxed{\\sqrt{3}}", "\\frac{1}{\\sqrt{2}}", "\\sqrt{3}", False),
    ("math", "\\boxed{\\frac{a^{2}}{b_{1}}}", "\\frac{a^2}{b_1}", "\\frac{a^{2}}{b_{1}}", True),
    ("math", "first \\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})",
     "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("math", "\\boxed{(3, \\pi)}", "(3,\\frac{\\pi}{2})", "(3, \\pi)", False),
    ("math", "\\boxed{[2,5)}", "[2, 5)", "[2,5)", True),
    ("math", "\\boxed{(2,5)}", "[2, 5)", "(2,5)", False),
    ("math", "\\boxed{x=5}", "5", "x=5", True),
    ("math", "\\boxed{90^\\circ}", "90", "90^\\circ", True),
    ("math500", "\\boxed{Evelyn}", "\\text{Evelyn}", "Evelyn", True),
    ("math500", "\\boxed{Nevely}", "\\text{Evelyn}", "Nevely", False),  # not a product of symbols
    ("math500", "\\boxed{864 \\text{ square inches}}", "864 \\mbox{ inches}^2", "864 \\text{ square inches}", True),
    ("math500", "\\boxed{\\frac{270}{7}}", "\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("math500", "\\boxed{\\text{(C)}}", "\\text{(C)}", "\\text{(C)}", True),
    # percentages
    ("math", "\\boxed{10\\%}", "0.1", "10\\%", True),
    ("math", "\\boxed{25\\%}", "25", "25\\%", True),
    ("math", "\\boxed{26\\%}", "25", "26\\%", False),
    # minerva: scientific notation, units kept in the prediction
    ("minerva_math", "\\boxed{4.5 \\times 10^{33}}", "4.5e33", "4.5 \\times 10^{33}", True),
    ("minerva_math", "\\boxed{4.2 \\times 10^{33}}", "4.5e33", "4.2 \\times 10^{33}", False),
    ("minerva_math", "\\boxed{1.6} \\mathrm{~cm}", "1.6", "1.6", True),
    ("minerva_math", "The final answer is $7.1$. I hope it is correct.", "7.1", "7.1", True),
    # svamp / asdiv / mawps
    ("svamp", "\\boxed{145}", "145", "145", True),
    ("svamp", "\\boxed{145.0}", "145", "145.0", True),
    ("asdiv", "\\boxed{yes}", "Yes", "yes", True),
    ("asdiv", "\\boxed{No}", "Yes", "No", False),
    ("mawps", "\\boxed{1.84}", "1.84", "1.84", True),
    ("mawps", "\\boxed{1.85}", "1.84", "1.85", False),
    # olympiadbench: expressions, several answers in one string
    ("olympiadbench", "\\boxed{\\frac{1}{2n+2}}", "\\frac{1}{2 n+2}", "\\frac{1}{2n+2}", True),
    ("olympiadbench", "\\boxed{\\frac{1}{2n+1}}", "\\frac{1}{2 n+2}", "\\frac{1}{2n+1}", False),
    ("olympiadbench", "\\boxed{69, 84}", "69$,$84", "69, 84", True),
    ("olympiadbench", "\\boxed{84, 69}", "69$,$84", "84, 69", True),
    ("olympiadbench", "\\boxed{69, 85}", "69$,$84", "69, 85", False),
    ("college_math", "\\boxed{10-4n}", "10-4 n", "10-4n", True),
    ("college_math", "\\boxed{4n-10}", "10-4 n", "4n-10", False),
    # mmlu_stem: letters from the box, after "answer is", or standing alone; never the article "a"
    ("mmlu_stem", "The answer is \\boxed{C}.", "C", "C", True),
    ("mmlu_stem", "\\boxed{\\text{(B)}}", "B", "B", True),
    ("mmlu_stem", "It is a prime, so the answer is (D).", "D", "D", True),
    ("mmlu_stem", "Option A is wrong; B is right", "B", "B", True),
    ("mmlu_stem", "It is a prime.", "A", "", False),
    ("mmlu_stem", "The answer is \\boxed{A}", "C", "A", False),
    ("mmlu_stem", "", "A", "", False),
]


@pytest.mark.parametrize("bench, completion, gold, pred, correct", CASES)
def test_grade_cases(bench, completion, gold, pred, correct):
    result = grading.grade(completion, gold, bench)
    assert result.pred == pred
    assert result.correct is correct


def test_find_last_boxed_nested_and_unclosed():
    assert grading.find_last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{\\sqrt{b}}} c") == "\\frac{a}{\\sqrt{b}}"
    assert grading.find_last_boxed("\\fbox{7}") == "7"
    assert grading.find_last_boxed("$\\boxed 5$ apples") == "5"
    assert grading.find_last_boxed("cut off \\boxed{\\frac{1}{2") == "\\frac{1}{2"  # like the toolkit
    assert grading.find_last_boxed("no box") is None


def test_numbers_equal_matches_definition():
    """Against gold, gold/100 or gold*100: within a relative 1e-4, or exactly for an integer gold
    answer, checked by a plain loop."""
    def slow(pred, gold, exact):
        for target in (gold, gold / 100, gold * 100):
            if pred == target if exact else abs(pred - target) <= 1e-4 * max(abs(pred), abs(target)):
                return True
        return False

    values = [0.0, 1.0, 1.00005, 1.0002, 0.01, 100.0, 99.995, -3.0, 3.0, 1e33, 1.00009e33, 12.5, 0.125, 9999.0,
              10000.0, 1e6]
    for pred in values:
        for gold in values:
            for exact in (False, True):
                assert grading.numbers_equal(pred, gold, exact=exact) == slow(pred, gold, exact), (pred, gold, exact)
    assert grading.numbers_equal(9999.0, 10000.0) and not grading.numbers_equal(9999.0, 10000.0, exact=True)


# (benchmark, completion, finish, gold) -> (pred, source, correct, correct_strict): each branch of
# the two verdicts. The toolkit's verdict reads the last number of any text; the strict one only a
# stated answer (boxed, or after "the answer is") in a completion that ended on its own.
VERDICT_CASES = [
    ("gsm8k", "48 + 24 = 72, so she sold \\boxed{72} clips.", "eos", "72", ("72", "boxed", True, True)),
    ("gsm8k", "48 + 24 = 72, so she sold \\boxed{72} clips. Let me also check", "length", "72",
     ("72", "boxed", True, False)),  # boxed, then cut off while going on
    ("math500", "so the sum is $\\boxed{\\frac{33}{", "length", "\\frac{33}{100}",
     ("\\frac{33}{", "boxed", False, False)),  # cut off inside the box
    ("gsm8k", "She sold 72 clips. The answer is 72.", "eos", "72", ("72", "answer-is", True, True)),
    ("gsm8k", "She sold 72 clips. The answer is 72.", "stop", "72", ("72", "answer-is", True, True)),
    ("minerva_math", "The final answer is $7.1$. I hope it is correct.", "eos", "7.1",
     ("7.1", "answer-is", True, True)),
    ("gsm8k", "April 48, May 24, together 72", "eos", "72", ("72", "last-number", True, False)),
    ("math500", "Since p <= x <= 15, we consider the cases x = p and", "length", "15",
     ("15", "last-number", True, False)),  # cut off; "15" is a bound of an inequality, not an answer
    ("gsm8k", "We first compute 15a +", "length", "72", ("15", "last-number", False, False)),
    ("gsm8k", "I do not know.", "eos", "72", ("", "none", False, False)),
    ("gsm8k", "\\boxed{71}", "eos", "72", ("71", "boxed", False, False)),
    ("gsm8k", "So she sold \\boxed{72}.", None, "72", ("72", "boxed", True, True)),  # finish unknown: as ended
    # integers compare exactly in both verdicts; other numbers keep the relative 1e-4
    ("math500", "\\boxed{9999}", "eos", "10000", ("9999", "boxed", False, False)),
    ("math500", "\\boxed{9,999}", "eos", "10,000", ("9,999", "boxed", False, False)),
    ("math500", "\\boxed{10000.0}", "eos", "10000", ("10000.0", "boxed", True, True)),
    ("math500", "\\boxed{\\frac{19998}{2}}", "eos", "10000", ("\\frac{19998}{2}", "boxed", False, False)),
    ("math500", "\\boxed{\\frac{20000}{2}}", "eos", "10000", ("\\frac{20000}{2}", "boxed", True, True)),
    ("math500", "\\boxed{9999}", "eos", "10^{4}", ("9999", "boxed", False, False)),
    ("math500", "\\boxed{9999.5}", "eos", "10000", ("9999.5", "boxed", False, False)),
    ("math", "\\boxed{0.33333}", "eos", "\\frac{1}{3}", ("0.33333", "boxed", True, True)),
    ("math", "\\boxed{0.3333}", "eos", "0.33333", ("0.3333", "boxed", True, True)),
    ("math", "\\boxed{0.333}", "eos", "\\frac{1}{3}", ("0.333", "boxed", False, False)),
    ("minerva_math", "\\boxed{320012}", "eos", "3.2 \\times 10^{5}", ("320012", "boxed", True, True)),
    # the toolkit's percentage rule stays in both verdicts: x, x/100 and x*100 of the gold answer
    ("math500", "\\boxed{33}", "eos", "\\frac{33}{100}", ("33", "boxed", True, True)),
    ("gsm8k", "\\boxed{24500}", "eos", "245", ("24500", "boxed", True, True)),
    ("math", "\\boxed{0.25}", "eos", "25\\%", ("0.25", "boxed", True, True)),
    # multiple choice: a boxed letter or one after "answer is" is stated; a letter standing alone is not
    ("mmlu_stem", "The answer is \\boxed{C}.", "eos", "C", ("C", "boxed", True, True)),
    ("mmlu_stem", "It is a prime, so the answer is (D).", "eos", "D", ("D", "answer-is", True, True)),
    ("mmlu_stem", "Option A is wrong; B is right", "eos", "B", ("B", "last-letter", True, False)),
    ("mmlu_stem", "Option A is wrong; B is right", "length", "B", ("B", "last-letter", True, False)),
    ("mmlu_stem", "The answer is \\boxed{C}.", "length", "C", ("C", "boxed", True, False)),
]


@pytest.mark.parametrize("bench, completion, finish, gold, expected", VERDICT_CASES)
def test_both_verdicts(bench, completion, finish, gold, expected):
    result = grading.grade(completion, gold, bench, finish=finish)
    assert (result.pred, result.source, result.correct, result.correct_strict) == expected
    assert result.source in grading.SOURCES
    assert result.correct_strict == grading.is_strict(result.correct, result.source, finish)


def test_to_number_forms():
    assert grading.to_number("1,234") == 1234
    assert grading.to_number("4.5e33") == 4.5e33
    assert math.isclose(grading.to_number("3.2\\times 10^{5}"), 3.2e5)
    assert grading.to_number("25\\%") == 25
    assert grading.to_number("\\frac{1}{2}") is None
    assert grading.to_number("1,3,5") is None


def test_model_output_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    completion = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    assert grading.is_correct(completion, "0", "math") is False
    assert not marker.exists()


def test_time_limit_on_main_thread(monkeypatch):
    previous = signal.getsignal(signal.SIGALRM)

    def forever(pred, gold):
        while True:
            pass

    monkeypatch.setattr(grading, "_equivalent_now", forever)
    began = time.perf_counter()
    assert grading.is_equivalent("1", "2", timeout=0.3) is False
    assert time.perf_counter() - began < 2
    assert signal.getsignal(signal.SIGALRM) is previous  # the caller's handler is back


def test_pathological_answer_times_out():
    began = time.perf_counter()
    assert grading.is_equivalent("9^{9^{9}}", "\\frac{1}{3}", timeout=0.5) is False
    assert time.perf_counter() - began < 3


def test_off_main_thread_uses_helper_process():
    """math-verify's signals fail off the main thread; our helper process grades the same."""
    pairs = [("\\frac{1}{2}", "\\dfrac{2}{4}"), ("\\sqrt{4}", "2"), ("\\sqrt{5}", "2"), ("(1,2)", "(1, 2)")]
    expected = [grading.is_equivalent(p, g) for p, g in pairs]
    assert expected == [True, True, False, True]
    found: list = []
    timings: list = []

    def work():
        found.extend(grading.is_equivalent(p, g) for p, g in pairs)
        began = time.perf_counter()
        found.append(grading.is_equivalent("9^{9^{9}}", "\\frac{1}{3}", timeout=0.5))
        timings.append(time.perf_counter() - began)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert found == expected + [False]
    assert timings[0] < 5


# --------------------------------------------------------------------------- gold self-check

SOLUTION = {
    "gsm8k": lambda r: r["answer"],
    "math": lambda r: r["solution"],
    "math500": lambda r: r["solution"],
    "minerva_math": lambda r: r["solution"],
}
# Data-quality exceptions: gold answers that do not grade correct against their own solution,
# by benchmark -> {line number: reason}. Itemised in docs/EVALUATION.md; none were found so far.
EXPECTED_FAILURES: dict[str, dict[int, str]] = {name: {} for name in SOLUTION}


def _records(name: str):
    path = DATA / name / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"benchmark data not found at {path} (the shared data folder is absent)")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, json.loads(line)


@pytest.mark.parametrize("name", sorted(SOLUTION))
def test_gold_grades_correct_against_its_solution(name):
    spec = BENCHMARKS[name]
    failures = {}
    for number, record in _records(name):  # all records: ~1 s for the 5000 of MATH
        gold = spec.gold(record)
        if not grading.is_correct(SOLUTION[name](record), gold, name):
            failures[number] = gold
    assert set(failures) == set(EXPECTED_FAILURES[name]), failures


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_boxed_gold_round_trip(name):
    """Every benchmark's parsed gold, boxed the way the prompt asks for, grades as correct.

    OlympiadBench has a solution field, but its solutions are proofs that mostly never state the
    final answer in an extractable form (474 of 675), so this round trip is its self-check.
    """
    spec = BENCHMARKS[name]
    failures = {number: spec.gold(record) for number, record in _records(name)
                if not grading.is_correct(f"So the final answer is $\\boxed{{{spec.gold(record)}}}$.",
                                          spec.gold(record), name)}
    assert failures == {}
