"""What makes a set of hard negatives valid, and the post-processing every generator's
output goes through (the paper's: strip list markers and stray symbols).

`validate_negatives` is the one definition of a valid negative set: the negatives stage
keeps only such sets and QC checks them with it. A valid set has exactly K distinct
negatives, none equal to the positive, each keeping the positive's head noun.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fgclip.text.words import head_noun, tokenize

_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+")  # "1. ", "2) ", "- ", "* " from LLM lists
_STRAY = re.compile(r"[;,\"\u201c\u201d\u2018\u2019`()\[\]{}<>|\\]")
_EDGE_QUOTE = re.compile(r"(?<!\w)'|'(?!\w)")  # a quote, but not the apostrophe in "man's"
_TRAILING = re.compile(r"[\s.!?:]+$")


def clean_expression(text: str) -> str:
    """The paper's post-processing: drop list markers, stray symbols (; , quotes,
    brackets), newlines and trailing punctuation; collapse whitespace. Case is kept."""
    text = _LIST_MARKER.sub("", text.replace("\r", " ").replace("\n", " "))
    text = _EDGE_QUOTE.sub(" ", _STRAY.sub(" ", text))
    return _TRAILING.sub("", " ".join(text.split()))


def postprocess(negative: str, positive: str) -> str:
    """Clean one negative and lowercase it when the positive is lowercase."""
    cleaned = clean_expression(negative)
    return cleaned.lower() if positive == positive.lower() else cleaned


def normalise(text: str) -> str:
    """The form expressions are compared in: cleaned and lowercased."""
    return clean_expression(text).lower()


def validate_negatives(positive: str, negatives: Sequence[str], count: int) -> list[str]:
    """Problems of one region's negatives; an empty list means the set is valid.

    Each problem is one readable line starting with its code:
    - `wrong_count`: not exactly `count` negatives (an empty list, the "no negatives"
      form, is reported too; callers that accept flag-0 regions check for [] first);
    - `empty`: a negative with no words;
    - `equals_positive`: a negative equal to the positive once normalised (cleaned,
      lowercased);
    - `duplicate`: a negative equal to an earlier one once normalised;
    - `head_noun_missing`: the positive's head noun (its last object noun, see
      `fgclip.data.detect.expressions.head_noun`) is not a word of the negative;
    - `stray_symbols`: the negative still holds what post-processing strips
      (; , quotes, brackets, newlines, trailing punctuation, list markers).
    """
    problems = []
    if len(negatives) != count:
        problems.append(f"wrong_count: {len(negatives)} negatives, expected {count}")
    head = head_noun(positive)
    positive_norm = normalise(positive)
    first_seen: dict[str, int] = {}
    for index, negative in enumerate(negatives):
        if not isinstance(negative, str) or not normalise(negative):
            problems.append(f"empty: negative {index} is empty")
            continue
        norm = normalise(negative)
        if norm == positive_norm:
            problems.append(f"equals_positive: negative {index} {negative!r} is the positive")
        if norm in first_seen:
            problems.append(f"duplicate: negative {index} {negative!r} repeats negative {first_seen[norm]}")
        else:
            first_seen[norm] = index
        if head is not None and head not in tokenize(norm):
            problems.append(f"head_noun_missing: negative {index} {negative!r} lacks the head noun {head!r}")
        if clean_expression(negative) != " ".join(negative.split()):
            problems.append(f"stray_symbols: negative {index} {negative!r} is not post-processed")
    return problems


def select_valid(positive: str, candidates: Sequence[str], count: int) -> list[str]:
    """The first `count` post-processed candidates that are non-empty, differ from the
    positive and from each other, and keep the head noun."""
    head = head_noun(positive)
    seen = {normalise(positive)}
    chosen: list[str] = []
    for candidate in candidates:
        if len(chosen) == count:
            break
        cleaned = postprocess(candidate, positive)
        norm = cleaned.lower()
        if not cleaned or norm in seen or (head is not None and head not in tokenize(norm)):
            continue
        seen.add(norm)
        chosen.append(cleaned)
    return chosen

