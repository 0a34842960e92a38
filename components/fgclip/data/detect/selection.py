"""The paper's box selection, the same for every detector backend: keep scores >=
min_confidence, clip to the image, drop degenerate and tiny boxes, class-agnostic NMS
across all expressions of the image, cap at max_regions. Each dropped candidate is
reported with its reason (low_confidence, invalid_score, box_degenerate,
box_outside_image, box_too_small, nms_suppressed, over_max_regions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fgclip.core import boxes
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import Expression
from fgclip.data.detect.interface import Candidate, DetectorError


# ---------------------------------------------------------------- the core selection

def select_regions(expressions: Sequence[Expression], candidates: Sequence[Sequence[Candidate]], width: int, height: int,
                   config: DetectConfig) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The paper's box selection, the same for every backend.

    Returns the regions (contract form, best score first) and `(reason, detail)` for
    every candidate left out.
    """
    if len(candidates) != len(expressions):
        raise DetectorError(f"backend returned {len(candidates)} candidate lists for {len(expressions)} expressions")
    ignored: list[tuple[str, str]] = []
    pool: list[tuple[tuple[float, float, float, float], float, int]] = []
    for index, (expression, found) in enumerate(zip(expressions, candidates)):
        for candidate in found:
            label = f"{expression.short_expr!r} box {[round(v, 1) for v in candidate.bbox]}"
            score = float(candidate.score)
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                ignored.append(("invalid_score", f"{label}: score {score!r} is not in [0, 1]"))
                continue
            if score < config.min_confidence:
                ignored.append(("low_confidence", f"{label}: score {score:.3f} < min_confidence {config.min_confidence}"))
                continue
            problem, clipped = boxes.box_problem(candidate.bbox, width, height, min_side_px=config.min_box_side_px,
                                                 min_area_fraction=config.min_box_area_fraction)
            if problem is not None:
                ignored.append((problem, f"{label} in a {width}x{height} image: clipped to {[round(v, 1) for v in clipped]}"))
                continue
            pool.append((clipped, score, index))
    kept = boxes.nms([p[0] for p in pool], [p[1] for p in pool], config.nms_iou)
    kept_set = set(kept)
    for position, (box, score, index) in enumerate(pool):
        if position not in kept_set:
            ignored.append(("nms_suppressed", f"{expressions[index].short_expr!r} score {score:.3f}: "
                                              f"overlaps a higher-scoring box above nms_iou {config.nms_iou}"))
    regions = []
    for rank, position in enumerate(kept):
        box, score, index = pool[position]
        expression = expressions[index]
        if rank >= config.max_regions:
            ignored.append(("over_max_regions", f"{expression.short_expr!r} score {score:.3f}: beyond max_regions {config.max_regions}"))
            continue
        bbox = [round(v, config.bbox_decimals) for v in boxes.to_normalised(box, width, height)]
        if boxes.is_degenerate(bbox):  # only possible with min_box_side_px 0 and a sub-rounding box
            ignored.append((boxes.TOO_SMALL, f"{expression.short_expr!r}: empty after rounding to {config.bbox_decimals} decimals"))
            continue
        regions.append({"bbox": bbox, "score": round(score, config.bbox_decimals),
                        "short_expr": expression.short_expr, "long_expr": expression.long_expr})
    return regions, ignored
