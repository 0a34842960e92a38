"""The demo world's oracle for QC: whether a built region (its box and expressions) is
right about the image, judged against the truth sidecar (the QC reviewer `truth` asks it).

The box must match a truth object of the named shape at IoU >= match_iou, and the
expressions' size, colour and pattern words must agree with that object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fgclip.core.boxes import iou, is_box
from fgclip.demo.truth import TRUTH_ATTRIBUTES
from fgclip.text.lexicon import DETERMINERS, SHAPES, attribute_class
from fgclip.text.words import noun_lemma

#: Version of the judge's rules, recorded with every QC report.
JUDGE_VERSION = 1
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


def named_shape(short_expr: str, long_expr: str = "") -> str | None:
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


def _contradiction(word: str, cls: str, truth_value: Any) -> bool:
    if cls == "size":
        return SIZE_SYNONYMS.get(word, word) != truth_value
    return word != truth_value


def judge_region(
    bbox: Sequence[Any], short_expr: str, long_expr: str, truth: Mapping[str, Any], match_iou: float
) -> tuple[bool, str]:
    """(right, why) for one region of the image `truth` describes."""
    head = named_shape(short_expr, long_expr)
    if head is None:
        return False, f"the expression names no demo object (none of {', '.join(SHAPES)})"
    if not is_box(tuple(bbox)):
        return False, "the box is not 4 finite numbers"
    candidates = [
        o for o in truth.get("objects") or [] if o.get("shape") == head and is_box(tuple(o.get("bbox") or ()))
    ]
    if not candidates:
        return False, f"the image has no {head}"
    scored = [(iou(bbox, obj["bbox"]), obj) for obj in candidates]
    best_iou, best = max(scored, key=lambda pair: pair[0])
    if best_iou < match_iou:
        return False, f"box matches no {head}: best IoU {best_iou:.2f} < qc.match_iou {match_iou:.2f}"
    contradictions = []
    for expression in dict.fromkeys((short_expr, long_expr)):
        for word in modifiers(expression, head):
            cls = attribute_class(word)
            if cls in TRUTH_ATTRIBUTES and best.get(cls) is not None and _contradiction(word, cls, best[cls]):
                contradictions.append(f"'{word}' contradicts the {head}'s {cls} '{best[cls]}'")
    if contradictions:
        return False, "; ".join(dict.fromkeys(contradictions))
    return True, f"matches {head} {best.get('id', '?')} at IoU {best_iou:.2f}"
