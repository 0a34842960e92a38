"""One QC run: sample, validate, review, estimate, gate, and (with an oracle reviewer) a
census for the true rate. Pure: it writes nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from fgclip.data.qc.config import QCConfig
from fgclip.data.qc.estimate import (Assessment, GateResult, NoiseEstimate, apply_gate, assess, estimate_noise,
                                     z_value)
from fgclip.data.qc.population import RegionItem
from fgclip.data.qc.reviewers import UNREVIEWED, LabelsReviewer, Reviewer
from fgclip.data.qc.sampling import stratified_sample
from fgclip.data.qc.validators import VALIDATORS, ValidationRules

REPORT_VERSION = 1

@dataclass
class QCResult:
    sample: list[Assessment]
    estimate: NoiseEstimate
    gate: GateResult
    report: dict[str, Any]
    metrics: dict[str, Any]
    by_shard: list[dict[str, Any]]
    census: NoiseEstimate | None = None


def _design(population: Mapping[str, Sequence[RegionItem]], sample: Sequence[RegionItem], config: QCConfig) -> dict[str, Any]:
    sampled = Counter(item.shard for item in sample)
    return {
        "unit": "region item: one region of one sample (box, short/long expression, negatives) with the image's long caption",
        "population": sum(len(items) for items in population.values()),
        "strata": {shard: {"population": len(items), "sampled": sampled[shard]} for shard, items in sorted(population.items())},
        "allocation": "proportional to stratum size, largest-remainder rounding (sums exactly to the sample size)",
        "within_stratum": "simple random sample without replacement, seeded from (qc.seed, shard)",
        "seed": config.seed,
        "sample_size_requested": config.sample_size,
        "sample_size": len(sample),
        "estimator": "pooled sample proportion; proportional allocation is self-weighting (inclusion probability n/N for every item)",
        "interval": "Wilson score interval at qc.confidence; conservative: ignores the stratification gain and the finite population correction",
    }


def _by_shard(population: Mapping[str, Sequence[RegionItem]], sample: Sequence[Assessment]) -> list[dict[str, Any]]:
    rows = []
    for shard in sorted(population):
        mine = [a for a in sample if a.item.shard == shard]
        reviewed = [a for a in mine if a.reviewed]
        noisy = sum(a.noisy for a in reviewed)
        rows.append({"shard": shard, "sampled": len(mine), "reviewed": len(reviewed), "noisy": noisy,
                     "rate": round(noisy / len(reviewed), 6) if reviewed else None})
    return rows


def run_qc(population: Mapping[str, Sequence[RegionItem]], *, config: QCConfig, rules: ValidationRules,
           reviewer: Reviewer, progress: bool = True) -> QCResult:
    """Sample, validate, review, estimate and gate; with the truth reviewer also judge the
    whole population (a census) for the true noise rate. Pure: writes nothing."""
    sample_items = stratified_sample(population, config.sample_size, config.seed)
    sample = [assess(item, rules, reviewer) for item in tqdm(sample_items, desc="qc: sample", unit="item", disable=not progress)]
    estimate = estimate_noise(sample, config.confidence)
    gate = apply_gate(estimate, config.max_noise_upper)
    census = None
    if reviewer.oracle:
        everything = [item for shard in sorted(population) for item in population[shard]]
        judged = (assess(item, rules, reviewer) for item in tqdm(everything, desc="qc: census", unit="item", disable=not progress))
        census = estimate_noise(judged, config.confidence)

    failures = Counter(f.check for a in sample for f in a.failures)
    verdicts = Counter(a.verdict.label for a in sample)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "design": _design(population, sample_items, config),
        "validators": {
            "failures": {name: failures.get(name, 0) for name in VALIDATORS},
            "items_failing": sum(1 for a in sample if a.failures),
        },
        "reviewer": {
            "identity": reviewer.identity(),
            "verdicts": dict(sorted(verdicts.items())),
            "note": ("only items with a reviewer verdict enter the estimate; unreviewed items are listed in sample.jsonl"
                     if verdicts.get(UNREVIEWED) else "every sampled item enters the estimate"),
        },
        "estimate": {"n": estimate.n, "noisy": estimate.noisy, "p_hat": estimate.p_hat, "ci_low": estimate.ci_low,
                     "ci_high": estimate.ci_high, "confidence": estimate.confidence, "z": z_value(estimate.confidence)},
        "gate": {"threshold": gate.threshold, "passed": gate.passed, "message": gate.message},
        "gallery": {"cards": min(config.gallery_items, len(sample)), "sampled": len(sample),
                    "order": "noisy items first, then by item id",
                    "note": "a person can label only the items shown; set qc.gallery_items >= qc.sample_size to review the whole sample"},
    }
    metrics: dict[str, Any] = {
        "population": report["design"]["population"], "sampled": len(sample), "reviewed": estimate.n,
        "noisy": estimate.noisy, "p_hat": estimate.p_hat, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
        "threshold": gate.threshold, "gate_passed": gate.passed,
        **{f"failures.{name}": count for name, count in report["validators"]["failures"].items()},
        **{f"verdicts.{label}": count for label, count in sorted(verdicts.items())},
    }
    if census is not None:
        contains = census.p_hat is not None and estimate.ci_low <= census.p_hat <= estimate.ci_high
        report["truth"] = {"method": "census: every population item judged by the validators and the truth reviewer",
                           "items": census.n, "noisy": census.noisy, "true_rate": census.p_hat,
                           "ci_contains_truth": contains}
        metrics.update({"true_rate": census.p_hat, "ci_contains_truth": contains})
    if isinstance(reviewer, LabelsReviewer):
        sampled_ids = {a.item.item_id for a in sample}
        report["reviewer"]["labels_not_in_sample"] = sum(1 for key in reviewer.labels if key not in sampled_ids)
    return QCResult(sample, estimate, gate, report, metrics, _by_shard(population, sample), census)


