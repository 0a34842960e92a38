"""qc: sampled validation of the built regions and negatives, a noise estimate with a
confidence interval, a gate, and an HTML review gallery.

The QC unit is a *region item*: one region of one sample (its box, short and long
expression, hard negatives) together with the image's long caption. The population is
every region item of every shard.

Design (recorded in report.json):
- Stratified random sample, strata = shards. Allocation proportional to each shard's
  item count, rounded by largest remainder so the allocations sum exactly to the sample
  size; a simple random sample without replacement inside each shard, seeded from
  (qc.seed, shard) so the sample does not depend on processing order.
- With proportional allocation every item has the same inclusion probability n/N (the
  design is self-weighting), so the pooled sample proportion is the unbiased estimator of
  the population noise rate; no stratum weights are needed.
- The interval is the Wilson score interval at qc.confidence. It ignores two effects that
  both make it narrower in truth: stratification (proportional allocation never has a
  larger variance than simple random sampling) and the finite population (sampling
  without replacement). So it is conservative, which is the safe side for a gate.
- An item is noisy when an automatic validator fails or the reviewer says it is wrong.
  With the `labels` reviewer only items with a human verdict enter the estimate.
- Gate: fail when the upper bound exceeds qc.max_noise_upper. The CLI writes every
  output first, then exits with GATE_FAILED_EXIT_CODE, so a person can see what failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

from PIL import Image
from tqdm import tqdm

from fgclip.boxes import iou
from fgclip.config import Params, QCConfig
from fgclip.expressions import noun_lemma
from fgclip.gallery import GalleryCard, boxed_image_uri, write_gallery
from fgclip.lexicon import DETERMINERS, SHAPES, attribute_class
from fgclip.seeding import seeded_random
from fgclip.shards import RawShardReader, annotation_path, dumps_jsonl, list_shards, read_jsonl
from fgclip.storage import local_path, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

HELP = "sampled QC of regions and negatives: noise estimate with a Wilson interval, a gate, a review gallery"
GATE_FAILED_EXIT_CODE = 3  # distinct from 1 (crash) and 2 (usage/input error)
REPORT_VERSION = 1

OK, BAD, UNREVIEWED, NOT_JUDGED = "ok", "bad", "unreviewed", "not_judged"


# ---------------------------------------------------------------- population

@dataclass(frozen=True)
class RegionItem:
    """One region of one sample with everything QC judges about it."""

    shard: str
    key: str
    region: int
    width: int
    height: int
    bbox: tuple[Any, ...]  # normalised x1, y1, x2, y2 as stored (validated, not trusted)
    short_expr: str
    long_expr: str
    negatives: tuple[str, ...] | None  # None: no negatives entry for this region
    caption: str | None  # None: no caption record for the image

    @property
    def item_id(self) -> str:
        """`<key>#<region>`; unambiguous because keys never contain '#'."""
        return f"{self.key}#{self.region}"


def _records_by_key(folder: str | Path, shard: str, what: str) -> dict[str, dict[str, Any]]:
    path = annotation_path(folder, shard)
    if not path.is_file():
        raise FileNotFoundError(f"{what} of shard {shard} are missing: {path} (has the {what} stage run?)")
    records = {}
    for number, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise ValueError(f"{path}: record {number} has no string 'key'; the file breaks the data contract")
        records[record["key"]] = record
    return records


# Stage outputs were validated against the contract when written; QC still reads them
# defensively so a damaged field becomes a validator failure, not a crash.
def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shard_items(shard: str, regions: Mapping[str, dict[str, Any]], negatives: Mapping[str, dict[str, Any]],
                captions: Mapping[str, dict[str, Any]]) -> list[RegionItem]:
    """The region items of one shard, ordered by (key, region index)."""
    items = []
    for key in sorted(regions):
        record = regions[key]
        neg_regions = (negatives.get(key) or {}).get("regions")
        caption = (captions.get(key) or {}).get("long_caption")
        for index, region in enumerate(record.get("regions") or []):
            region = region if isinstance(region, dict) else {}
            negs = None
            if isinstance(neg_regions, list) and index < len(neg_regions) and isinstance(neg_regions[index], dict):
                found = neg_regions[index].get("short_expr_negs")
                negs = tuple(_text(text) for text in found) if isinstance(found, list) else None
            items.append(RegionItem(
                shard=shard, key=key, region=index,
                width=_size(record.get("width")), height=_size(record.get("height")),
                bbox=tuple(region.get("bbox") or ()) if isinstance(region.get("bbox"), list) else (),
                short_expr=_text(region.get("short_expr")), long_expr=_text(region.get("long_expr")),
                negatives=negs, caption=caption if isinstance(caption, str) else None,
            ))
    return items


def load_population(shards: Sequence[str], *, regions_dir: str | Path, negatives_dir: str | Path,
                    captions_dir: str | Path, progress: bool = True) -> dict[str, list[RegionItem]]:
    """Every region item, by shard. A shard missing from a stage folder is an error."""
    population = {}
    for shard in tqdm(shards, desc="qc: load", unit="shard", disable=not progress):
        population[shard] = shard_items(
            shard,
            _records_by_key(regions_dir, shard, "regions"),
            _records_by_key(negatives_dir, shard, "negatives"),
            _records_by_key(captions_dir, shard, "captions"),
        )
    return population


# ---------------------------------------------------------------- sampling

def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Proportional allocation of `total` over strata, largest-remainder rounding.

    Integer arithmetic throughout, so the result sums exactly to `total`; remainder ties go
    to the smaller stratum id, so it is deterministic.
    """
    population = sum(sizes.values())
    if total < 0 or total > population:
        raise ValueError(f"cannot allocate {total} items over a population of {population}")
    if population == 0:
        return {stratum: 0 for stratum in sizes}
    quota = {stratum: total * size // population for stratum, size in sizes.items()}
    remainder = {stratum: total * size % population for stratum, size in sizes.items()}
    leftover = total - sum(quota.values())
    for stratum in sorted(sizes, key=lambda s: (-remainder[s], s))[:leftover]:
        quota[stratum] += 1
    return quota


def stratum_rng(seed: int, stratum: str) -> random.Random:
    """A generator seeded from (seed, stratum) only: independent of the other strata."""
    return seeded_random("qc", seed, stratum, sep=":")


def stratified_sample(population: Mapping[str, Sequence[RegionItem]], sample_size: int, seed: int) -> list[RegionItem]:
    """min(sample_size, N) items: proportional allocation, SRS without replacement per shard."""
    total = min(sample_size, sum(len(items) for items in population.values()))
    quota = allocate({shard: len(items) for shard, items in population.items()}, total)
    sample: list[RegionItem] = []
    for shard in sorted(population):
        chosen = stratum_rng(seed, shard).sample(range(len(population[shard])), quota[shard])
        sample.extend(population[shard][i] for i in sorted(chosen))
    return sample


# ---------------------------------------------------------------- validators

NegativesCheck = Callable[[str, list[str], int], list[str]]


def default_negatives_check() -> NegativesCheck:
    """fgclip.negatives.validate_negatives, imported when first needed."""
    try:
        from fgclip.negatives import validate_negatives
    except ImportError as error:
        raise ImportError(f"qc needs fgclip.negatives.validate_negatives to check negatives: {error}") from error
    return validate_negatives


@dataclass(frozen=True)
class ValidationRules:
    min_box_area_fraction: float
    max_box_area_fraction: float
    min_caption_words: int
    max_caption_words: int
    negatives_count: int
    negatives_check: NegativesCheck | None = None  # None: fgclip.negatives.validate_negatives

    @classmethod
    def from_params(cls, params: Params, negatives_check: NegativesCheck | None = None) -> "ValidationRules":
        qc = params.qc
        return cls(qc.min_box_area_fraction, qc.max_box_area_fraction, qc.min_caption_words, qc.max_caption_words,
                   params.negatives.count, negatives_check)


@dataclass(frozen=True)
class Failure:
    check: str
    reason: str


def _finite_box(bbox: Sequence[Any]) -> bool:
    return len(bbox) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)


