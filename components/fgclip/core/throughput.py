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
    def timed(self) -> Iterator[Throughput]:
        started = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - started

    def add(self, items: int = 0, tokens: int = 0) -> None:
        self.items += items
        self.tokens += tokens

    def metrics(self, prefix: str = "backend", **counts: int) -> dict[str, float]:
        """`<prefix>.<unit>_per_second`, `<prefix>.tokens_per_second` and the totals, plus a
        total and a rate over the same time for each extra count (e.g. expressions=...)."""
        totals = {self.unit: self.items, "tokens": self.tokens, **counts}
        metrics = {f"{prefix}.seconds": round(self.seconds, 3)}
        for name, count in totals.items():
            metrics[f"{prefix}.{name}"] = float(count)
            metrics[f"{prefix}.{name}_per_second"] = round(count / self.seconds, 3) if self.seconds > 0 else 0.0
        return metrics
