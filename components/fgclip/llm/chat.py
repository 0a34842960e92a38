"""What every chat engine returns and raises, and the interface the backends use."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fgclip.throughput import Throughput

REASON_PATTERN = re.compile(r"^[a-z_]+$")  # the data contract's reject reasons

Message = dict[str, Any]  # {"role": ..., "content": str | [parts]} as in the OpenAI chat API
Conversation = list[Message]


class EndpointDown(RuntimeError):
    """The model cannot be reached at all: the stage must stop, not reject its input."""


@dataclass(frozen=True)
class ChatReply:
    """One conversation's answer, or why there is none (`error` is a reject reason code)."""

    text: str | None = None
    error: str | None = None
    detail: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False  # the answer hit the token limit

    def __post_init__(self) -> None:
        if (self.text is None) == (self.error is None):
            raise ValueError("a ChatReply holds either a text or an error")
        if self.error is not None and not REASON_PATTERN.match(self.error):
            raise ValueError(f"reason {self.error!r} must match {REASON_PATTERN.pattern}")

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatEngine(ABC):
    """Answers conversations in batches (concurrent requests or one batched generate)."""

    throughput: Throughput
    prompt_tokens: int = 0

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Engine kind, model and generation settings: what decides the answers."""

    @abstractmethod
    def chat(self, conversations: Sequence[Conversation]) -> list[ChatReply]:
        """One reply per conversation, in order; raises EndpointDown when nothing can be reached."""

    def metrics(self, prefix: str) -> dict[str, float]:
        """Throughput (items/s, generated tokens/s) and prompt tokens, for MLflow."""
        return {**self.throughput.metrics(prefix), f"{prefix}.prompt_tokens": float(self.prompt_tokens)}

    def close(self) -> None:
        """Release connections or memory (optional)."""
