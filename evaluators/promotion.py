"""Promotion beyond noise: interleaved A/B rounds of a challenger against the incumbent.

Each round times both kernels back to back in alternating order on rotated inputs; the ratio
incumbent_ms / challenger_ms of each round is one sample. The challenger is promoted only when the lower
bound of the confidence interval of the mean ratio clears 1 + margin, so a lucky run does not unseat a
kernel that is as fast.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

# two-sided 95% Student t quantiles by degrees of freedom; beyond 30 the normal quantile is close enough
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def t95(dof: int) -> float:
    if dof in _T95:
        return _T95[dof]
    if dof > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= dof)]


@dataclass(frozen=True)
class ABDecision:
    promote: bool
    mean_ratio: float      # incumbent_ms / challenger_ms; above 1 means the challenger is faster
    ci_low: float
    ci_high: float
    margin: float
    rounds: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(ratios: list[float], margin: float) -> ABDecision:
    n = len(ratios)
    if n < 2:
        raise ValueError("an A/B decision needs at least two rounds")
    mean = statistics.fmean(ratios)
    half = t95(n - 1) * statistics.stdev(ratios) / math.sqrt(n)
    low, high = mean - half, mean + half
    promote = low > 1.0 + margin
    if promote:
        reason = f"faster by {mean - 1:.1%} (95% CI {low - 1:+.1%}..{high - 1:+.1%}), beyond the {margin:.0%} margin"
    elif mean > 1.0:
        reason = (f"faster by {mean - 1:.1%} but the 95% CI ({low - 1:+.1%}..{high - 1:+.1%}) does not clear "
                  f"the {margin:.0%} margin")
    else:
        reason = f"not faster: {mean - 1:+.1%} (95% CI {low - 1:+.1%}..{high - 1:+.1%})"
    return ABDecision(promote, mean, low, high, margin, n, reason)
