"""Referring expressions from a long caption: the object mentions a detector can box.

Each expression has a short form (attributes + head noun: "large red striped circle";
noun modifiers stay with their noun: "tree house") and a long form (the short form plus
the locative or relational phrase that places it: "large red striped circle on the left"). The paper parses captions with spaCy; the
`rules` extractor here needs nothing beyond the shared lexicon, so the pipeline runs
offline and in tests, and it is what the demo world's captions are written for. It is
general rather than tied to one sentence template: it handles fronted locatives ("On the
left there is ..."), verbs between an object and its location ("... sits near the top
right corner"), chained and comma-continued phrases, "between X and Y", plurals and
attributive phrases ("a man in a blue striped shirt", "a woman wearing a black hat").

Extractors are registered by name (`params.detect.extractor`); each reports an
`identity()` (name, version, rules hash) that goes into the stage fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fgclip.backends import BackendRegistry
from fgclip.config import DetectConfig
from fgclip.lexicon import ATTRIBUTE_LEXICON, DETERMINERS, OBJECT_NOUNS, attribute_class


@dataclass(frozen=True)
class Expression:
    """One referring expression: what the detector boxes and the trainer reads."""

    short_expr: str
    long_expr: str


class ExpressionExtractor(ABC):
    """Turns one long caption into its referring expressions, in caption order."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version and a hash of the rules or model: part of the stage fingerprint."""

    @abstractmethod
    def extract(self, caption: str) -> list[Expression]:
        """The de-duplicated expressions of `caption` (possibly none)."""

    def extract_many(self, captions: Sequence[str]) -> list[list[Expression]]:
        """`extract` for each caption; a model-based extractor overrides it to batch."""
        return [self.extract(caption) for caption in captions]


ExtractorFactory = Callable[[DetectConfig], ExpressionExtractor]
EXTRACTORS: BackendRegistry[ExtractorFactory] = BackendRegistry("expression extractor")
register_extractor = EXTRACTORS.register


def build_extractor(config: DetectConfig) -> ExpressionExtractor:
    return EXTRACTORS.factory(config.extractor)(config)


