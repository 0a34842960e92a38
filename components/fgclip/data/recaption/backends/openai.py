"""recaption backend `openai`: long captions from a vision-language model behind an
OpenAI-compatible endpoint (vLLM, SGLang, TGI, MindIE serving Qwen2-VL, CogVLM2, ...).

Each image goes in as a base64 data URL of the shard's own bytes (no re-encoding, so
the model sees exactly the stored image) with the versioned prompt as the text part.
A request that fails after its retries is that sample's reject, with the reason; an
endpoint that cannot be reached at all stops the stage (see `endpoint`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from fgclip.data.recaption.config import RecaptionConfig
from fgclip.llm.chat import Conversation
from fgclip.llm.endpoint import ChatEndpoint
from fgclip.core.prompts import Prompt, load_prompt
from fgclip.data.recaption.interface import PROMPT_PACKAGE, BackendResources, CaptionBackend, CaptionContext, CaptionResult
from fgclip.core.shards import RawSample

VERSION = "1"
MIME_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def image_data_url(sample: RawSample) -> str:
    mime = MIME_TYPES.get(sample.image_ext.lower().lstrip("."), "image/jpeg")
    return f"data:{mime};base64,{base64.b64encode(sample.image_bytes).decode('ascii')}"


class EndpointCaptionBackend(CaptionBackend):
    """One chat request per image, `concurrency` in flight."""

    def __init__(self, endpoint: ChatEndpoint, prompt: Prompt) -> None:
        self.endpoint = endpoint
        self.prompt = prompt
        self.truncated = 0

    def identity(self) -> dict[str, Any]:
        return {"name": "openai", "version": VERSION, **self.endpoint.identity(), **self.prompt.identity()}

    def conversation(self, sample: RawSample) -> Conversation:
        return [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(sample)}},
            {"type": "text", "text": self.prompt.text},
        ]}]

    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        replies = self.endpoint.chat([self.conversation(sample) for sample in batch])
        results = []
        for reply in replies:
            if not reply.ok:
                results.append(CaptionResult.failed(reply.error or "request_failed", reply.detail))
                continue
            # A caption cut at the token limit is still a description of the image: kept, and counted.
            self.truncated += reply.truncated
            results.append(CaptionResult(text=reply.text))
        return results

    def metrics(self) -> dict[str, float]:
        return {**self.endpoint.metrics("recaption.backend"), "recaption.backend.truncated": float(self.truncated)}


def build(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    return EndpointCaptionBackend(ChatEndpoint(config.openai, unit="images"), load_prompt(config.prompt, PROMPT_PACKAGE))