def check_box_geometry(item: RegionItem, rules: ValidationRules) -> list[str]:
    if not _finite_box(item.bbox):
        return [f"box {list(item.bbox)!r} is not 4 finite numbers"]
    x1, y1, x2, y2 = item.bbox
    reasons = []
    if not (x1 < x2 and y1 < y2):
        reasons.append(f"box is empty or inverted: x1={x1:.4f} x2={x2:.4f} y1={y1:.4f} y2={y2:.4f}")
    if min(x1, y1, x2, y2) < 0.0 or max(x1, y1, x2, y2) > 1.0:
        reasons.append(f"box [{x1:.4f}, {y1:.4f}, {x2:.4f}, {y2:.4f}] leaves the image (coordinates must lie in [0, 1])")
    if item.width < 1 or item.height < 1:
        reasons.append(f"image size {item.width}x{item.height} is not positive")
    return reasons


def check_box_area(item: RegionItem, rules: ValidationRules) -> list[str]:
    if check_box_geometry(item, rules):
        return []  # an invalid box has no meaningful area; box_geometry reports it
    x1, y1, x2, y2 = item.bbox
    area = (x2 - x1) * (y2 - y1)
    if area < rules.min_box_area_fraction:
        return [f"box covers {area:.4%} of the image, below qc.min_box_area_fraction {rules.min_box_area_fraction:.4%}"]
    if area > rules.max_box_area_fraction:
        return [f"box covers {area:.4%} of the image, above qc.max_box_area_fraction {rules.max_box_area_fraction:.4%}"]
    return []


