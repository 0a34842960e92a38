"""Word helpers the text components share: tokenising, object-noun lemmas, the head noun
of an expression, and a stable digest of rule tables for backend identities."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from fgclip.text.lexicon import OBJECT_NOUNS

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
