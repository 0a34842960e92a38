"""A client for OpenAI-compatible chat completion endpoints (vLLM, SGLang, TGI, the
llama.cpp server, Ascend MindIE), written on httpx so no vendor SDK is needed.

Each conversation is one POST to `<base_url>/chat/completions`, `concurrency` of them in
flight at once. A request is retried with exponential backoff and jitter after a
connect error, a timeout, a dropped connection, 429 or 5xx (a Retry-After header sets
the delay); other 4xx are answered at once. Every request ends as a `ChatReply`: the
text, or a reason code and detail that the stage turns into a counted reject.

Two failures are not one sample's problem and raise `EndpointDown` instead: 401, 403 and
404 (a wrong key, URL or model name hits every request alike), and an endpoint that
stopped answering (every request of a batch failed to connect, or
`max_consecutive_failures` requests failed in a row).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx

from fgclip.core.throughput import Throughput
from fgclip.llm.chat import ChatEngine, ChatReply, Conversation, EndpointDown
from fgclip.llm.config import EndpointConfig

log = logging.getLogger(__name__)

# Reasons that mean "nobody answered", as opposed to "the answer was bad".
UNREACHABLE = frozenset({"connect_error", "connection_lost"})
RETRIED_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
FATAL_STATUS = frozenset({401, 403, 404})  # the same for every request: configuration, not data
DETAIL_CHARS = 300  # how much of a bad body goes into a reject's detail


class _Fatal(Exception):
    """Raised inside a worker for a status that must stop the stage."""


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (delta-seconds or an HTTP date), else None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_CHARS else flat[:DETAIL_CHARS] + "..."


def parse_completion(body: Any) -> ChatReply:
    """A chat completion JSON body as a reply (`bad_response` when it is not one)."""
    try:
        choice = body["choices"][0]
        content = choice["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ChatReply(error="bad_response", detail=f"not a chat completion: {_excerpt(str(body))}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    if not isinstance(content, str) or not content.strip():
        return ChatReply(
            error="empty_reply",
            detail=f"finish_reason={choice.get('finish_reason')!r}, no text",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    return ChatReply(
        text=content,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        truncated=choice.get("finish_reason") == "length",
    )


class ChatEndpoint(ChatEngine):
    """Concurrent, retrying chat completions against one endpoint and model."""

    def __init__(self, config: EndpointConfig, *, unit: str = "items") -> None:
        if not config.model:
            raise ValueError("an OpenAI-compatible backend needs the served model name (params: <stage>.openai.model)")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif config.api_key_env:
            log.info("%s is not set: calling %s without an API key", config.api_key_env, self.url)
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="chat")
        self.throughput = Throughput(unit)
        self.prompt_tokens = 0
        self.failures_in_a_row = 0
        self.jitter = random.Random()  # timing only: never touches the data

    def identity(self) -> dict[str, Any]:
        # The URL and key are deliberately absent: they say where the model runs, not what it writes.
        c = self.config
        return {
            "engine": "openai",
            "model": c.model,
            "max_tokens": c.max_tokens,
            "temperature": c.temperature,
            "seed": c.seed,
        }

    def chat(self, conversations: Sequence[Conversation]) -> list[ChatReply]:
        if not conversations:
            return []
        with self.throughput.timed():
            futures = [self.pool.submit(self._request, conversation) for conversation in conversations]
            try:
                replies = [future.result() for future in futures]
            except _Fatal as error:
                for future in futures:
                    future.cancel()
                raise EndpointDown(str(error)) from None
        self._account(replies)
        return replies

    def _account(self, replies: list[ChatReply]) -> None:
        for reply in replies:
            self.prompt_tokens += reply.prompt_tokens
            self.throughput.add(items=1 if reply.ok else 0, tokens=reply.completion_tokens)
            self.failures_in_a_row = 0 if reply.ok else self.failures_in_a_row + 1
            if not reply.ok:
                log.warning("%s: %s: %s", self.url, reply.error, reply.detail)
        if all(reply.error in UNREACHABLE for reply in replies):
            raise EndpointDown(
                f"{self.url} cannot be reached: all {len(replies)} requests of the batch failed after "
                f"{self.config.max_retries} retries ({replies[0].detail}); start the server and rerun "
                f"(finished shards are kept)"
            )
        if self.failures_in_a_row >= self.config.max_consecutive_failures:
            raise EndpointDown(
                f"{self.url}: {self.failures_in_a_row} requests failed in a row (last: {replies[-1].error}: "
                f"{replies[-1].detail}); fix the endpoint and rerun (finished shards are kept)"
            )

    def _payload(self, conversation: Conversation) -> dict[str, Any]:
        c = self.config
        payload: dict[str, Any] = {
            "model": c.model,
            "messages": conversation,
            "max_tokens": c.max_tokens,
            "temperature": c.temperature,
        }
        if c.seed is not None:
            payload["seed"] = c.seed
        return payload

    def _delay(self, retry: int, server_asks: float | None) -> float:
        if server_asks is not None:
            return min(server_asks, self.config.timeout_s)  # honoured, but never longer than a request may take
        return min(self.config.backoff_max_s, self.config.backoff_s * 2**retry) * self.jitter.uniform(0.5, 1.0)

    def _request(self, conversation: Conversation) -> ChatReply:
        payload = self._payload(conversation)
        reply: ChatReply | None = None
        server_asks: float | None = None  # the last answer's Retry-After
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1, server_asks))
            server_asks = None
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TimeoutException as error:
                reply = ChatReply(error="timeout", detail=f"{type(error).__name__} after {self.config.timeout_s} s")
                continue
            except httpx.ConnectError as error:
                reply = ChatReply(error="connect_error", detail=f"cannot connect to {self.url}: {error}")
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
                reply = ChatReply(error="connection_lost", detail=f"{type(error).__name__}: {error}")
                continue
            if response.status_code in FATAL_STATUS:
                raise _Fatal(
                    f"{self.url} answered {response.status_code} (check base_url, model "
                    f"{self.config.model!r} and the API key variable): {_excerpt(response.text)}"
                )
            if response.status_code in RETRIED_STATUS:
                server_asks = _retry_after(response)
                reason = "rate_limited" if response.status_code == 429 else "server_error"
                reply = ChatReply(error=reason, detail=f"HTTP {response.status_code}: {_excerpt(response.text)}")
                continue
            if response.status_code >= 400:
                return ChatReply(
                    error="request_rejected", detail=f"HTTP {response.status_code}: {_excerpt(response.text)}"
                )
            try:
                body = response.json()
            except ValueError:
                return ChatReply(
                    error="bad_response", detail=f"HTTP {response.status_code}, not JSON: {_excerpt(response.text)}"
                )
            return parse_completion(body)
        assert reply is not None
        return ChatReply(error=reply.error, detail=f"{reply.detail} (after {self.config.max_retries} retries)")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
