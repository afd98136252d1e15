"""The statistics of the accuracy tables, in one place: the Wilson interval of one accuracy, and for
two arms answering the same questions the paired-bootstrap interval of their difference and the
exact McNemar test of the questions one got right and the other wrong."""

from __future__ import annotations

import math
import random
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sane at 0 and n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(before: Sequence[bool], after: Sequence[bool], *, resamples: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Accuracy difference after - before on the same questions, with a paired-bootstrap 95% interval
    and the McNemar discordant counts (``gained``: wrong before, right after; ``lost``: the reverse)."""
    if len(before) != len(after):
        raise ValueError("paired_difference needs the same questions on both sides")
    n = len(before)
    deltas = [int(a) - int(b) for b, a in zip(before, after)]
    if n == 0:
        return {"n": 0, "diff": 0.0, "low": 0.0, "high": 0.0, "gained": 0, "lost": 0}
    rng = random.Random(seed)
    means = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"n": n, "diff": sum(deltas) / n, "low": means[int(0.025 * resamples)],
            "high": means[int(0.975 * resamples) - 1], "gained": deltas.count(1), "lost": deltas.count(-1)}


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: how likely a split of the discordant questions at least this
    uneven is when neither side is better (each discordant question a fair coin)."""
    n = gained + lost
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n)
