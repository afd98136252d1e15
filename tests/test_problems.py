"""The offline arithmetic problem set: sizes, determinism, disjoint splits, correct answers."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from lightreasoner import data, problems
from lightreasoner.errors import LightReasonerError

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(expression: str) -> float:
    """Evaluate + - * / over integers, nothing else (a checker independent of the generator)."""
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"not plain arithmetic: {expression!r}")
    return walk(ast.parse(expression, mode="eval"))


WORD_NUMBERS = {"twice": "2", "three times": "3", "half": "2", "a third": "3", "a quarter": "4", "a fifth": "5",
                "two": "2", "three": "3", "four": "4"}
STEP = re.compile(r"([\d][\d\s+\-*/]*[\d])\s*=\s*\$?(\d+)")


@pytest.fixture(scope="module")
def worked():
    return {split: problems.generate_worked(split, seed=0) for split in ("train", "test")}


def test_sizes_and_ids(worked):
    assert len(worked["train"]) >= 1000 and len(worked["test"]) >= 300
    for split, items in worked.items():
        ids = [p.id for p, _ in items]
        assert len(set(ids)) == len(ids) and ids[0] == f"arith-{split}-00000"


def test_deterministic_and_seeded():
    first = problems.generate_problems("test", seed=3)
    assert first == problems.generate_problems("test", seed=3)
    other = problems.generate_problems("test", seed=4)
    assert len({p.question for p in first} & {p.question for p in other}) < len(first) // 10


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_disjoint_and_distinct(seed):
    train = problems.generate_problems("train", seed=seed)
    test = problems.generate_problems("test", seed=seed)
    train_q, test_q = {p.question for p in train}, {p.question for p in test}
    assert len(train_q) == len(train) and len(test_q) == len(test)
    assert not train_q & test_q
    # Disjoint also across sizes: a bigger test set never takes a train question.
    bigger = {p.question for p in problems.generate_problems("test", seed=seed, n=900)}
    assert not bigger & train_q and test_q <= bigger


def test_every_step_is_right_and_ends_in_gold(worked):
    for items in worked.values():
        for problem, answer in items:
            body, final = answer.rsplit("\n#### ", 1)
            assert final == problem.gold and problem.gold.isdigit(), problem
            results: list[int] = []
            for line in body.splitlines():
                match = STEP.search(line)
                assert match, (problem.question, line)
                left, right = match.group(1), int(match.group(2))
                assert arithmetic(left) == right, (problem.question, line)
                # operands come from the question or from earlier steps (100 in percentages)
                allowed = set(re.findall(r"\d+", problem.question)) | {str(r) for r in results} | {"100"}
                allowed |= {digit for word, digit in WORD_NUMBERS.items() if word in problem.question}
                assert set(re.findall(r"\d+", left)) <= allowed, (problem.question, line)
                results.append(right)
            assert str(results[-1]) == problem.gold


def test_independent_solutions_for_some_templates(worked):
    """Re-solve a few templates from the question text alone."""
    solvers = {
        r"buys (\d+) .+ for \$(\d+) each and (\d+) .+ for \$(\d+) each\. \w+ pays with (a|two|three) \$(\d+) "
        r"bills?": lambda a, p, b, q, count, bill: {"a": 1, "two": 2, "three": 3}[count] * bill - a * p - b * q,
        r"at (\d+) miles per hour for (\d+) hours, then at (\d+) miles per hour for another (\d+) hours":
            lambda v, t, w, u: v * t + w * u,
        r"adult ticket costs \$(\d+) and a child ticket costs \$(\d+)\. A family of (\d+) adults? and (\d+) "
        r"child(?:ren)? visits and also pays \$(\d+)": lambda a, c, na, nc, f: a * na + c * nc + f,
        r"usually costs \$(\d+)\. This week every .+ is (\d+)% off\. \w+ buys (\d+) ":
            lambda price, pct, n: n * price * (100 - pct) // 100,
        r"is (\d+) years old\. \w+ is (twice|three times) as old as \w+, and \w+ is (\d+) years older than \w+\. "
        r"How old will \w+ be in (\d+) years":
            lambda young, times, gap, later: young * {"twice": 2, "three times": 3}[times] + gap + later,
    }
    checked = dict.fromkeys(solvers, 0)
    for problem, _ in worked["train"] + worked["test"]:
        for pattern, solve in solvers.items():
            match = re.search(pattern, problem.question)
            if match:
                values = [int(g) if g.isdigit() else g for g in match.groups()]
                assert str(solve(*values)) == problem.gold, problem.question
                checked[pattern] += 1
    assert all(count >= 20 for count in checked.values()), checked


def test_text_reads_naturally(worked):
    questions = [p.question for items in worked.values() for p, _ in items]
    template_names = {t.__name__ for t in problems.TEMPLATES}
    assert len(template_names) >= 10
    for question in questions:
        assert question.endswith("?") and "  " not in question and "{" not in question
        assert not re.search(r"\b1 (hours|adults|children|packs|rows|weeks|games|days)\b", question), question
        assert question[0].isupper()
    # every template shows up with a fair share
    starts = {re.sub(r"\d+", "N", q.split(".")[0])[:12] for q in questions}
    assert len(starts) > 50


def test_jsonl_round_trip_in_gsm8k_format(tmp_path):
    path = problems.write_problems_jsonl(tmp_path / "arith" / "test.jsonl", "test", seed=0, n=40)
    lines = path.read_text().splitlines()
    assert len(lines) == 40 and all(re.search(r'\\n#### \d+"}$', line) for line in lines)
    loaded = data.load_problems(path)
    assert loaded == problems.generate_problems("test", seed=0, n=40)


def test_load_problems_by_name():
    assert data.load_problems("arith", split="test", seed=2) == problems.generate_problems("test", seed=2)
    assert len(data.load_problems("arith", split="train", limit=5)) == 5


def test_unknown_split_is_one_line_error():
    with pytest.raises(LightReasonerError, match="arith: unknown split 'validation'"):
        problems.generate_problems("validation", seed=0)
