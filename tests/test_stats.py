"""The statistics of the accuracy tables against slow, obviously-correct definitions."""

from __future__ import annotations

import math
from itertools import product

import pytest

from lightreasoner.stats import mcnemar_p, paired_difference, wilson_interval


def test_wilson_interval_matches_its_definition():
    """The interval's ends are the p where |p_hat - p| = z sqrt(p (1 - p) / n), found by bisection."""
    def root(f, low, high):
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if f(low) * f(mid) > 0 else (low, mid)
        return (low + high) / 2

    z = 1.959963984540054
    for correct, n in [(0, 10), (3, 10), (10, 10), (36, 60), (1, 1319), (700, 1319)]:
        p_hat = correct / n
        f = lambda p: abs(p_hat - p) - z * math.sqrt(p * (1 - p) / n)  # noqa: E731
        # f < 0 just beside p_hat (> 0 at the far end), so each side holds one root
        low = 0.0 if correct == 0 else root(f, 0.0, p_hat - 1e-12)
        high = 1.0 if correct == n else root(f, p_hat + 1e-12, 1.0)
        assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-9)


def test_paired_difference_against_direct_counts():
    before = [True, False, False, True, True, False, False, False]
    after = [True, True, True, False, True, False, True, False]
    result = paired_difference(before, after, resamples=4000, seed=1)
    assert result["gained"] == 3 and result["lost"] == 1
    assert result["diff"] == pytest.approx((sum(after) - sum(before)) / len(before))
    assert result["low"] < result["diff"] < result["high"]
    assert -1 <= result["low"] and result["high"] <= 1
    same = paired_difference(before, before)
    assert same["diff"] == same["low"] == same["high"] == 0


@pytest.mark.parametrize("gained,lost", [(0, 0), (3, 0), (1, 1), (10, 2), (2, 10), (7, 4), (8, 3)])
def test_mcnemar_p_against_enumerating_every_split_of_the_discordant_questions(gained, lost):
    n = gained + lost  # every way n fair coins can fall; count those at least as uneven as observed
    uneven = sum(abs(2 * sum(flips) - n) >= abs(gained - lost) for flips in product((0, 1), repeat=n))
    assert mcnemar_p(gained, lost) == pytest.approx(uneven / 2 ** n)