def check_expressions(item: RegionItem, rules: ValidationRules) -> list[str]:
    reasons = []
    if not item.short_expr.strip():
        reasons.append("short expression is empty")
    if not item.long_expr.strip():
        reasons.append("long expression is empty")
    return reasons


def check_negatives(item: RegionItem, rules: ValidationRules) -> list[str]:
    if item.negatives is None:
        return ["no negatives for this region (negatives record missing or shorter than the regions list)"]
    check = rules.negatives_check or default_negatives_check()
    return list(check(item.short_expr, list(item.negatives), rules.negatives_count))


def check_caption_length(item: RegionItem, rules: ValidationRules) -> list[str]:
    if item.caption is None:
        return ["no caption record for this image"]
    words = len(item.caption.split())
    if words < rules.min_caption_words:
        return [f"caption has {words} words, fewer than qc.min_caption_words {rules.min_caption_words}"]
    if words > rules.max_caption_words:
        return [f"caption has {words} words, more than qc.max_caption_words {rules.max_caption_words}"]
    return []


VALIDATORS: dict[str, Callable[[RegionItem, ValidationRules], list[str]]] = {
    "box_geometry": check_box_geometry,
    "box_area": check_box_area,
    "expressions": check_expressions,
    "negatives": check_negatives,
    "caption_length": check_caption_length,
}


def validate_item(item: RegionItem, rules: ValidationRules) -> list[Failure]:
    return [Failure(name, reason) for name, check in VALIDATORS.items() for reason in check(item, rules)]


# ---------------------------------------------------------------- the truth judge

TRUTH_ATTRIBUTES = ("colour", "pattern", "size")  # what the demo world's truth records
# Size words the lexicon allows beyond the world's own two; "medium-sized" maps to
# neither, so it contradicts both.
SIZE_SYNONYMS = {"tiny": "small", "little": "small", "big": "large", "huge": "large"}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
# Where a noun phrase's modifiers stop, reading leftwards from its head noun.
PHRASE_BOUNDARIES = DETERMINERS | frozenset({"of", "with", "and", "to", "in", "on", "at", "near", "next", "beside"})


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shape_of(word: str) -> str | None:
    """The demo shape a word names, singular or plural ("circles" -> "circle")."""
    lemma = noun_lemma(word)
    return lemma if lemma in SHAPES else None


def head_noun(short_expr: str, long_expr: str = "") -> str | None:
    """The shape an item refers to: the short expression's last shape noun (its head),
    else the long expression's first (the long form is the short one plus a locative
    or relational phrase that may name other objects)."""
    short = [shape for shape in map(shape_of, words_of(short_expr)) if shape]
    if short:
        return short[-1]
    return next((shape for shape in map(shape_of, words_of(long_expr)) if shape), None)


def modifiers(expression: str, head: str) -> list[str]:
    """The words right before the first mention of `head`, back to a determiner or
    preposition: "a small red striped circle left of a blue square" -> small, red, striped."""
    words = words_of(expression)
    position = next((i for i, word in enumerate(words) if shape_of(word) == head), None)
    if position is None:
        return []
    found = []
    for word in reversed(words[:position]):
        if word in PHRASE_BOUNDARIES:
            break
        found.append(word)
    return found[::-1]


@dataclass(frozen=True)
class Verdict:
    label: str  # OK | BAD | UNREVIEWED | NOT_JUDGED
    reason: str = ""


def _contradiction(word: str, cls: str, truth_value: Any) -> bool:
    if cls == "size":
        return SIZE_SYNONYMS.get(word, word) != truth_value
    return word != truth_value


