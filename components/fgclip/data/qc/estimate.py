"""Each sampled item's assessment (validators + reviewer), the noise estimate with its
Wilson interval, and the gate on its upper bound."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from fgclip.data.qc.population import RegionItem
from fgclip.data.qc.reviewers import BAD, UNREVIEWED, Reviewer, Verdict
from fgclip.data.qc.validators import Failure, ValidationRules, validate_item

@dataclass(frozen=True)
class Assessment:
    item: RegionItem
    failures: tuple[Failure, ...]
    verdict: Verdict

    @property
    def reviewed(self) -> bool:
        return self.verdict.label != UNREVIEWED

    @property
    def noisy(self) -> bool:
        return bool(self.failures) or self.verdict.label == BAD

    def to_record(self) -> dict[str, Any]:
        item = self.item
        return {
            "id": item.item_id, "shard": item.shard, "key": item.key, "region": item.region,
            "bbox": list(item.bbox), "short_expr": item.short_expr, "long_expr": item.long_expr,
            "negatives": None if item.negatives is None else list(item.negatives), "caption": item.caption,
            "failures": [{"check": f.check, "reason": f.reason} for f in self.failures],
            "verdict": self.verdict.label, "verdict_reason": self.verdict.reason,
            "reviewed": self.reviewed, "noisy": self.noisy,
        }


def assess(item: RegionItem, rules: ValidationRules, reviewer: Reviewer) -> Assessment:
    return Assessment(item, tuple(validate_item(item, rules)), reviewer.review(item))


def z_value(confidence: float) -> float:
    """Two-sided standard normal quantile, e.g. 1.959964 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0 (no evidence)."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # The bounds are exactly 0 and 1 at the extremes; pin them against rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class NoiseEstimate:
    n: int  # items in the estimate (reviewed)
    noisy: int
    p_hat: float | None  # None when n == 0
    ci_low: float
    ci_high: float
    confidence: float


def estimate_noise(assessments: Iterable[Assessment], confidence: float) -> NoiseEstimate:
    """Pooled proportion over reviewed items (self-weighting design) with its Wilson interval."""
    reviewed = [a for a in assessments if a.reviewed]
    noisy = sum(a.noisy for a in reviewed)
    low, high = wilson_interval(noisy, len(reviewed), confidence)
    return NoiseEstimate(len(reviewed), noisy, noisy / len(reviewed) if reviewed else None, low, high, confidence)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    threshold: float
    message: str


def apply_gate(estimate: NoiseEstimate, threshold: float) -> GateResult:
    """Fail when the interval's upper bound exceeds the threshold (n == 0 always fails)."""
    p_hat = "n/a" if estimate.p_hat is None else f"{estimate.p_hat:.2%}"
    detail = f"(p_hat={p_hat}, n={estimate.n})"
    if estimate.ci_high > threshold:
        return GateResult(False, threshold, f"QC gate failed: noise upper bound {estimate.ci_high:.2%} > "
                                            f"threshold {threshold:.2%} {detail}")
    return GateResult(True, threshold, f"QC gate passed: noise upper bound {estimate.ci_high:.2%} <= "
                                       f"threshold {threshold:.2%} {detail}")


