"""The negative generator interface of the negatives component.

Generators live in `backends/` and are looked up by `params.negatives.backend` in
`GENERATORS`: `rules` (attribute swaps over the lexicon, no model), and the LLM
generators `openai` (an OpenAI-compatible endpoint) and `hf` (a causal LM in process).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fgclip.core.backends import BackendRegistry
from fgclip.data.negatives.config import NegativesConfig

#: Built-in prompts (`negatives.prompt: negatives.vN`) live in this package's prompts/ folder.
PROMPT_PACKAGE = "fgclip.data.negatives"


class NegativeGenerationError(Exception):
    """A backend failed for one expression (an endpoint error, say); the region gets no
    negatives and a `negatives_failed` reject, and the shard goes on."""


@dataclass(frozen=True)
class NegativeRequest:
    """One region's positive expression and its random stream, seeded per (seed, key, region)."""

    expression: str
    rng: random.Random


@dataclass(frozen=True)
class Proposal:
    """A generator's candidates for one expression, or why it has none.

    `candidates` are the backend's own; `fallback` are fill-ins from another generator
    (an LLM backend's rules repair), used only after every valid own candidate, and
    counted apart so the run reports how much of the data the model really wrote."""

    candidates: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    error: str | None = None  # the region gets no negatives
    detail: str = ""


class NegativeGenerator(ABC):
    """Proposes hard negatives for positive expressions."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version, prompt or rules hash: part of the stage fingerprint."""

    @abstractmethod
    def generate(self, expression: str, count: int, rng: random.Random) -> list[str]:
        """Up to `count` (or more, the stage keeps the first valid `count`) negatives.
        `rng` is seeded per (seed, key, region index): use it for every random choice."""

    def generate_batch(self, requests: Sequence[NegativeRequest], count: int) -> list[Proposal]:
        """One proposal per request, in order. Model backends override this to answer a
        whole batch at once; a per-expression failure is a proposal with an error, an
        exception means the backend itself is gone (the stage stops)."""
        proposals = []
        for request in requests:
            try:
                proposals.append(Proposal(self.generate(request.expression, count, request.rng)))
            except NegativeGenerationError as error:
                proposals.append(Proposal(error="negatives_failed", detail=str(error)))
        return proposals

    def metrics(self) -> dict[str, float]:
        """Throughput and other run metrics of the backend (none for rule-based ones)."""
        return {}


GeneratorFactory = Callable[[NegativesConfig], NegativeGenerator]
GENERATORS: BackendRegistry[GeneratorFactory] = BackendRegistry("negative generator", {
    "rules": "fgclip.data.negatives.backends.rules:build",
    "openai": "fgclip.data.negatives.backends.openai:build",
    "hf": "fgclip.data.negatives.backends.hf:build",
})


def build_generator(config: NegativesConfig) -> NegativeGenerator:
    return GENERATORS.factory(config.backend)(config)

