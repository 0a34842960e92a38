"""Attribute and object vocabularies shared by the demo world, the caption teacher,
the rule-based expression extractor and the rule-based negative generator.

Keeping them in one place is what makes the demo world's ground truth, its captions
and the negatives agree on words: a colour the world draws is a colour the negative
generator can swap.
"""

from __future__ import annotations

# Colours the demo world draws, with their RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 220),
    "yellow": (240, 210, 30),
    "orange": (255, 127, 14),
    "purple": (148, 70, 189),
    "pink": (247, 129, 191),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (140, 86, 55),
    "gray": (128, 128, 128),
    "cyan": (23, 200, 210),
}

# Fill patterns the demo world draws. "solid" is drawn as a flat fill.
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

# Shapes the demo world draws; each name is also the object's head noun.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "ring", "cross")

# Size words by relative object size in the demo world.
SIZES: tuple[str, ...] = ("small", "large")

# The order English puts attribute classes in before a noun: "two large red striped wooden
# boxes". Words a rule adds go where a native speaker would put them.
ADJECTIVE_ORDER: tuple[str, ...] = ("count", "size", "colour", "pattern", "material")

# Attribute lexicons for hard negatives: each is a closed class of interchangeable words.
# Swapping a word for another of the same class keeps the sentence grammatical and the
# object noun intact, which is what makes a negative "hard".
ATTRIBUTE_LEXICON: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS) + ("gold", "silver", "beige", "navy", "maroon", "turquoise"),
    "material": ("wooden", "metal", "plastic", "glass", "leather", "stone", "paper", "woollen", "ceramic", "rubber"),
    "pattern": PATTERNS + ("plaid", "floral", "spotted", "zigzag"),
    "size": SIZES + ("tiny", "huge", "medium-sized", "big", "little"),
    "count": ("one", "two", "three", "four", "five", "six"),
    "position": ("left", "right", "top", "bottom", "center", "upper", "lower", "middle"),
}

# Nouns the rule-based extractor accepts as heads of a referring expression: the demo
# world's shapes plus common object nouns, so the fallback extractor also works on
# everyday captions. A spaCy pipeline replaces this list when installed.
OBJECT_NOUNS: frozenset[str] = frozenset(SHAPES) | frozenset(
    """
    person man woman boy girl child baby people dog cat horse bird cow sheep bear
    car bus truck bicycle bike motorcycle train boat plane airplane shirt jacket dress
    hat cap shoe shoes bag backpack umbrella table chair sofa couch bed lamp cup mug
    bottle bowl plate vase clock book phone laptop keyboard tv screen window door
    tree flower plant ball kite box sign building house wall fence road street pizza
    cake banana apple sandwich toy bench pillow blanket towel
    """.split()
)

DETERMINERS: frozenset[str] = frozenset({"a", "an", "the", "this", "that", "another", "one"})


def attribute_class(word: str) -> str | None:
    """The lexicon class of a word ("colour", "pattern", ...) or None."""
    lowered = word.lower()
    for name, words in ATTRIBUTE_LEXICON.items():
        if lowered in words:
            return name
    return None
