"""Failure kinds of a download: what img2dataset's error messages (urllib's) mean, and
which kinds are worth another try later.

Kinds: http_<status> (http_404, http_500, ...), timeout, connection_error,
redirect_loop, disallowed (X-Robots-Tag), invalid_url, not_an_image, decode_error,
too_small, too_large, and other (with the message kept in the shard's parquet)."""

from __future__ import annotations

import re

_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")
#: Kinds a later pass may fix: the server was busy, slow or briefly away.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def classify(message: str) -> str:
    """The failure kind of one img2dataset download error message."""
    text = message or ""
    lower = text.lower()
    if "infinite loop" in lower:  # urllib's redirect-loop HTTPError (checked before the status)
        return "redirect_loop"
    status = _HTTP_STATUS.search(text)
    if status:
        return f"http_{status.group(1)}"
    if "timed out" in lower or "timeout" in lower:
        return "timeout"
    if "x-robots-tag" in lower:
        return "disallowed"
    if "unknown url type" in lower or "no host given" in lower or "invalid url" in lower:
        return "invalid_url"
    if any(word in lower for word in ("connection", "errno", "name or service", "remote end closed", "incompleteread")):
        return "connection_error"
    return "other"


def is_transient(kind: str) -> bool:
    if kind in ("timeout", "connection_error"):
        return True
    return kind.startswith("http_") and kind[5:].isdigit() and int(kind[5:]) in TRANSIENT_HTTP
