"""The rules expression extractor on demo-style and everyday captions."""

from __future__ import annotations

import pytest

from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import EXTRACTORS, Expression, build_extractor
from fgclip.data.detect.extractors.rules import RulesExtractor
from fgclip.text.words import head_noun, noun_lemma, tokenize


@pytest.fixture(scope="module")
def extract():
    return build_extractor(DetectConfig()).extract


def pairs(expressions: list[Expression]) -> list[tuple[str, str]]:
    return [(e.short_expr, e.long_expr) for e in expressions]


def test_demo_caption_fronted_and_following_locations(extract):
    caption = ("On the left there is a large red striped circle. "
               "A small blue dotted star sits near the top right corner, above the green square.")
    assert pairs(extract(caption)) == [
        ("large red striped circle", "large red striped circle on the left"),
        ("small blue dotted star", "small blue dotted star near the top right corner above the green square"),
        # named only inside the star's relation phrase: still an object to box
        ("green square", "green square"),
    ]


def test_relation_object_described_elsewhere_is_not_repeated(extract):
    caption = ("A small blue dotted star sits near the top right corner, above the green square. "
               "At the bottom there is a small green square.")
    assert pairs(extract(caption)) == [
        ("small blue dotted star", "small blue dotted star near the top right corner above the green square"),
        ("small green square", "small green square at the bottom"),
    ]


def test_relation_object_with_other_attributes_is_another_object(extract):
    caption = "A red star is above the green square. A large yellow square is on the right."
    shorts = [e.short_expr for e in extract(caption)]
    assert shorts == ["red star", "green square", "large yellow square"]


def test_adverb_led_and_bare_left_of_relations(extract):
    caption = ("There is a small white solid triangle in the top left corner, just above the white hexagon. "
               "Near the lower left corner, you can see a large white checkered hexagon, left of the triangle.")
    assert pairs(extract(caption)) == [
        ("small white solid triangle", "small white solid triangle in the top left corner just above the white hexagon"),
        ("large white checkered hexagon", "large white checkered hexagon left of the triangle near the lower left corner"),
    ]
    assert pairs(extract("Just above the ring, there is a small pink star. A red circle sits right next to it."))[1:] == [
        ("small pink star", "small pink star just above the ring"), ("red circle", "red circle right next to it")]
    # "right" alone is a place, not a preposition
    assert pairs(extract("The star is on the right.")) == [("star", "star on the right")]


def test_everyday_caption_with_attributive_phrase(extract):
    assert pairs(extract("a man in a blue striped shirt holds a red umbrella")) == [
        ("man", "man in a blue striped shirt"),
        ("blue striped shirt", "blue striped shirt"),
        ("red umbrella", "red umbrella"),
    ]
    assert pairs(extract("A woman wearing a black hat walks a brown dog."))[:2] == [
        ("woman", "woman wearing a black hat"), ("black hat", "black hat")]


def test_list_caption_commas_and_conjunctions_end_phrases(extract):
    caption = ("The image shows a large red striped circle on the left, a small blue dotted star near the "
               "top right corner, and a green square at the bottom.")
    assert pairs(extract(caption)) == [
        ("large red striped circle", "large red striped circle on the left"),
        ("small blue dotted star", "small blue dotted star near the top right corner"),
        ("green square", "green square at the bottom"),
    ]


def test_comma_phrase_that_fronts_the_next_clause_is_not_a_continuation(extract):
    caption = "On the left there is a red circle, on the right a blue square."
    assert pairs(extract(caption)) == [("red circle", "red circle on the left"), ("blue square", "blue square on the right")]


def test_between_chained_of_phrases_and_hyphenated_places(extract):
    assert pairs(extract("Between the red circle and the blue square there is a yellow star."))[-1] == (
        "yellow star", "yellow star between the red circle and the blue square")
    assert pairs(extract("A green square is to the right of the red circle."))[0] == (
        "green square", "green square to the right of the red circle")
    assert pairs(extract("Near the top-right corner sits a small purple checkered hexagon."))[0] == (
        "small purple checkered hexagon", "small purple checkered hexagon near the top-right corner")


def test_phrases_about_the_picture_itself_are_dropped(extract):
    assert pairs(extract("In the image, a red circle is in the middle of the picture.")) == [
        ("red circle", "red circle in the middle of the picture")]
    assert pairs(extract("A red ring appears in this photo.")) == [("red ring", "red ring")]


def test_deduplication_prefers_the_located_mention(extract):
    assert pairs(extract("There is a red circle. The red circle is on the left.")) == [("red circle", "red circle on the left")]
    # two objects with the same description but different places stay apart
    assert pairs(extract("A red circle is on the left and a red circle is on the right.")) == [
        ("red circle", "red circle on the left"), ("red circle", "red circle on the right")]
    assert pairs(extract("A blue star. A blue star.")) == [("blue star", "blue star")]


def test_plurals_compounds_and_verb_homographs(extract):
    shorts = [e.short_expr for e in extract("Two dogs play with a ball. People cross the street near a tree house.")]
    assert shorts == ["dogs", "ball", "people", "street", "tree house"]
    assert [e.short_expr for e in extract("a square table with a blue cup")] == ["square table", "blue cup"]


def test_captions_without_objects_give_nothing(extract):
    assert extract("") == []
    assert extract("A bright and sunny afternoon, nothing much happening.") == []


def test_identity_is_stable_and_tracks_rules():
    a, b = RulesExtractor(3).identity(), RulesExtractor(3).identity()
    assert a == b and a["name"] == "rules" and len(a["rules_hash"]) == 16
    assert RulesExtractor(1).identity()["rules_hash"] != a["rules_hash"]


def test_gap_limit_controls_how_far_a_location_may_be():
    caption = "A red circle can be seen clearly on the left."
    assert RulesExtractor(4).extract(caption)[0].long_expr == "red circle on the left"
    assert RulesExtractor(1).extract(caption)[0].long_expr == "red circle"


def test_registry():
    assert isinstance(build_extractor(DetectConfig()), RulesExtractor)
    assert "rules" in EXTRACTORS
    with pytest.raises(KeyError, match="unknown expression extractor"):
        build_extractor(DetectConfig.model_construct(extractor="nope"))


def test_word_helpers():
    assert tokenize('A "red", (striped) top-right circle!') == ["a", "red", ",", "striped", "top-right", "circle", "!"]
    assert noun_lemma("circles") == "circle" and noun_lemma("boxes") == "box" and noun_lemma("red") is None
    assert head_noun("large red striped circle") == "circle"
    assert head_noun("man in a blue shirt") == "shirt"
    assert head_noun("fluffy thing") == "thing"
    assert head_noun("  ") is None
