"""The promotion gate, pure: reading a model's eval metrics and deciding whether the
challenger replaces the champion."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fgclip.core.storage import local_path
from fgclip.core.tracking import flatten

DECISION_FIRST = "first model"
DECISION_PROMOTED = "promoted"
DECISION_REJECTED = "rejected"


class RegisterError(Exception):
    """Bad input to the registration (missing model folder, metrics, gated metric...)."""


def local_file(path: str | Path) -> Path:
    try:
        return local_path(path)
    except ValueError as error:  # s3:// and friends: MLflow logs from a local copy
        raise RegisterError(f"{error}; download it first") from error


def metric_name(name: str) -> str:
    """MLflow metric and tag keys cannot hold '@': recall@1 -> recall_at_1."""
    return name.replace("@", "_at_")


def load_eval_metrics(path: str | Path) -> dict[str, float]:
    """The numeric metrics of an eval metrics.json, flattened with '.' (nested sections).

    Non-numeric entries (names, notes) are left out; booleans are not metrics.
    """
    file = local_file(path)
    if not file.is_file():
        raise RegisterError(f"metrics file {file} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise RegisterError(f"metrics file {file} is not valid JSON: {error}") from error
    if not isinstance(data, Mapping):
        raise RegisterError(f"metrics file {file} must hold a JSON object, not {type(data).__name__}")
    metrics = {
        metric_name(key): float(value)
        for key, value in flatten("", data).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
    if bad:
        raise RegisterError(f"metrics file {file} has non-finite values for {bad}")
    return metrics


@dataclass(frozen=True)
class Comparison:
    """One gated metric: challenger vs champion, improvement and the margin it needed."""

    metric: str
    challenger: float
    champion: float | None
    improvement: float | None
    margin: float
    lower_is_better: bool
    passed: bool

    def describe(self) -> str:
        if self.champion is None:
            return f"{self.metric}: the champion has no value to compare with"
        sign = "<" if self.lower_is_better else ">"
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.metric}: {self.challenger:.4f} vs champion {self.champion:.4f}, improvement "
            f"{self.improvement:+.4f} (needs >= {self.margin:+.4f}, {sign} is better) {verdict}"
        )


@dataclass(frozen=True)
class GateDecision:
    decision: str
    promoted: bool
    reason: str
    comparisons: list[Comparison] = field(default_factory=list)


def check_gated_metrics(metrics: Mapping[str, float], gate: Mapping[str, float]) -> None:
    """A challenger must report every gated metric; otherwise nothing is registered."""
    missing = sorted(set(gate) - set(metrics))
    if missing:
        raise RegisterError(f"the challenger's metrics lack the gated metric(s) {missing}; it has {sorted(metrics)}")


def decide_promotion(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    gate: Mapping[str, float],
    lower_is_better: Collection[str] = (),
) -> GateDecision:
    """The gate: promote when every gated metric improves by at least its margin.

    ``champion=None`` (no champion yet) promotes with decision "first model". A champion
    without a value for a gated metric fails that metric: the gate cannot prove the
    challenger is better, so a person has to promote by hand.
    """
    check_gated_metrics(challenger, gate)
    if champion is None:
        return GateDecision(DECISION_FIRST, True, "no champion yet: the first model becomes champion")
    comparisons = []
    for metric, margin in gate.items():
        lower = metric in lower_is_better
        theirs = champion.get(metric)
        if theirs is None:
            comparisons.append(Comparison(metric, challenger[metric], None, None, margin, lower, False))
            continue
        improvement = (theirs - challenger[metric]) if lower else (challenger[metric] - theirs)
        comparisons.append(
            Comparison(metric, challenger[metric], theirs, improvement, margin, lower, improvement >= margin)
        )
    failed = [c for c in comparisons if not c.passed]
    details = "; ".join(c.describe() for c in comparisons)
    if failed:
        names = ", ".join(c.metric for c in failed)
        return GateDecision(DECISION_REJECTED, False, f"gate failed on {names}: {details}", comparisons)
    return GateDecision(DECISION_PROMOTED, True, f"all {len(comparisons)} gated metrics passed: {details}", comparisons)
