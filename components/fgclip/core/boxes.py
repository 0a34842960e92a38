"""Axis-aligned box utilities: clipping, size filters, IoU, class-agnostic NMS and the
conversion between pixel and normalised coordinates.

A box is `(x1, y1, x2, y2)` with x growing right and y growing down. Pixel boxes live in
`[0, width] x [0, height]`; normalised boxes (the data contract's form) in `[0, 1]^2`.
Everything here is plain Python plus numpy and has no state, so the detect stage, the QC
reviewer and the trainer can share one definition of "overlap" and "too small".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]

# Reason codes of `box_problem`, in the order they are checked.
DEGENERATE = "box_degenerate"
OUTSIDE = "box_outside_image"
TOO_SMALL = "box_too_small"


def as_box(values: Sequence[float]) -> Box:
    """A 4-tuple of floats; raises ValueError on any other length."""
    if len(values) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(values)}: {list(values)!r}")
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


def is_box(values: Any) -> bool:
    """Whether untrusted data is 4 finite real numbers (bools, strings and NaN are not)."""
    return (
        isinstance(values, (list, tuple))
        and len(values) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def is_finite(box: Sequence[float]) -> bool:
    return all(math.isfinite(float(v)) for v in box)


def is_degenerate(box: Sequence[float]) -> bool:
    """True for a box with a non-finite coordinate or no positive width and height."""
    x1, y1, x2, y2 = as_box(box)
    return not is_finite(box) or x2 <= x1 or y2 <= y1


def area(box: Sequence[float]) -> float:
    """Area of a box; 0 for a degenerate one."""
    x1, y1, x2, y2 = as_box(box)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def clip(box: Sequence[float], width: float, height: float) -> Box:
    """The part of a pixel box inside the image (may come out degenerate)."""
    x1, y1, x2, y2 = as_box(box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def to_normalised(box: Sequence[float], width: float, height: float) -> Box:
    """Pixel box -> normalised box (not clipped)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = as_box(box)
    return x1 / width, y1 / height, x2 / width, y2 / height


def to_pixels(box: Sequence[float], width: float, height: float) -> Box:
    """Normalised box -> pixel box (not clipped)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = as_box(box)
    return x1 * width, y1 * height, x2 * width, y2 * height


def box_problem(
    box: Sequence[float], width: float, height: float, *, min_side_px: float, min_area_fraction: float
) -> tuple[str | None, Box]:
    """Clip a pixel box to the image and check it is usable.

    Returns `(reason, clipped)`: reason is None for a usable box, else DEGENERATE (no
    area or a non-finite coordinate before clipping), OUTSIDE (no area left inside the
    image) or TOO_SMALL (a side below `min_side_px` or an area below
    `min_area_fraction` of the image).
    """
    if is_degenerate(box):
        return DEGENERATE, as_box(box)
    clipped = clip(box, width, height)
    if is_degenerate(clipped):
        return OUTSIDE, clipped
    x1, y1, x2, y2 = clipped
    if min(x2 - x1, y2 - y1) < min_side_px or area(clipped) < min_area_fraction * width * height:
        return TOO_SMALL, clipped
    return None, clipped


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes; 0 when either has no area."""
    ax1, ay1, ax2, ay2 = as_box(a)
    bx1, by1, bx2, by2 = as_box(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(boxes_a: Sequence[Sequence[float]], boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
    """Pairwise IoU, shape (len(a), len(b)); degenerate boxes have IoU 0 with everything."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def score_order(scores: Sequence[float]) -> list[int]:
    """Indices by score, highest first; equal scores keep their input order, so the
    result never depends on the sort algorithm or the platform."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float) -> list[int]:
    """Greedy class-agnostic non-maximum suppression.

    Visits boxes by `score_order`; a box is kept unless its IoU with an already kept box
    is above `iou_threshold`. Returns the kept indices, highest score first.
    """
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if not len(boxes):
        return []
    overlaps = iou_matrix(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept: list[int] = []
    for index in score_order(scores):
        if suppressed[index]:
            continue
        kept.append(index)
        suppressed |= overlaps[index] > iou_threshold
    return kept
