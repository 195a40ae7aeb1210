"""Statistics of the protocol: paired comparisons over seeds and the flatness of a
validation curve."""

import math
import statistics
from typing import Sequence

FLAT_TOLERANCE = 0.01  # a curve is called flat when its last 20% change by <= 1% (relative)


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired comparison of ``a`` and ``b`` (the same seeds, in the same order):
    differences d = a - b, their mean and sample std, the paired t statistic
    mean / (std / sqrt(n)) with n - 1 degrees of freedom and its two-sided p (None
    without scipy or for n < 2), and ``exceeds_spread``: |mean| > std (|t| > sqrt(n))."""
    if len(a) != len(b) or not a:
        raise ValueError(f'paired_stats needs two equally long, non-empty lists: {a}, {b}')
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    std = statistics.stdev(d) if n > 1 else 0.0
    if std <= 1e-9 * max(1.0, abs(mean)):  # equal differences up to float rounding
        std = 0.0
    if n < 2:
        t = None
    elif std > 0:
        t = mean / (std / math.sqrt(n))
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = None
    if t is not None:
        try:
            from scipy.stats import t as student_t

            p = float(2 * student_t.sf(abs(t), n - 1))
        except ImportError:
            pass
    return dict(
        n=n,
        diffs=d,
        mean=mean,
        std=std,
        t=t,
        p=p,
        exceeds_spread=abs(mean) > std if n > 1 else None,
    )


def flatness(curve: Sequence[Sequence[float]], last: float = 0.2) -> dict:
    """Change of a validation curve ``[[step, score], ...]`` over its last ``last`` of
    the steps: ``rel_change`` = (final - value at (1 - last) of the steps) / |final|,
    ``range`` = max - min of the points in that window (score units)."""
    final_step = curve[-1][0]
    window = [v for s, v in curve if s >= (1 - last) * final_step - 1e-9]
    start, final = window[0], window[-1]
    return dict(
        rel_change=(final - start) / abs(final) if final else math.inf,
        range=max(window) - min(window),
        start=start,
        final=final,
        flat=abs(final - start) <= FLAT_TOLERANCE * abs(final),
    )
