"""The demo caption teacher: varied, natural long captions written from the demo world's
truth, with a controlled error rate (the recaption backend `demo` serves them).

Every object mention has the form
    [a|an|the] <size> <colour> <pattern> <shape>
followed optionally by a position or relation phrase; the pattern is always written,
"solid" included, so an exact mention names all four attributes and a rule-based
extractor (a maximal run of lexicon words before an OBJECT_NOUNS head) recovers it.
A relation phrase refers to another mentioned object by its shortest unambiguous
description ("above the green square"). Backdrops are worded without object nouns.
Everything is seeded per (seed, key, object), so a caption never depends on the order of
samples or on batching.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fgclip.core.seeding import seeded_random
from fgclip.demo.config import DemoRecaptionTeacher
from fgclip.demo.truth import TRUTH_ATTRIBUTES
from fgclip.text.lexicon import ATTRIBUTE_LEXICON, COLOURS, PATTERNS, SIZES

#: The random stream captions are drawn from. It is the stage's name, as it always was:
#: another name would reword every caption of an existing dataset.
SEED_STREAM = "recaption"
TEACHER_VERSION = "1"
ATTRIBUTE_VOCAB: dict[str, tuple[str, ...]] = {"size": SIZES, "colour": tuple(COLOURS), "pattern": PATTERNS}
# Shortest reference first; the first that no other mentioned object of the same shape shares wins.
REFERENCE_ATTRIBUTES: tuple[tuple[str, ...], ...] = (
    ("colour",),
    ("size", "colour"),
    ("colour", "pattern"),
    TRUTH_ATTRIBUTES,
)
COUNT_WORDS = ATTRIBUTE_LEXICON["count"]  # "one", "two", ...
VOWELS = "aeiou"

SCENE_TEMPLATES: tuple[str, ...] = (
    "This image shows {things} on {backdrop}.",
    "The picture contains {things} drawn over {backdrop}.",
    "{backdrop}, with {things} drawn on top of it.",
    "A simple graphic of {things} placed on {backdrop}.",
)
EMPTY_SCENE_TEMPLATES: tuple[str, ...] = ("This image shows {backdrop}.", "The picture is {backdrop}.")
SHAPE_WORDS: tuple[str, ...] = ("shapes", "geometric shapes", "figures")
PLAIN_BACKDROPS: tuple[str, ...] = (
    "a plain light {0} background",
    "a flat light {0} backdrop",
    "an even light {0} background",
)
GRADIENT_BACKDROPS: tuple[str, ...] = ("{description}", "a soft light {0} and light {1} gradient")
OBJECT_TEMPLATES: tuple[str, ...] = (
    "{where} there is {np}{rel}.",
    "{np} sits {where}{rel}.",
    "{np} is placed {where}{rel}.",
    "{where}, you can see {np}{rel}.",
    "There is {np} {where}{rel}.",
    "{np} appears {where}{rel}.",
)
LEADING_RELATION_TEMPLATE = "{rel}, there is {np}."
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "near the upper left corner", "at the top left"),
    "top": ("near the top", "at the top of the image", "along the upper edge"),
    "top right": ("in the top right corner", "near the upper right corner", "at the top right"),
    "left": ("on the left", "on the left side", "toward the left edge"),
    "center": ("in the center", "in the middle of the image", "near the center"),
    "right": ("on the right", "on the right side", "toward the right edge"),
    "bottom left": ("in the bottom left corner", "near the lower left corner", "at the bottom left"),
    "bottom": ("near the bottom", "at the bottom of the image", "along the lower edge"),
    "bottom right": ("in the bottom right corner", "near the lower right corner", "at the bottom right"),
}
UNKNOWN_POSITION_PHRASES: tuple[str, ...] = ("in the image",)
PREDICATE_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "just above"),
    "below": ("below", "just below"),
}
INVERSE_PREDICATE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def rules_hash() -> str:
    rules = [
        SCENE_TEMPLATES,
        EMPTY_SCENE_TEMPLATES,
        SHAPE_WORDS,
        PLAIN_BACKDROPS,
        GRADIENT_BACKDROPS,
        OBJECT_TEMPLATES,
        LEADING_RELATION_TEMPLATE,
        POSITION_PHRASES,
        UNKNOWN_POSITION_PHRASES,
        PREDICATE_PHRASES,
        TRUTH_ATTRIBUTES,
        ATTRIBUTE_VOCAB,
        REFERENCE_ATTRIBUTES,
    ]
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Mention:
    """An object as the teacher describes it (possibly with one wrong attribute)."""

    id: int
    shape: str
    position: str
    words: dict[str, str] = field(hash=False)

    def noun_phrase(self, attributes: Sequence[str] = TRUTH_ATTRIBUTES, article: str | None = None) -> str:
        body = " ".join([*(self.words[name] for name in TRUTH_ATTRIBUTES if name in attributes), self.shape])
        if article is None:
            article = "an" if body[0] in VOWELS else "a"
        return f"{article} {body}"


def teacher_mention(obj: dict[str, Any], key: str, seed: int, config: DemoRecaptionTeacher) -> Mention | None:
    """The teacher's view of one truth object: None when missed, else its words, one maybe wrong.

    Seeded per (seed, key, object id), so each object's fate is independent of the
    others, of the order of samples and of any other part of the caption.
    """
    rng = seeded_random(seed, SEED_STREAM, key, "object", obj["id"])
    missed = rng.random() < config.miss_rate
    wrong = rng.random() < config.attribute_error_rate
    attribute = rng.choice(TRUTH_ATTRIBUTES)
    if missed:
        return None
    words = {name: obj[name] for name in TRUTH_ATTRIBUTES}
    if wrong:
        words[attribute] = rng.choice([word for word in ATTRIBUTE_VOCAB[attribute] if word != obj[attribute]])
    return Mention(obj["id"], obj["shape"], obj["position"], words)


def _reference(mention: Mention, mentions: Sequence[Mention]) -> str:
    """The shortest "the ..." description that no other mentioned object of that shape shares."""
    rivals = [m for m in mentions if m.id != mention.id and m.shape == mention.shape]
    for attributes in REFERENCE_ATTRIBUTES:
        if all(any(r.words[a] != mention.words[a] for a in attributes) for r in rivals):
            return mention.noun_phrase(attributes, "the")
    return mention.noun_phrase(TRUTH_ATTRIBUTES, "the")


def _backdrop(background: dict[str, Any], rng: random.Random) -> str:
    kind, colours = background.get("kind"), background.get("colours") or []
    if kind == "plain" and colours:
        return rng.choice(PLAIN_BACKDROPS).format(*colours)
    if kind == "gradient" and len(colours) >= 2:
        return rng.choice(GRADIENT_BACKDROPS).format(*colours, description=background.get("description", ""))
    return str(background.get("description") or "a background")


def _things(count: int, rng: random.Random) -> str:
    noun = rng.choice(SHAPE_WORDS)
    if count == 1:
        return f"a single {noun[:-1]}"  # "shapes" -> "shape"
    return f"{COUNT_WORDS[count - 1] if count <= len(COUNT_WORDS) else count} {noun}"


def _relation_phrase(
    mention: Mention,
    by_id: dict[int, Mention],
    mentions: Sequence[Mention],
    relations: Sequence[dict[str, Any]],
    rng: random.Random,
) -> str | None:
    """ "above the green square" for a relation between `mention` and another mentioned object."""
    options = []
    for relation in relations:
        predicate = relation.get("predicate")
        if predicate not in PREDICATE_PHRASES:
            continue
        if relation.get("subject") == mention.id and relation.get("object") in by_id:
            options.append((predicate, by_id[relation["object"]]))
        elif relation.get("object") == mention.id and relation.get("subject") in by_id:
            options.append((INVERSE_PREDICATE[predicate], by_id[relation["subject"]]))
    if not options:
        return None
    predicate, other = rng.choice(options)
    return f"{rng.choice(PREDICATE_PHRASES[predicate])} {_reference(other, mentions)}"


def _capitalised(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def describe(truth: dict[str, Any], key: str, seed: int, config: DemoRecaptionTeacher) -> str:
    """The teacher's long caption of one truth record (pure, deterministic)."""
    mentions = [m for m in (teacher_mention(obj, key, seed, config) for obj in truth["objects"]) if m is not None]
    rng = seeded_random(seed, SEED_STREAM, key, "caption")
    backdrop = _backdrop(truth.get("background") or {}, rng)
    if mentions:
        scene = rng.choice(SCENE_TEMPLATES).format(things=_things(len(mentions), rng), backdrop=backdrop)
    else:
        scene = rng.choice(EMPTY_SCENE_TEMPLATES).format(backdrop=backdrop)
    sentences = [_capitalised(scene)]
    by_id = {m.id: m for m in mentions}
    order = list(mentions)
    rng.shuffle(order)
    for mention in order:
        noun_phrase = mention.noun_phrase()
        where = rng.choice(POSITION_PHRASES.get(mention.position, UNKNOWN_POSITION_PHRASES))
        wants_relation = rng.random() < config.relation_rate
        leading = rng.random() < 1 / (len(OBJECT_TEMPLATES) + 1)  # as likely as any one template
        template = rng.choice(OBJECT_TEMPLATES)
        relation = (
            _relation_phrase(mention, by_id, mentions, truth.get("relations") or [], rng) if wants_relation else None
        )
        if relation is not None and leading:
            sentence = LEADING_RELATION_TEMPLATE.format(rel=relation, np=noun_phrase)
        else:
            sentence = template.format(where=where, np=noun_phrase, rel=f", {relation}" if relation else "")
        sentences.append(_capitalised(sentence))
    return " ".join(sentences)