def judge_truth(item: RegionItem, truth: Mapping[str, Any], match_iou: float) -> Verdict:
    """The demo oracle: the box must match a truth object of the named shape at IoU >=
    match_iou, and the expressions' colour/pattern/size words must agree with it."""
    head = head_noun(item.short_expr, item.long_expr)
    if head is None:
        return Verdict(BAD, f"the expression names no demo object (none of {', '.join(SHAPES)})")
    if not _finite_box(item.bbox):
        return Verdict(BAD, "the box is not 4 finite numbers")
    candidates = [o for o in truth.get("objects") or [] if o.get("shape") == head and _finite_box(tuple(o.get("bbox") or ()))]
    if not candidates:
        return Verdict(BAD, f"the image has no {head}")
    scored = [(iou(item.bbox, obj["bbox"]), obj) for obj in candidates]
    best_iou, best = max(scored, key=lambda pair: pair[0])
    if best_iou < match_iou:
        return Verdict(BAD, f"box matches no {head}: best IoU {best_iou:.2f} < qc.match_iou {match_iou:.2f}")
    contradictions = []
    for expression in dict.fromkeys((item.short_expr, item.long_expr)):
        for word in modifiers(expression, head):
            cls = attribute_class(word)
            if cls in TRUTH_ATTRIBUTES and best.get(cls) is not None and _contradiction(word, cls, best[cls]):
                contradictions.append(f"'{word}' contradicts the {head}'s {cls} '{best[cls]}'")
    if contradictions:
        return Verdict(BAD, "; ".join(dict.fromkeys(contradictions)))
    return Verdict(OK, f"matches {head} {best.get('id', '?')} at IoU {best_iou:.2f}")


# ---------------------------------------------------------------- reviewers

class Reviewer(Protocol):
    """Who judges semantic correctness. identity() goes into the report and MLflow."""

    name: str
    oracle: bool  # judges every item without a person, so a census gives the true rate

    def identity(self) -> dict[str, Any]: ...

    def review(self, item: RegionItem) -> Verdict: ...


class NoReviewer:
    """Validators only: every item counts, nothing is judged beyond the checks."""

    name = "none"
    oracle = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.name}

    def review(self, item: RegionItem) -> Verdict:
        return Verdict(NOT_JUDGED, "validators only")


class TruthReviewer:
    """The demo world's oracle over the truth sidecar (data/demo/*/truth)."""

    name = "truth"
    oracle = True
    version = 1

    def __init__(self, truth_dir: str | Path, match_iou: float) -> None:
        self.truth_dir = truth_dir
        self.match_iou = match_iou
        self._cache: dict[str, dict[str, dict[str, Any]]] = {}

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "match_iou": self.match_iou,
                "attributes": list(TRUTH_ATTRIBUTES)}

    def truth_of(self, shard: str) -> dict[str, dict[str, Any]]:
        if shard not in self._cache:
            self._cache[shard] = _records_by_key(self.truth_dir, shard, "truth records")
        return self._cache[shard]

    def review(self, item: RegionItem) -> Verdict:
        truth = self.truth_of(item.shard).get(item.key)
        if truth is None:
            return Verdict(UNREVIEWED, "no truth record for this key")
        return judge_truth(item, truth, self.match_iou)


