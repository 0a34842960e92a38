"""The recaption backend interface: what a caption writer implements and how the stage
finds it.

A backend gets batches of image samples and returns one `CaptionResult` per sample, in
order; a per-sample failure is a result with a reason code, never an exception (an
exception stops the run, resumably). Backends live in `backends/` and are looked up by
`params.recaption.backend` in `BACKENDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip.core.backends import BackendRegistry
from fgclip.core.schema import check_text_or_reason
from fgclip.core.shards import RawSample
from fgclip.data.recaption.config import RecaptionConfig


@dataclass(frozen=True)
class CaptionContext:
    """What a backend may know about the batch besides the samples themselves."""

    shard: str
    seed: int


@dataclass(frozen=True)
class CaptionResult:
    """A caption, or the reason code (and detail) why this one sample got none."""

    text: str | None = None
    error: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        check_text_or_reason("CaptionResult", self.text, self.error)

    @classmethod
    def failed(cls, reason: str, detail: str) -> "CaptionResult":
        return cls(error=reason, detail=detail)


class CaptionBackend(ABC):
    """Writes long captions for a batch of samples."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version and prompt/rules hash; part of the stage fingerprint."""

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        """Extra input files the backend reads for `shard` (fingerprinted with the images)."""
        return {}

    @abstractmethod
    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        """One result per sample, in order; a per-sample failure is a result, not an exception."""

    def metrics(self) -> dict[str, float]:
        """Throughput of a model backend (images/s, tokens/s), logged to MLflow by the stage."""
        return {}


@dataclass(frozen=True)
class BackendResources:
    """Things a backend may need beyond its config section (paths, clients)."""

    truth_dir: Path | None = None


#: Built-in prompts (`recaption.prompt: recaption.vN`) live in this package's prompts/ folder.
PROMPT_PACKAGE = "fgclip.data.recaption"

BackendFactory = Callable[[RecaptionConfig, BackendResources], CaptionBackend]
BACKENDS: BackendRegistry[BackendFactory] = BackendRegistry("recaption backend", {
    "demo": "fgclip.data.recaption.backends.demo:build",
    "hf": "fgclip.data.recaption.backends.hf:build",
    "openai": "fgclip.data.recaption.backends.openai:build",
})


def make_backend(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    """The configured backend; ValueError when it is unknown or misconfigured."""
    return BACKENDS.factory(config.backend)(config, resources)

