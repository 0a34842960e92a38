"""Reading phrase lists out of LLM replies, then the negatives post-processing on them."""

from __future__ import annotations

import pytest

from fgclip.data.negatives.validation import select_valid, validate_negatives
from fgclip.llm.replies import read_phrases

POSITIVE = "large red striped circle"
WANTED = ["large blue striped circle", "small red striped circle", "large red dotted circle"]


@pytest.mark.parametrize(
    ("reply", "form"),
    [
        ('["large blue striped circle", "small red striped circle", "large red dotted circle"]', "json_array"),
        (
            '```json\n["large blue striped circle", "small red striped circle", "large red dotted circle"]\n```',
            "json_array",
        ),
        (
            "Sure! Here they are:\n"
            '["large blue striped circle", "small red striped circle", "large red dotted circle"]\n'
            "Each one changes a single attribute [colour, size or pattern].",
            "json_array",
        ),
        (
            '{"negatives": ["large blue striped circle", "small red striped circle", "large red dotted circle"]}',
            "json_object",
        ),
        (
            '{"1": "large blue striped circle", "2": "small red striped circle", "3": "large red dotted circle"}',
            "json_object",
        ),
        (
            '[{"description": "large blue striped circle"}, {"description": "small red striped circle"}, '
            '{"description": "large red dotted circle"}]',
            "json_array",
        ),
        ('["large blue striped circle", "small red striped circle", "large red dotted circle", "large gre', "quoted"),
        ("['large blue striped circle', 'small red striped circle', 'large red dotted circle']", "quoted"),
        (
            "Here are the descriptions:\n1. Large blue striped circle\n2. Small red striped circle\n"
            "3) large red dotted circle.\nI hope this helps!",
            "list_lines",
        ),
        ("- large blue striped circle\n- small red striped circle\n* large red dotted circle", "list_lines"),
        ("large blue striped circle, small red striped circle, large red dotted circle", "lines"),
    ],
)
def test_every_reply_shape_gives_the_same_negatives(reply, form):
    phrases = read_phrases(reply)
    assert phrases.form == form
    assert select_valid(POSITIVE, phrases.items, 3) == WANTED


def test_echo_duplicates_and_changed_nouns_are_filtered_not_counted():
    reply = (
        '["large red striped circle", "Large Blue Striped Circle", "large blue striped circle", '
        '"large red striped square", "small red striped circle", "", 7, "large red dotted circle"]'
    )
    negatives = select_valid(POSITIVE, read_phrases(reply).items, 3)
    assert negatives == WANTED
    assert validate_negatives(POSITIVE, negatives, 3) == []


def test_too_few_is_reported_as_too_few():
    negatives = select_valid(POSITIVE, read_phrases('["large blue striped circle"]').items, 3)
    assert [line.split(":")[0] for line in validate_negatives(POSITIVE, negatives, 3)] == ["wrong_count"]


def test_prose_without_a_list_yields_nothing_usable():
    phrases = read_phrases("I am sorry, but I cannot help with that request.")
    assert phrases.form == "lines"
    assert select_valid(POSITIVE, phrases.items, 3) == []
    assert read_phrases("   ").form == "none"


def test_json_inside_strings_and_escapes():
    phrases = read_phrases(r'["large \"blue\" striped circle", "small red striped circle"]')
    assert phrases.form == "json_array"
    assert select_valid(POSITIVE, phrases.items, 2) == ["large blue striped circle", "small red striped circle"]
