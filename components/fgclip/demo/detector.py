"""The demo detector teacher: a stand-in for an open-vocabulary detector on the demo world
(the detect backend `demo` serves it).

It grounds each expression to a truth object and returns that box, with the failure
modes of a real detector injected at configured rates (jitter, misses, false positives)
and the background noise a real one produces (sub-threshold boxes, near-duplicates).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from fgclip.core import boxes
from fgclip.demo.config import DemoDetectTeacher
from fgclip.demo.truth import TRUTH_ATTRIBUTES
from fgclip.text.lexicon import attribute_class
from fgclip.text.phrases import location_words
from fgclip.text.words import head_noun, noun_lemma, tokenize

Box = tuple[float, float, float, float]
#: (pixel box, score) candidates for one expression, as a detector returns them.
Scored = tuple[Box, float]


# Weak preference for a solid object when an expression names no pattern: captions
# usually leave "solid" out, but it is not proof.
ABSENT_PATTERN_PRIOR = 0.25
# Position words as directions from the image centre: (x sign, y sign); y grows down.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "upper": (0, -1), "bottom": (0, 1), "lower": (0, 1)}
CENTRE_WORDS = frozenset({"center", "centre", "middle"})


def _attribute_score(words: list[str], obj: dict[str, Any]) -> float:
    named = {}
    for word in words:
        cls = attribute_class(word)
        if cls in TRUTH_ATTRIBUTES and cls not in named:
            named[cls] = word
    score = 0.0
    for cls in TRUTH_ATTRIBUTES:
        if cls in named:
            score += 1.0 if named[cls] == obj.get(cls) else -1.0
    if "pattern" not in named and obj.get("pattern") == "solid":
        score += ABSENT_PATTERN_PRIOR
    return score


def _position_score(words: list[str], bbox: Sequence[float]) -> float:
    cx, cy = (bbox[0] + bbox[2]) / 2 - 0.5, (bbox[1] + bbox[3]) / 2 - 0.5
    score = 0.0
    for word in words:
        if word in DIRECTIONS:
            sx, sy = DIRECTIONS[word]
            score += sx * cx + sy * cy
        elif word in CENTRE_WORDS:
            score -= abs(cx) + abs(cy)
    return score


def ground(short_expr: str, long_expr: str, objects: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The truth object an expression most likely means: same shape noun, best matching
    attribute words, then best matching position words, then the first listed."""
    head = head_noun(short_expr)
    lemma = noun_lemma(head) if head else None
    same = [(i, o) for i, o in enumerate(objects) if lemma is not None and o.get("shape") == lemma]
    if not same:
        return None
    words = tokenize(short_expr)
    place = location_words(short_expr, long_expr)
    best = max(
        same, key=lambda item: (_attribute_score(words, item[1]), _position_score(place, item[1]["bbox"]), -item[0])
    )
    return best[1]


class TeacherBoxes:
    """Candidate boxes for expressions of one image, drawn like a real detector's."""

    def __init__(self, teacher: DemoDetectTeacher, min_confidence: float) -> None:
        self.teacher = teacher
        self.min_confidence = min_confidence

    def _low_score(self, rng: random.Random) -> float:
        return self.min_confidence * self.teacher.sub_threshold_max_fraction * rng.random()

    def _passing_score(self, rng: random.Random) -> float:
        return rng.uniform(self.teacher.score_min, self.teacher.score_max)

    def _random_box(self, width: int, height: int, rng: random.Random) -> Box:
        low, high = self.teacher.false_positive_size
        w, h = rng.uniform(low, high) * width, rng.uniform(low, high) * height
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        return x1, y1, x1 + w, y1 + h

    def candidates(
        self,
        short_expr: str,
        long_expr: str,
        objects: Sequence[dict[str, Any]],
        width: int,
        height: int,
        rng: random.Random,
    ) -> list[Scored]:
        teacher = self.teacher
        # Every draw is made, used or not, in a fixed order: changing one rate (or
        # grounding to another object) never reshuffles the rest of the stream.
        missed = rng.random() < teacher.miss_rate
        false_positive = rng.random() < teacher.false_positive_rate
        duplicate = rng.random() < teacher.duplicate_rate
        score, low = self._passing_score(rng), self._low_score(rng)
        offsets = [rng.gauss(0, 1) for _ in range(4)]
        duplicate_offsets = [rng.gauss(0, 1) for _ in range(4)]
        false_box, false_score = self._random_box(width, height, rng), self._passing_score(rng)
        noise = [
            (self._random_box(width, height, rng), self._low_score(rng))
            for _ in range(teacher.sub_threshold_candidates)
        ]
        out: list[Scored] = []
        target = ground(short_expr, long_expr, objects)
        if target is not None:
            box = _offset(boxes.to_pixels(target["bbox"], width, height), offsets, teacher.jitter)
            if missed:
                out.append((box, low))
            else:
                out.append((box, score))
                if duplicate:
                    out.append(
                        (
                            _offset(box, duplicate_offsets, teacher.duplicate_jitter),
                            score * teacher.duplicate_score_factor,
                        )
                    )
        if false_positive:
            out.append((false_box, false_score))
        return out + noise


def _offset(box: Sequence[float], unit_offsets: Sequence[float], amount: float) -> tuple[float, float, float, float]:
    """Move each coordinate by a standard-normal offset times `amount` of the box size."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = (w, h, w, h)
    x1, y1, x2, y2 = (v + o * amount * s for v, o, s in zip(box, unit_offsets, scale))
    return x1, y1, x2, y2
