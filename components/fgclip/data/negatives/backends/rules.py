"""negatives backend `rules`: hard negatives by attribute swaps over the shared lexicon
("large red striped circle" -> "large blue striped circle"), with no model.

Besides serving `negatives.backend: rules`, it repairs what an LLM generator misses, and
the held-out evaluation draws its FG-OVD-style negatives from it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.negatives.interface import NegativeGenerator
from fgclip.data.negatives.validation import clean_expression
from fgclip.text.lexicon import ADJECTIVE_ORDER, ATTRIBUTE_LEXICON, OBJECT_NOUNS, attribute_class
from fgclip.text.words import noun_lemma, rules_digest

# Classes a negative may add to a phrase that lacks them ("circle" -> "red circle").
INSERTABLE = ("size", "colour", "pattern", "material")
# Never inserted: an omitted pattern already reads as solid, so "solid" adds nothing.
NEVER_INSERTED = frozenset({"solid"})
# Words that mean (nearly) the same: swapping within a group would make a "negative"
# that is still true ("large circle" -> "big circle").
NEAR_SYNONYMS: tuple[frozenset[str], ...] = tuple(frozenset(group.split()) for group in (
    "small little tiny", "large big huge", "blue navy", "red maroon", "cyan turquoise", "yellow gold",
    "gray silver", "dotted spotted", "checkered plaid", "top upper", "bottom lower", "center middle",
))


def _same_meaning(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in NEAR_SYNONYMS)


def _meaning(words: Sequence[str]) -> tuple[str, ...]:
    """Words with near-synonyms mapped to one representative: "big circle" and "large
    circle" are one negative, not two."""
    return tuple(min(next((g for g in NEAR_SYNONYMS if w.lower() in g), {w.lower()})) for w in words)


def _cased_like(word: str, original: str) -> str:
    return word.upper() if original.isupper() and len(original) > 1 else word.title() if original.istitle() else word


class RulesNegativeGenerator(NegativeGenerator):
    """Attribute edits from the lexicon, hardest first.

    The phrase is read as words with a lexicon class (colour, material, pattern, size,
    count, position) and a head noun (its last object noun, else its last word). The
    candidates come in tiers, each shuffled with the region's rng: one attribute swapped
    for another of its class; two swapped; one swapped and a missing class inserted; a
    missing class inserted (before the noun, in adjective order); two inserted. So a
    fully described object gets one-word changes and even a bare "circle" gets K.
    """

    name = "rules"
    version = "1"

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def identity(self) -> dict[str, Any]:
        tables = (ATTRIBUTE_LEXICON, ADJECTIVE_ORDER, INSERTABLE, NEVER_INSERTED, NEAR_SYNONYMS, OBJECT_NOUNS)
        return {"name": self.name, "version": self.version, "rules_hash": rules_digest(*tables),
                "max_attempts": self.max_attempts}

    def generate(self, expression: str, count: int, rng: random.Random) -> list[str]:
        words = clean_expression(expression).split()
        if not words:
            return []
        lowered = [w.lower() for w in words]
        head = max((i for i, w in enumerate(lowered) if noun_lemma(w)), default=len(words) - 1)
        slots = [(i, cls) for i, w in enumerate(lowered) if i != head and (cls := attribute_class(w)) is not None]
        present = {cls for _, cls in slots}
        missing = [cls for cls in INSERTABLE if cls not in present]
        chosen: list[str] = []
        seen = {_meaning(words)}
        for attempt, candidate in enumerate(self._candidates(words, head, slots, missing, rng)):
            if attempt >= self.max_attempts or len(chosen) == count:
                break
            if _meaning(candidate) not in seen:
                seen.add(_meaning(candidate))
                chosen.append(" ".join(candidate))
        return chosen

    @staticmethod
    def _swaps(words: list[str], index: int, cls: str) -> list[str]:
        taken = {w.lower() for w in words}
        return [w for w in ATTRIBUTE_LEXICON[cls] if not _same_meaning(w, words[index].lower()) and w not in taken]

    @staticmethod
    def _insert_at(words: list[str], head: int, cls: str) -> int:
        """Where a word of `cls` goes in the modifier run before the head noun: after
        the attributes that come earlier in adjective order, before later ones and
        before noun modifiers ("metal tree house", not "tree metal house")."""
        rank = ADJECTIVE_ORDER.index(cls)
        position = head
        while position > 0:
            before = words[position - 1]
            later = attribute_class(before) in ADJECTIVE_ORDER and ADJECTIVE_ORDER.index(attribute_class(before)) > rank
            if not (later or (attribute_class(before) is None and noun_lemma(before.lower()))):
                break
            position -= 1
        return position

    def _insertions(self, words: list[str], head: int, cls: str) -> list[list[str]]:
        at = self._insert_at(words, head, cls)
        taken = {w.lower() for w in words}
        return [words[:at] + [w] + words[at:] for w in ATTRIBUTE_LEXICON[cls] if w not in NEVER_INSERTED and w not in taken]

    def _candidates(self, words: list[str], head: int, slots: list[tuple[int, str]], missing: list[str],
                    rng: random.Random) -> Iterator[list[str]]:
        def shuffled(items: list[list[str]]) -> list[list[str]]:
            rng.shuffle(items)
            return items

        def replaced(base: list[str], index: int, word: str) -> list[str]:
            return base[:index] + [_cased_like(word, base[index])] + base[index + 1:]

        singles = [replaced(words, i, w) for i, cls in slots for w in self._swaps(words, i, cls)]
        yield from shuffled(singles)
        doubles = [replaced(replaced(words, i, a), j, b)
                   for (i, ci), (j, cj) in itertools.combinations(slots, 2)
                   for a in self._swaps(words, i, ci) for b in self._swaps(words, j, cj) if not _same_meaning(a, b)]
        yield from shuffled(doubles)
        # Inserting shifts the head; swaps are applied first, then the insertion.
        swap_inserts = [inserted for single in singles for cls in missing for inserted in self._insertions(single, head, cls)]
        yield from shuffled(swap_inserts)
        inserts = [inserted for cls in missing for inserted in self._insertions(words, head, cls)]
        yield from shuffled(inserts)
        double_inserts = []
        for first, second in itertools.combinations(missing, 2):
            for once in self._insertions(words, head, first):
                new_head = head + 1
                double_inserts.extend(self._insertions(once, new_head, second))
        yield from shuffled(double_inserts)



def build(config: NegativesConfig) -> NegativeGenerator:
    return RulesNegativeGenerator(max_attempts=config.max_attempts)