def load_labels(path: str | Path) -> dict[str, str]:
    """Human verdicts as the gallery downloads them: {"<key>#<region>": "ok"|"bad"}."""
    try:
        data = json.loads(local_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"labels file {path} cannot be read as JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"labels file {path} must hold a JSON object {{\"<key>#<region>\": \"ok\"|\"bad\"}}")
    wrong = {k: v for k, v in data.items() if v not in (OK, BAD) or "#" not in k}
    if wrong:
        example = next(iter(wrong.items()))
        raise ValueError(f"labels file {path}: {len(wrong)} entries are not \"<key>#<region>\": \"ok\"|\"bad\", e.g. {example!r}")
    return dict(data)


class LabelsReviewer:
    """Human verdicts exported from the gallery; items without one stay unreviewed."""

    name = "labels"
    oracle = False

    def __init__(self, labels: Mapping[str, str], source: str = "") -> None:
        self.labels = dict(labels)
        self.source = source
        self.used: set[str] = set()

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(self.labels, sort_keys=True).encode()).hexdigest()
        return {"name": self.name, "labels": len(self.labels), "labels_sha256": digest, "source": self.source}

    def review(self, item: RegionItem) -> Verdict:
        label = self.labels.get(item.item_id)
        if label is None:
            return Verdict(UNREVIEWED, "no human verdict")
        self.used.add(item.item_id)
        return Verdict(label, "human verdict")


REVIEWERS: dict[str, Callable[[QCConfig, str | Path | None, str | Path | None], Reviewer]] = {
    "none": lambda config, truth, labels: NoReviewer(),
    "truth": lambda config, truth, labels: TruthReviewer(_required(truth, "truth", "--truth"), config.match_iou),
    "labels": lambda config, truth, labels: LabelsReviewer(load_labels(_required(labels, "labels", "--labels")), str(labels)),
}


def _required(path: str | Path | None, reviewer: str, flag: str) -> str | Path:
    if path is None:
        raise ValueError(f"qc.reviewer={reviewer} needs {flag}")
    return path


def make_reviewer(config: QCConfig, *, truth_dir: str | Path | None = None, labels: str | Path | None = None) -> Reviewer:
    return REVIEWERS[config.reviewer](config, truth_dir, labels)


# ---------------------------------------------------------------- assessment and estimate

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


# ---------------------------------------------------------------- one QC run

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


# ---------------------------------------------------------------- outputs

def gallery_cards(assessments: Sequence[Assessment], images_dir: str | Path, config: QCConfig, *,
                  human_labels: bool, progress: bool = True) -> list[GalleryCard]:
    """Cards for up to qc.gallery_items assessments, noisy first; images read from the shards."""
    chosen = sorted(assessments, key=lambda a: (not a.noisy, a.item.item_id))[: config.gallery_items]
    wanted: dict[str, set[str]] = {}
    for a in chosen:
        wanted.setdefault(a.item.shard, set()).add(a.item.key)
    images: dict[tuple[str, str], bytes] = {}
    for shard in tqdm(sorted(wanted), desc="qc: gallery images", unit="shard", disable=not progress):
        path = local_path(images_dir) / f"{shard}.tar"
        if not path.is_file():
            log.warning("gallery: image shard %s is missing", path)
            continue
        reader = RawShardReader(path, decode_images=False)
        for sample in reader:
            if sample.key in wanted[shard]:
                images[(shard, sample.key)] = sample.image_bytes
    cards = []
    for a in chosen:
        item = a.item
        data = images.get((item.shard, item.key))
        uri, note = None, "" if data is not None else "no readable image for this key in its image shard"
        if data is not None:
            try:
                uri = boxed_image_uri(data, item.bbox, noisy=a.noisy, max_side=config.gallery_image_max_side,
                                      quality=config.gallery_jpeg_quality)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                note = f"image cannot be decoded: {error}"
        cards.append(GalleryCard(
            item_id=item.item_id, shard=item.shard, short_expr=item.short_expr, long_expr=item.long_expr,
            negatives=list(item.negatives or ()), caption=item.caption or "", noisy=a.noisy,
            verdict=a.verdict.label, verdict_reason=a.verdict.reason,
            failures=[(f.check, f.reason) for f in a.failures], image_uri=uri, image_note=note,
            label=a.verdict.label if human_labels and a.verdict.label in (OK, BAD) else None,
        ))
    return cards


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if row.get(column) is None else row[column] for column in columns})
    return buffer.getvalue()


