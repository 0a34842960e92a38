"""Box utilities: clipping, size filters, IoU and NMS against a brute-force reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from fgclip.core import boxes


def test_clip_keeps_inside_and_cuts_outside():
    assert boxes.clip((10, 20, 30, 40), 100, 50) == (10, 20, 30, 40)
    assert boxes.clip((-5, -1, 120, 60), 100, 50) == (0, 0, 100, 50)
    assert boxes.is_degenerate(boxes.clip((110, 10, 130, 20), 100, 50))


def test_normalised_pixel_round_trip_and_bad_size():
    px = (32.0, 12.0, 64.0, 48.0)
    norm = boxes.to_normalised(px, 320, 240)
    assert norm == pytest.approx((0.1, 0.05, 0.2, 0.2))
    assert boxes.to_pixels(norm, 320, 240) == pytest.approx(px)
    with pytest.raises(ValueError):
        boxes.to_normalised(px, 0, 240)
    with pytest.raises(ValueError):
        boxes.as_box((1, 2, 3))


@pytest.mark.parametrize(
    "box, reason",
    [
        ((10, 10, 10, 20), boxes.DEGENERATE),  # zero width
        ((30, 10, 20, 20), boxes.DEGENERATE),  # inverted
        ((10, math.nan, 20, 20), boxes.DEGENERATE),  # not finite
        ((-30, 10, -5, 20), boxes.OUTSIDE),  # wholly left of the image
        ((10, 60, 20, 90), boxes.OUTSIDE),  # wholly below
        ((10, 10, 12, 40), boxes.TOO_SMALL),  # a side under 4 px
        ((98, 10, 130, 40), boxes.TOO_SMALL),  # only 2 px left after clipping
        ((10, 10, 40, 40), None),
    ],
)
def test_box_problem(box, reason):
    found, _ = boxes.box_problem(box, 100, 50, min_side_px=4, min_area_fraction=0.0)
    assert found == reason


def test_box_problem_area_fraction_and_clipping():
    # 5x5 px passes the side rule but covers 0.5% of a 100x50 image
    assert boxes.box_problem((0, 0, 5, 5), 100, 50, min_side_px=4, min_area_fraction=0.01)[0] == boxes.TOO_SMALL
    assert boxes.box_problem((0, 0, 10, 10), 100, 50, min_side_px=4, min_area_fraction=0.01)[0] is None
    reason, clipped = boxes.box_problem((-10, -10, 30, 30), 100, 50, min_side_px=4, min_area_fraction=0.0)
    assert reason is None and clipped == (0, 0, 30, 30)


def test_iou_known_values():
    assert boxes.iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert boxes.iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    assert boxes.iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges
    assert boxes.iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0
    assert boxes.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area: no overlap, no division by zero
    assert boxes.iou((0, 0, 4, 4), (1, 1, 2, 2)) == pytest.approx(1 / 16)


def _random_boxes(rng: random.Random, n: int, size: float = 100.0) -> list[tuple[float, float, float, float]]:
    out = []
    for _ in range(n):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        out.append((x, y, x + rng.uniform(1, size / 2), y + rng.uniform(1, size / 2)))
    return out


def test_iou_matrix_matches_scalar_iou():
    rng = random.Random(3)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    matrix = boxes.iou_matrix(a, b)
    assert matrix.shape == (7, 5)
    expected = np.array([[boxes.iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, atol=1e-12)


def _reference_nms(box_list, scores, threshold):
    """Brute force: repeatedly take the best remaining box (highest score, then lowest
    index) and delete every remaining box that overlaps it by more than the threshold."""
    remaining = list(range(len(box_list)))
    kept = []
    while remaining:
        best = min(remaining, key=lambda i: (-scores[i], i))
        kept.append(best)
        remaining = [i for i in remaining if i != best and boxes.iou(box_list[i], box_list[best]) <= threshold]
    return kept


@pytest.mark.parametrize("seed", range(12))
def test_nms_matches_brute_force(seed):
    rng = random.Random(seed)
    box_list = _random_boxes(rng, rng.randint(1, 40))
    # integer-valued scores make ties common, so tie-breaking is exercised too
    scores = [float(rng.randint(0, 5)) if seed % 2 else rng.random() for _ in box_list]
    threshold = rng.choice([0.1, 0.3, 0.5, 0.7])
    assert boxes.nms(box_list, scores, threshold) == _reference_nms(box_list, scores, threshold)


def test_nms_keeps_best_removes_overlaps_and_breaks_ties_by_index():
    box_list = [(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (0, 0, 10, 10)]
    assert boxes.nms(box_list, [0.5, 0.9, 0.4, 0.9], 0.5) == [1, 2]
    # identical boxes and scores: the first one listed wins, every time
    assert boxes.nms([(0, 0, 5, 5)] * 3, [0.7, 0.7, 0.7], 0.5) == [0]
    # non-overlapping boxes all survive, best score first
    assert boxes.nms([(0, 0, 1, 1), (5, 5, 6, 6)], [0.2, 0.8], 0.5) == [1, 0]


def test_nms_edge_cases():
    assert boxes.nms([], [], 0.5) == []
    with pytest.raises(ValueError):
        boxes.nms([(0, 0, 1, 1)], [0.1, 0.2], 0.5)
    # threshold 1.0 suppresses nothing, even exact duplicates
    assert boxes.nms([(0, 0, 5, 5)] * 2, [0.1, 0.2], 1.0) == [1, 0]
