"""Automatic validators of a region item: box geometry and area, non-empty expressions,
a valid negative set (the negatives component's own definition), caption length."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fgclip.core.boxes import is_box
from fgclip.data.negatives.validation import validate_negatives
from fgclip.data.qc.population import RegionItem

if TYPE_CHECKING:
    from fgclip.config import Params

NegativesCheck = Callable[[str, list[str], int], list[str]]


@dataclass(frozen=True)
class ValidationRules:
    min_box_area_fraction: float
    max_box_area_fraction: float
    min_caption_words: int
    max_caption_words: int
    negatives_count: int
    negatives_check: NegativesCheck = validate_negatives

    @classmethod
    def from_params(cls, params: Params, negatives_check: NegativesCheck = validate_negatives) -> "ValidationRules":
        qc = params.qc
        return cls(qc.min_box_area_fraction, qc.max_box_area_fraction, qc.min_caption_words, qc.max_caption_words,
                   params.negatives.count, negatives_check)


@dataclass(frozen=True)
class Failure:
    check: str
    reason: str


def check_box_geometry(item: RegionItem, rules: ValidationRules) -> list[str]:
    if not is_box(item.bbox):
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
    return list(rules.negatives_check(item.short_expr, list(item.negatives), rules.negatives_count))


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

