"""The phrase grammar shared by the rules extractor and the demo detector teacher."""

from __future__ import annotations

from fgclip.text.phrases import location_words


def test_location_words_skip_relations_to_other_objects():
    def words(long: str) -> list[str]:
        return location_words("small yellow ring", long)

    assert words("small yellow ring left of the pink star at the bottom of the image") == ["bottom"]
    assert words("small yellow ring near the top-right corner above the green square") == ["top", "right"]
    assert words("small yellow ring to the right of the red circle") == []
    assert words("small yellow ring on the left") == ["left"]