def rules_digest(*tables: Any) -> str:
    """A short stable hash of rule tables (sets are sorted), for `identity()`."""
    def plain(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    payload = json.dumps([plain(t) for t in tables], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- words

TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[.,;:!?]")


def tokenize(text: str) -> list[str]:
    """Lowercased words (hyphenated words stay whole) and clause punctuation; other
    symbols (quotes, brackets) are dropped."""
    return TOKEN_PATTERN.findall(text.lower())


def noun_lemma(word: str) -> str | None:
    """The lexicon object noun a word is (singular or a regular plural), else None."""
    if word in OBJECT_NOUNS:
        return word
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in OBJECT_NOUNS:
            return word[: -len(suffix)] + replacement
    return None


def head_noun(text: str) -> str | None:
    """The head noun of an expression as written: its last object noun, else its last
    word; None when it has no words."""
    words = [t for t in tokenize(text) if t[0].isalnum()]
    for word in reversed(words):
        if noun_lemma(word):
            return word
    return words[-1] if words else None


# ---------------------------------------------------------------- rule tables

# Attribute classes that form the modifier run of a short expression.
MODIFIER_CLASSES = ("size", "colour", "pattern", "material")
HARD_BOUNDARIES = frozenset({".", "!", "?", ";", ":"})
COMMA = ","
# Words that start a new clause: a location after them belongs to something else.
CONJUNCTIONS = frozenset("and but or nor while whereas which who whom whose where that although though because so then yet".split())
# Prepositions that place an object; allowed after a few verb words ("sits near ...").
LOCATIVE_PREPOSITIONS = frozenset(
    "on in at near above below under beneath underneath beside behind between inside over by to along across "
    "against around among amid within atop toward towards outside alongside opposite from into onto beyond".split())
# "next to", "left of": these only place something when followed by the second word.
NEEDS_FOLLOWER = {"next": "to", "close": "to", "left": "of", "right": "of", "ahead": "of"}
# Degree words that may lead a preposition ("just above", "directly below").
PREPOSITION_ADVERBS = frozenset("just directly slightly immediately right far well partly somewhat straight".split())
# Phrases that describe the object itself; only directly after the noun ("a man with a hat").
ATTRIBUTIVE_PREPOSITIONS = frozenset("with without wearing holding carrying".split())
# Nouns of places in a picture: they head a location ("the top right corner") but are not objects.
PLACE_NOUNS = frozenset(
    "corner corners side sides edge edges part area half front back middle center centre foreground background "
    "distance hand quarter region border margin image picture photo photograph frame scene view".split())
# A phrase about only these says nothing about where the object is ("in the image").
FRAME_NOUNS = frozenset("image picture photo photograph frame scene view".split())
PRONOUNS = frozenset("it them him her each other one another".split())
POSSESSIVES = frozenset("his her its their my your our".split())
QUANTIFIERS = frozenset(ATTRIBUTE_LEXICON["count"]) | frozenset("some several many few two three four five".split())


def _is_place(word: str) -> bool:
    if word in PLACE_NOUNS or attribute_class(word) == "position":
        return True
    parts = word.split("-")
    return len(parts) > 1 and all(p in PLACE_NOUNS or attribute_class(p) == "position" for p in parts)


def _is_word(token: str) -> bool:
    return token[0].isalnum()


# ---------------------------------------------------------------- phrase grammar

@dataclass
class _Phrase:
    start: int
    end: int  # exclusive
    words: list[str]
    object_heads: list[int] = field(default_factory=list)  # token indices of object nouns inside

    def informative(self) -> bool:
        """False for phrases that only name the picture itself ("in the image")."""
        heads = [w for w in self.words if w in PLACE_NOUNS or noun_lemma(w) or attribute_class(w) == "position"]
        return any(w not in FRAME_NOUNS for w in heads)


class _Parser:
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
        return bool(word) and _is_word(word) and (noun_lemma(word) is not None or _is_place(word) or word in PRONOUNS)

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

    def parse_phrase(self, index: int, *, chained: bool = False) -> _Phrase | None:
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
        phrase = _Phrase(index, end, [t for t in self.tokens[index:end] if _is_word(t)], heads)
        while True:
            follow = self.continuation(phrase.end)
            if follow is None:
                return phrase
            phrase = _Phrase(phrase.start, follow.end, phrase.words + follow.words, phrase.object_heads + follow.object_heads)

    def continuation(self, index: int) -> _Phrase | None:
        """A phrase chained at `index`: directly ("... corner of the image") or after a
        comma, the latter only when the clause ends after it (otherwise the comma
        phrase is a fronted location of the next clause: ", on the right a square")."""
        if self.at(index) == COMMA:
            follow = self.parse_phrase(index + 1)
            return follow if follow is not None and self.ends_clause(follow.end) else None
        return self.parse_phrase(index, chained=True)


def location_words(expression: Expression) -> list[str]:
    """Position words ("left", "top", ...; hyphenated ones split) of the phrases that
    place the expression's own object. Phrases that relate it to another object ("left
    of the pink star", "above the green square") are skipped: their words say where the
    object is relative to something else, not in the image."""
    short, long = tokenize(expression.short_expr), tokenize(expression.long_expr)
    tail = long[len(short):] if long[: len(short)] == short else long
    parser = _Parser(tail)
    segments: list[list[str]] = [[]]
    for index, word in enumerate(tail):
        if parser.preposition_end(index, chained=False) is not None and segments[-1]:
            segments.append([])
        segments[-1].append(word)
    words = []
    for segment in segments:
        if not any(noun_lemma(w) for w in segment):
            words.extend(part for w in segment for part in w.split("-") if attribute_class(part) == "position")
    return words


# ---------------------------------------------------------------- the rules extractor

@dataclass
class _Mention:
    head_index: int
    attributes: list[str]  # attribute words and noun modifiers before the head, in order
    head: str
    relation: bool = False  # inside another object's location phrase
    phrases: list[_Phrase] = field(default_factory=list)

    @property
    def short(self) -> str:
        return " ".join(self.attributes + [self.head])

    @property
    def long(self) -> str:
        words = [self.short]
        for phrase in self.phrases:
            if phrase.informative():
                words.extend(phrase.words)
        return " ".join(words)


class RulesExtractor(ExpressionExtractor):
    """Lexicon-driven extraction; see the module docstring for what it handles."""

    name = "rules"
    version = "1"

    def __init__(self, max_gap: int) -> None:
        self.max_gap = max_gap

    def identity(self) -> dict[str, Any]:
        tables = (MODIFIER_CLASSES, HARD_BOUNDARIES, CONJUNCTIONS, LOCATIVE_PREPOSITIONS, NEEDS_FOLLOWER, PREPOSITION_ADVERBS,
                  ATTRIBUTIVE_PREPOSITIONS, PLACE_NOUNS, FRAME_NOUNS, PRONOUNS, POSSESSIVES, QUANTIFIERS,
                  ATTRIBUTE_LEXICON, OBJECT_NOUNS, DETERMINERS, self.max_gap)
        return {"name": self.name, "version": self.version, "rules_hash": rules_digest(*tables)}

    def extract(self, caption: str) -> list[Expression]:
        tokens = tokenize(caption)
        parser = _Parser(tokens)
        mentions = self._mentions(tokens)
        by_head = {m.head_index: m for m in mentions}
        # Fronted locations first: their objects are relation mentions, and they are
        # attached to the first object named after them in the same clause.
        for phrase, target in self._fronted(parser, mentions):
            for index in phrase.object_heads:
                if index in by_head:
                    by_head[index].relation = True
            target.phrases.append(phrase)
        for mention in mentions:  # left to right: a phrase only reaches rightwards
            if mention.relation:
                continue
            phrase = self._following(parser, mention.head_index)
            if phrase is not None:
                mention.phrases.insert(0, phrase)
                for index in phrase.object_heads:
                    if index in by_head:
                        by_head[index].relation = True
        return deduplicate(self._keep(mentions))

    def _mentions(self, tokens: list[str]) -> list[_Mention]:
        mentions = []
        at = _Parser(tokens).at

        def modifies_next(j: int) -> bool:
            # A noun directly before another modifies it ("tree house") unless that
            # other one is a verb taking an object ("people cross the street").
            return bool(noun_lemma(at(j)) and noun_lemma(at(j + 1))) and not (at(j + 2) in DETERMINERS or at(j + 2) in POSSESSIVES)

        for index, word in enumerate(tokens):
            if noun_lemma(word) is None or modifies_next(index):
                continue
            start = index
            while start > 0 and modifies_next(start - 1):
                start -= 1
            while start > 0 and attribute_class(tokens[start - 1]) in MODIFIER_CLASSES:
                start -= 1
            attributes = tokens[start:index]
            before = tokens[start - 1] if start > 0 else ""
            # A bare noun after another word is more likely a verb ("people cross the
            # street") than an object, unless it is plural or follows "of".
            introduced = before in DETERMINERS or before in POSSESSIVES or before in QUANTIFIERS
            clause_start = before == "" or before in HARD_BOUNDARIES or before == COMMA
            if not (attributes or introduced or clause_start or word != noun_lemma(word) or before == "of"):
                continue
            mentions.append(_Mention(index, attributes, word))
        return mentions

    def _fronted(self, parser: _Parser, mentions: list[_Mention]) -> Iterable[tuple[_Phrase, _Mention]]:
        heads = {m.head_index: m for m in mentions}
        for index, word in enumerate(parser.tokens):
            previous = parser.at(index - 1)
            if index > 0 and not (previous in HARD_BOUNDARIES or previous == COMMA or previous in CONJUNCTIONS):
                continue
            phrase = parser.parse_phrase(index)
            if phrase is None:
                continue
            inside = set(phrase.object_heads)
            j = phrase.end + (1 if parser.at(phrase.end) == COMMA else 0)
            while j < parser.n and not parser.ends_clause(j):
                if j in heads and j not in inside:
                    yield phrase, heads[j]
                    break
                j += 1

    def _following(self, parser: _Parser, head_index: int) -> _Phrase | None:
        """The location after a noun: directly, after up to `max_gap` verb-like words,
        or after a comma when it closes the clause."""
        index = head_index + 1
        if parser.at(index) in ATTRIBUTIVE_PREPOSITIONS:
            return parser.parse_phrase(index)
        for _ in range(self.max_gap + 1):
            word = parser.at(index)
            if word == COMMA:
                return parser.continuation(index)
            if word not in ATTRIBUTIVE_PREPOSITIONS and parser.preposition_end(index, chained=False) is not None:
                return parser.parse_phrase(index)
            if (word == "" or word in HARD_BOUNDARIES or word in CONJUNCTIONS or word in DETERMINERS
                    or attribute_class(word) is not None or noun_lemma(word) or word in ATTRIBUTIVE_PREPOSITIONS):
                return None
            index += 1
        return None

    @staticmethod
    def _keep(mentions: list[_Mention]) -> list[_Mention]:
        """Drop a relation mention ("above the green square") when the same object is
        described elsewhere: a main mention of the same noun with at least its attributes."""
        main = [m for m in mentions if not m.relation]
        kept = []
        for mention in mentions:
            if mention.relation:
                lemma = noun_lemma(mention.head)
                if any(noun_lemma(m.head) == lemma and set(mention.attributes) <= set(m.attributes) for m in main):
                    continue
                mention.phrases = []  # its location phrase belongs to the other object
            kept.append(mention)
        return kept


class Mention(Protocol):
    """What `deduplicate` reads of a mention, whichever extractor found it."""

    @property
    def short(self) -> str: ...

    @property
    def long(self) -> str: ...


def deduplicate(mentions: Sequence[Mention]) -> list[Expression]:
    """One expression per distinct long form; a bare mention (long == short) is dropped
    when the same short form also appears with a location."""
    located = {m.short for m in mentions if m.long != m.short}
    seen: set[str] = set()
    out = []
    for mention in mentions:
        if mention.long == mention.short and mention.short in located:
            continue
        if mention.long in seen:
            continue
        seen.add(mention.long)
        out.append(Expression(mention.short, mention.long))
    return out


@register_extractor("rules")
def _rules_factory(config: DetectConfig) -> ExpressionExtractor:
    return RulesExtractor(max_gap=config.extractor_max_gap)


@register_extractor("spacy")
def _spacy_factory(config: DetectConfig) -> ExpressionExtractor:
    from fgclip.vision.spacy_extractor import spacy_or_rules  # spaCy only when this extractor runs

    return spacy_or_rules(config)