def write_outputs(result: QCResult, out_dir: str | Path, *, images_dir: str | Path, config: QCConfig,
                  human_labels: bool = False, progress: bool = True) -> dict[str, Path]:
    """report.json, metrics.json, gate.json, noise_by_shard.csv, sample.jsonl and gallery/index.html.

    gate.json holds only the gate's outcome: training depends on it in dvc.yaml, so
    training waits for a passed gate without rerunning when only QC's sampling changes.
    """
    out = local_path(out_dir)
    paths = {"report": out / "report.json", "metrics": out / "metrics.json", "gate": out / "gate.json",
             "noise_by_shard": out / "noise_by_shard.csv", "sample": out / "sample.jsonl", "gallery": out / "gallery"}
    write_text_atomic(paths["gate"], json.dumps({"passed": result.gate.passed}) + "\n")
    write_text_atomic(paths["report"], json.dumps(result.report, indent=2) + "\n")
    write_text_atomic(paths["metrics"], json.dumps(result.metrics, indent=2) + "\n")
    write_text_atomic(paths["noise_by_shard"], _csv(result.by_shard, ("shard", "sampled", "reviewed", "noisy", "rate")))
    write_text_atomic(paths["sample"], dumps_jsonl(a.to_record() for a in result.sample))
    estimate = result.estimate
    summary = [("population", str(result.report["design"]["population"])), ("sampled", str(len(result.sample))),
               ("reviewed", str(estimate.n)), ("noisy", str(estimate.noisy)),
               ("p_hat", "n/a" if estimate.p_hat is None else f"{estimate.p_hat:.2%}"),
               (f"{estimate.confidence:.0%} CI", f"[{estimate.ci_low:.2%}, {estimate.ci_high:.2%}]"),
               ("reviewer", str(result.report["reviewer"]["identity"]["name"]))]
    if result.census is not None and result.census.p_hat is not None:
        summary.append(("true rate (census)", f"{result.census.p_hat:.2%}"))
    cards = gallery_cards(result.sample, images_dir, config, human_labels=human_labels, progress=progress)
    write_gallery(paths["gallery"], cards, title="FG-CLIP data QC review", summary=summary,
                  gate_passed=result.gate.passed, gate_message=result.gate.message)
    return paths


def mlflow_metrics(result: QCResult) -> dict[str, float]:
    """The numeric metrics (booleans as 0/1, undefined values left out)."""
    numbers = {}
    for name, value in result.metrics.items():
        if isinstance(value, bool):
            numbers[name] = float(value)
        elif isinstance(value, (int, float)):
            numbers[name] = value
    return numbers


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="image shards (NNNNN.tar): the shard list and the gallery's images")
    parser.add_argument("--captions", required=True, help="caption_record shards")
    parser.add_argument("--regions", required=True, help="regions_record shards")
    parser.add_argument("--negatives", required=True, help="negatives_record shards")
    parser.add_argument("--truth", default=None, help="truth sidecar shards (needed by qc.reviewer=truth)")
    parser.add_argument("--labels", default=None, help="human verdicts downloaded from the gallery (needed by qc.reviewer=labels)")
    parser.add_argument("--out", default="reports/qc", help="output folder (default: reports/qc)")


def command(args: argparse.Namespace, params: Params) -> int:
    from fgclip.cli import ComponentError
    from fgclip.tracking import tracked_run

    config = params.qc
    progress = not getattr(args, "no_progress", False)
    if args.labels is not None and config.reviewer != "labels":
        raise ComponentError(f"--labels is read only by the labels reviewer; add --set qc.reviewer=labels (now {config.reviewer})")
    try:
        shards = list_shards(args.images)
        population = load_population(shards, regions_dir=args.regions, negatives_dir=args.negatives,
                                     captions_dir=args.captions, progress=progress)
        reviewer = make_reviewer(config, truth_dir=args.truth, labels=args.labels)
        rules = ValidationRules.from_params(params)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise ComponentError(str(error)) from error

    inputs = {"images": args.images, "captions": args.captions, "regions": args.regions, "negatives": args.negatives}
    if config.reviewer == "truth":
        inputs["truth"] = args.truth
    with tracked_run(params.tracking, "qc", tags={"component": "qc"}) as tracker:
        tracker.log_params({"stage": "qc", "qc": config.model_dump(), "negatives.count": params.negatives.count,
                            "reviewer": reviewer.identity(), "shards": len(shards)})
        for name, path in inputs.items():
            tracker.log_dataset(path, name)
        if args.labels is not None:
            tracker.set_tags({"qc.labels_sha256": sha256_file(args.labels)})
        try:
            result = run_qc(population, config=config, rules=rules, reviewer=reviewer, progress=progress)
        except (FileNotFoundError, ImportError) as error:  # a truth shard missing; no negatives validator
            raise ComponentError(str(error)) from error
        paths = write_outputs(result, args.out, images_dir=args.images, config=config,
                              human_labels=config.reviewer == "labels", progress=progress)
        tracker.log_metrics(mlflow_metrics(result))
        for name in ("report", "metrics", "noise_by_shard", "sample"):
            tracker.log_artifact(paths[name], "qc")
        tracker.log_artifact(paths["gallery"], "qc/gallery")
    log.info("qc: %s", result.gate.message)
    print(result.gate.message, file=sys.stdout if result.gate.passed else sys.stderr)
    return 0 if result.gate.passed else GATE_FAILED_EXIT_CODE
