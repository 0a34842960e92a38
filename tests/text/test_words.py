"""Word helpers: tokens, object-noun lemmas, head nouns and the rules digest."""

from __future__ import annotations

from fgclip.text.lexicon import ADJECTIVE_ORDER, ATTRIBUTE_LEXICON
from fgclip.text.words import head_noun, noun_lemma, rules_digest, tokenize


def test_tokens_keep_hyphenated_words_and_clause_punctuation() -> None:
    assert tokenize('A medium-sized, "blue" star; left.') == [
        "a",
        "medium-sized",
        ",",
        "blue",
        "star",
        ";",
        "left",
        ".",
    ]


def test_object_nouns_are_found_in_singular_and_regular_plurals() -> None:
    assert noun_lemma("circles") == "circle"
    assert noun_lemma("boxes") == "box"
    assert noun_lemma("red") is None


def test_the_head_noun_is_the_last_object_noun_as_written() -> None:
    assert head_noun("two large red circles") == "circles"
    assert head_noun("a star next to the square") == "square"
    assert head_noun("something shiny") == "shiny"
    assert head_noun("...") is None


def test_the_rules_digest_is_stable_and_sees_every_change() -> None:
    tables = ({"b", "a"}, {"x": (1, 2)}, ["p"])
    assert rules_digest(*tables) == rules_digest({"a", "b"}, {"x": [1, 2]}, ["p"])
    assert rules_digest(*tables) != rules_digest({"a", "c"}, {"x": (1, 2)}, ["p"])


def test_every_attribute_class_of_the_lexicon_has_its_place_in_adjective_order() -> None:
    assert set(ADJECTIVE_ORDER) <= set(ATTRIBUTE_LEXICON)
