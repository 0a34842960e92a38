"""Referring expressions and the extractor interface of the detect component.

Each expression has a short form (attributes + head noun: "large red striped circle";
noun modifiers stay with their noun: "tree house") and a long form (the short form plus
the locative or relational phrase that places it: "large red striped circle on the
left"). Extractors live in `extractors/` and are looked up by `params.detect.extractor`
in `EXTRACTORS`; each reports an `identity()` (name, version, rules hash) that goes into
the stage fingerprint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fgclip.core.backends import BackendRegistry
from fgclip.data.detect.config import DetectConfig


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
EXTRACTORS: BackendRegistry[ExtractorFactory] = BackendRegistry("expression extractor", {
    "rules": "fgclip.data.detect.extractors.rules:build",
    "spacy": "fgclip.data.detect.extractors.spacy:build",
})


def build_extractor(config: DetectConfig) -> ExpressionExtractor:
    return EXTRACTORS.factory(config.extractor)(config)



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

