"""How far a latency figure can be trusted: coefficient of variation and distribution-free 95%
confidence intervals on quantiles (order-statistic binomial intervals).

Pure Python (no numpy), so the agent, its benchmark worker and the host all use the same code.
For the q-quantile of n independent samples, the number of samples below the true quantile is
Binomial(n, q); the interval is [x_(l), x_(u)] between the order statistics whose ranks cover at
least the confidence level of that binomial (exact for n <= 5000, a normal approximation above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EXACT_LIMIT = 5000


def coefficient_of_variation(samples: Sequence[float]) -> float | None:
    """Standard deviation over mean (population form); None for fewer than 2 samples or mean 0."""
    n = len(samples)
    if n < 2:
        return None
    mean = math.fsum(samples) / n
    if mean == 0:
        return None
    var = math.fsum((x - mean) ** 2 for x in samples) / n
    return math.sqrt(var) / mean


def _binomial_cdf_table(n: int, q: float) -> list[float]:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, q), computed in log space."""
    log_q, log_p = math.log(q), math.log1p(-q)
    log_pmf = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_q
        + (n - k) * log_p
        for k in range(n + 1)
    ]  # fmt: skip
    cdf, total = [], 0.0
    for value in log_pmf:
        total += math.exp(value)
        cdf.append(min(total, 1.0))
    return cdf


def quantile_ranks(n: int, q: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks (l, u) of the sorted samples bounding the q-quantile with ``confidence``;
    None when n samples are too few for any interval at that level."""
    if n < 1 or not 0 < q < 1 or not 0 < confidence < 1:
        return None
    alpha = 1 - confidence
    # 1-based order statistics x_(j) <= x_(k): the interval misses below with P(B < j) and above
    # with P(B >= k), where B counts the samples below the true quantile.
    if n > EXACT_LIMIT:
        half = _normal_quantile(1 - alpha / 2) * math.sqrt(n * q * (1 - q))
        j = max(math.floor(n * q - half), 1)
        k = min(math.ceil(n * q + half) + 1, n)
        return j - 1, k - 1
    cdf = _binomial_cdf_table(n, q)  # cdf[m] = P(B <= m)
    j = 1
    while j + 1 <= n and cdf[j] <= alpha / 2:
        j += 1
    k = n
    while k - 1 >= j and 1 - cdf[k - 2] <= alpha / 2:
        k -= 1
    coverage = cdf[k - 1] - cdf[j - 1]
    if coverage < confidence:
        return None
    return j - 1, k - 1


def quantile_interval(
    samples: Sequence[float], q: float, confidence: float = 0.95
) -> tuple[float, float] | None:
    """A distribution-free ``confidence`` interval on the q-quantile of what ``samples`` came from."""
    ranks = quantile_ranks(len(samples), q, confidence)
    if ranks is None:
        return None
    ordered = sorted(samples)
    return ordered[ranks[0]], ordered[ranks[1]]


def latency_spread(samples_ms: Sequence[float]) -> dict[str, float | list[float] | None]:
    """``cv`` and 95% intervals ``p50_ci``/``p90_ci`` of a run of latency samples."""
    out: dict[str, float | list[float] | None] = {}
    cv = coefficient_of_variation(samples_ms)
    out["cv"] = None if cv is None else round(cv, 5)
    for name, q in (("p50_ci", 0.5), ("p90_ci", 0.9)):
        interval = quantile_interval(samples_ms, q)
        out[name] = None if interval is None else [round(interval[0], 6), round(interval[1], 6)]
    return out


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if p < 0.02425:
        x = math.sqrt(-2 * math.log(p))
        return (((((c[0] * x + c[1]) * x + c[2]) * x + c[3]) * x + c[4]) * x + c[5]) / (
            (((d[0] * x + d[1]) * x + d[2]) * x + d[3]) * x + 1
        )
    if p > 1 - 0.02425:
        return -_normal_quantile(1 - p)
    x = p - 0.5
    r = x * x
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * x
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
