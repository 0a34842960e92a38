"""Throughput of a model backend: items (images or expressions) and generated tokens per
second of backend time, logged to MLflow by the stage that ran it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Throughput:
    """Accumulates work and the wall time spent on it; `timed()` wraps one call."""

    unit: str = "items"
    items: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @contextmanager
    def timed(self) -> Iterator["Throughput"]:
        started = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - started

    def add(self, items: int = 0, tokens: int = 0) -> None:
        self.items += items
        self.tokens += tokens

    def metrics(self, prefix: str = "backend") -> dict[str, float]:
        """`<prefix>.<unit>_per_second`, `<prefix>.tokens_per_second` and the totals."""
        rate = (lambda count: count / self.seconds if self.seconds > 0 else 0.0)
        return {
            f"{prefix}.{self.unit}": float(self.items),
            f"{prefix}.tokens": float(self.tokens),
            f"{prefix}.seconds": round(self.seconds, 3),
            f"{prefix}.{self.unit}_per_second": round(rate(self.items), 3),
            f"{prefix}.tokens_per_second": round(rate(self.tokens), 3),
        }
