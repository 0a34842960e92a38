"""What every chat engine returns and raises, and the interface the backends use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fgclip.core.schema import check_text_or_reason
from fgclip.core.throughput import Throughput

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
        check_text_or_reason("ChatReply", self.text, self.error)

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

    def close(self) -> None:  # noqa: B027  (optional to override: most engines hold nothing)
        """Release connections or memory (optional)."""
