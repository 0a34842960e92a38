"""The phrase grammar of referring expressions: the rule tables and the parser that finds
where a noun's location phrase starts and ends ("... sits near the top right corner",
"left of the pink star", "between X and Y").

The rules extractor builds expressions with it, the spaCy extractor shares its word
tables, and the demo detector teacher reads the position words of an expression's own
location with `location_words`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fgclip.text.lexicon import ADJECTIVE_ORDER, ATTRIBUTE_LEXICON, DETERMINERS, attribute_class
from fgclip.text.words import noun_lemma, tokenize

# ---------------------------------------------------------------- rule tables

# Attribute classes that form the modifier run of a short expression.
MODIFIER_CLASSES = ADJECTIVE_ORDER[1:]  # every class but counts (a count is not part of the object)
HARD_BOUNDARIES = frozenset({".", "!", "?", ";", ":"})
COMMA = ","
# Words that start a new clause: a location after them belongs to something else.
CONJUNCTIONS = frozenset(
    "and but or nor while whereas which who whom whose where that although though because so then yet".split()
)
# Prepositions that place an object; allowed after a few verb words ("sits near ...").
LOCATIVE_PREPOSITIONS = frozenset(
    "on in at near above below under beneath underneath beside behind between inside over by to along across "
    "against around among amid within atop toward towards outside alongside opposite from into onto beyond".split()
)
# "next to", "left of": these only place something when followed by the second word.
NEEDS_FOLLOWER = {"next": "to", "close": "to", "left": "of", "right": "of", "ahead": "of"}
# Degree words that may lead a preposition ("just above", "directly below").
PREPOSITION_ADVERBS = frozenset("just directly slightly immediately right far well partly somewhat straight".split())
# Phrases that describe the object itself; only directly after the noun ("a man with a hat").
ATTRIBUTIVE_PREPOSITIONS = frozenset("with without wearing holding carrying".split())
# Nouns of places in a picture: they head a location ("the top right corner") but are not objects.
PLACE_NOUNS = frozenset(
    "corner corners side sides edge edges part area half front back middle center centre foreground background "
    "distance hand quarter region border margin image picture photo photograph frame scene view".split()
)
# A phrase about only these says nothing about where the object is ("in the image").
FRAME_NOUNS = frozenset("image picture photo photograph frame scene view".split())
PRONOUNS = frozenset("it them him her each other one another".split())
POSSESSIVES = frozenset("his her its their my your our".split())
QUANTIFIERS = frozenset(ATTRIBUTE_LEXICON["count"]) | frozenset("some several many few two three four five".split())


def is_place(word: str) -> bool:
    if word in PLACE_NOUNS or attribute_class(word) == "position":
        return True
    parts = word.split("-")
    return len(parts) > 1 and all(p in PLACE_NOUNS or attribute_class(p) == "position" for p in parts)


def is_word(token: str) -> bool:
    return token[0].isalnum()


# ---------------------------------------------------------------- phrase grammar


@dataclass
class Phrase:
    start: int
    end: int  # exclusive
    words: list[str]
    object_heads: list[int] = field(default_factory=list)  # token indices of object nouns inside

    def informative(self) -> bool:
        """False for phrases that only name the picture itself ("in the image")."""
        heads = [w for w in self.words if w in PLACE_NOUNS or noun_lemma(w) or attribute_class(w) == "position"]
        return any(w not in FRAME_NOUNS for w in heads)


class PhraseParser:
    """Phrase grammar over one token list.

    object  := [determiner | possessive] modifier* head+        (stops at the first non-head after a head)
    phrase  := preposition object ["and" object if "between"] (chain)*
    chain   := ("of" | preposition | attributive) phrase | "," phrase-that-ends-the-clause
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.n = len(tokens)

    def at(self, index: int) -> str:
        return self.tokens[index] if 0 <= index < self.n else ""

    def ends_clause(self, index: int) -> bool:
        word = self.at(index)
        return word == "" or word in HARD_BOUNDARIES or word == COMMA or word in CONJUNCTIONS

    def is_head(self, word: str) -> bool:
        return bool(word) and is_word(word) and (noun_lemma(word) is not None or is_place(word) or word in PRONOUNS)

    def is_modifier(self, word: str) -> bool:
        return bool(word) and (attribute_class(word) is not None or word.isdigit())

    def parse_object(self, index: int) -> tuple[int, list[int]] | None:
        """(end, object-noun indices) of the object starting at `index`, or None."""
        j = index
        if self.at(j) in DETERMINERS or self.at(j) in POSSESSIVES:
            j += 1
        while self.is_modifier(self.at(j)) and not self.is_head(self.at(j)):
            j += 1
        if not self.is_head(self.at(j)):
            return None
        while self.is_head(self.at(j)):
            j += 1
        return j, [k for k in range(index, j) if noun_lemma(self.tokens[k])]

    def preposition_end(self, index: int, *, chained: bool) -> int | None:
        """End of the preposition starting at `index` ("above", "just above", "next to",
        "right next to", "left of"), or None when no preposition starts there."""
        word = self.at(index)
        if word in PREPOSITION_ADVERBS and self.at(index + 1) not in PREPOSITION_ADVERBS:
            inner = self.preposition_end(index + 1, chained=False)
            if inner is not None and self.at(index + 1) not in ATTRIBUTIVE_PREPOSITIONS:
                return inner
        if word in NEEDS_FOLLOWER:
            return index + 2 if self.at(index + 1) == NEEDS_FOLLOWER[word] else None
        if word in LOCATIVE_PREPOSITIONS or word in ATTRIBUTIVE_PREPOSITIONS or (chained and word == "of"):
            return index + 1
        return None

    def parse_phrase(self, index: int, *, chained: bool = False) -> Phrase | None:
        prep_end = self.preposition_end(index, chained=chained)
        if prep_end is None:
            return None
        parsed = self.parse_object(prep_end)
        if parsed is None:
            return None
        end, heads = parsed
        if self.at(index) == "between" and self.at(end) == "and":
            second = self.parse_object(end + 1)
            if second is not None:
                end, heads = second[0], heads + second[1]
        phrase = Phrase(index, end, [t for t in self.tokens[index:end] if is_word(t)], heads)
        while True:
            follow = self.continuation(phrase.end)
            if follow is None:
                return phrase
            phrase = Phrase(
                phrase.start, follow.end, phrase.words + follow.words, phrase.object_heads + follow.object_heads
            )

    def continuation(self, index: int) -> Phrase | None:
        """A phrase chained at `index`: directly ("... corner of the image") or after a
        comma, the latter only when the clause ends after it (otherwise the comma
        phrase is a fronted location of the next clause: ", on the right a square")."""
        if self.at(index) == COMMA:
            follow = self.parse_phrase(index + 1)
            return follow if follow is not None and self.ends_clause(follow.end) else None
        return self.parse_phrase(index, chained=True)


def location_words(short_expr: str, long_expr: str) -> list[str]:
    """Position words ("left", "top", ...; hyphenated ones split) of the phrases that
    place the expression's own object. Phrases that relate it to another object ("left
    of the pink star", "above the green square") are skipped: their words say where the
    object is relative to something else, not in the image."""
    short, long = tokenize(short_expr), tokenize(long_expr)
    tail = long[len(short) :] if long[: len(short)] == short else long
    parser = PhraseParser(tail)
    segments: list[list[str]] = [[]]
    for index, word in enumerate(tail):
        if parser.preposition_end(index, chained=False) is not None and segments[-1]:
            segments.append([])
        segments[-1].append(word)
    words: list[str] = []
    for segment in segments:
        if not any(noun_lemma(w) for w in segment):
            words.extend(part for w in segment for part in w.split("-") if attribute_class(part) == "position")
    return words
