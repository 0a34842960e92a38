"""detect extractor `rules`: referring expressions from the shared lexicon and phrase
grammar (`fgclip.text.phrases`), with nothing to install.

The paper parses captions with spaCy; this extractor lets the pipeline run offline and in
tests, and it is what the demo world's captions are written for. It is general rather
than tied to one sentence template: it handles fronted locatives ("On the left there is
..."), verbs between an object and its location ("... sits near the top right corner"),
chained and comma-continued phrases, "between X and Y", plurals and attributive phrases
("a man in a blue striped shirt", "a woman wearing a black hat").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import Expression, ExpressionExtractor, deduplicate
from fgclip.text.lexicon import ATTRIBUTE_LEXICON, DETERMINERS, OBJECT_NOUNS, attribute_class
from fgclip.text.phrases import (ATTRIBUTIVE_PREPOSITIONS, COMMA, CONJUNCTIONS, FRAME_NOUNS, HARD_BOUNDARIES,
                                 LOCATIVE_PREPOSITIONS, MODIFIER_CLASSES, NEEDS_FOLLOWER, PLACE_NOUNS, POSSESSIVES,
                                 PREPOSITION_ADVERBS, PRONOUNS, QUANTIFIERS, Phrase, PhraseParser)
from fgclip.text.words import noun_lemma, rules_digest, tokenize


@dataclass
class _Mention:
    head_index: int
    attributes: list[str]  # attribute words and noun modifiers before the head, in order
    head: str
    relation: bool = False  # inside another object's location phrase
    phrases: list[Phrase] = field(default_factory=list)

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
        parser = PhraseParser(tokens)
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
            following = self._following(parser, mention.head_index)
            if following is not None:
                mention.phrases.insert(0, following)
                for index in following.object_heads:
                    if index in by_head:
                        by_head[index].relation = True
        return deduplicate(self._keep(mentions))

    def _mentions(self, tokens: list[str]) -> list[_Mention]:
        mentions = []
        at = PhraseParser(tokens).at

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

    def _fronted(self, parser: PhraseParser, mentions: list[_Mention]) -> Iterable[tuple[Phrase, _Mention]]:
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

    def _following(self, parser: PhraseParser, head_index: int) -> Phrase | None:
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



def build(config: DetectConfig) -> ExpressionExtractor:
    return RulesExtractor(max_gap=config.extractor_max_gap)
