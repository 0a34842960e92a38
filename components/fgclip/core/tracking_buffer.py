"""Run data (metrics, params, tags) sent to MLflow from a background thread, so a component
never waits for the tracking server: a training step that logs its loss while the server
is down or slow goes straight on to the next step.

- Bounded: at most `capacity` items wait in memory. A full buffer makes the caller wait for
  room (and says so in the log) rather than drop anything.
- Retried: a batch the server refuses with a server error, or cannot take because it is
  unreachable, is sent again after a backoff, as often as needed, in order. Metric points
  carry the time they were logged, and MLflow stores a point (key, step, time, value) once,
  so a batch sent twice (the server took it but the answer was lost) adds no duplicate.
- Loud: a stall longer than `stall_warning_s`, each failed try and the recovery are logged;
  `close()` waits up to `flush_timeout_s` for everything to be delivered and raises
  TrackingUndelivered if something was not (a batch the server rejects as invalid, e.g. a
  param logged twice with different values, is reported there too, and logged at once).

MLflow's own asynchronous logging does not serve here: its queue is unbounded, sends
batches from several threads (out of order) and gives a batch up after the HTTP retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: MLflow's limits for one log_batch call.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100


class TrackingUndelivered(RuntimeError):
    """Run data that could not be delivered to the tracking server (the message says what and why)."""


@dataclass
class DeliveryStats:
    delivered: int = 0  # items the server took
    batches: int = 0
    failed_tries: int = 0  # log_batch calls that raised and were retried
    longest_stall_s: float = 0.0  # longest wait for one batch to be taken (HTTP retries included)
    waited_for_room_s: float = 0.0  # time callers waited because the buffer was full
    rejected: list[str] = field(default_factory=list)  # batches the server refused as invalid


def _retryable(error: Exception) -> bool:
    """A server error or no answer at all: worth another try. A 4xx is the request's fault."""
    status = getattr(error, "get_http_status_code", None)
    if callable(status):
        try:
            return int(status()) >= 500
        except (TypeError, ValueError):
            return True
    return True


class BufferedRunLogger:
    """Log one run's metrics, params and tags through a bounded buffer and a sender thread.

    `client` is an `mlflow.MlflowClient` (anything with its `log_batch`).
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        capacity: int = 100_000,
        flush_timeout_s: float = 900.0,
        stall_warning_s: float = 10.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("the tracking buffer needs room for at least one item")
        self.client, self.run_id = client, run_id
        self.capacity, self.flush_timeout_s, self.stall_warning_s = capacity, flush_timeout_s, stall_warning_s
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.clock = clock
        self.stats = DeliveryStats()
        self._items: deque[tuple[str, Any]] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._sending_since: float | None = None  # when the batch in flight was first tried
        self._stall_warned = False
        self._thread = threading.Thread(target=self._send_loop, name=f"mlflow-sender-{run_id[:8]}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)  # when it was logged, not when it reached the server
        self._put([("metric", Metric(key, float(value), timestamp, step or 0)) for key, value in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._put([("param", Param(key, str(value))) for key, value in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._put([("tag", RunTag(key, str(value))) for key, value in tags.items()])

    def _put(self, items: list[tuple[str, Any]]) -> None:
        if not items:
            return
        with self._changed:
            if self._closing:
                raise RuntimeError("the tracking buffer is closed")
            self._warn_if_stalled()
            for item in items:
                if len(self._items) >= self.capacity:
                    self._wait_for_room()
                self._items.append(item)
            self._changed.notify_all()

    def _wait_for_room(self) -> None:
        log.warning("tracking buffer full (%d items): the run waits until MLflow takes some", self.capacity)
        started = self.clock()
        while len(self._items) >= self.capacity:
            self._changed.wait(timeout=1.0)
        waited = self.clock() - started
        self.stats.waited_for_room_s += waited
        log.warning("tracking buffer has room again after %.1f s", waited)

    def _warn_if_stalled(self) -> None:
        since = self._sending_since
        if since is None or self._stall_warned:
            return
        stalled = self.clock() - since
        if stalled >= self.stall_warning_s:
            self._stall_warned = True
            log.warning(
                "MLflow has not taken run data for %.0f s (server down or slow?): %d items buffered "
                "(room for %d); the run goes on and they are sent when it answers",
                stalled,
                len(self._items),
                self.capacity,
            )

    # ------------------------------------------------------------------ the sender thread

    def _next_batch(self) -> list[tuple[str, Any]]:
        """The oldest items that fit one log_batch call (they stay queued until delivered)."""
        limits = {"metric": MAX_METRICS_PER_BATCH, "param": MAX_PARAMS_PER_BATCH, "tag": MAX_TAGS_PER_BATCH}
        counts = dict.fromkeys(limits, 0)
        batch: list[tuple[str, Any]] = []
        for kind, item in self._items:
            if counts[kind] >= limits[kind] or len(batch) >= MAX_METRICS_PER_BATCH:
                break
            counts[kind] += 1
            batch.append((kind, item))
        return batch

    def _send(self, batch: list[tuple[str, Any]]) -> None:
        self.client.log_batch(
            self.run_id,
            metrics=[item for kind, item in batch if kind == "metric"],
            params=[item for kind, item in batch if kind == "param"],
            tags=[item for kind, item in batch if kind == "tag"],
        )

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                while not self._items and not self._closing:
                    self._changed.wait()
                if not self._items:
                    return
                batch = self._next_batch()
                self._sending_since = self.clock()
            delay, tries = self.retry_initial_s, 0
            while True:
                tries += 1
                try:
                    self._send(batch)
                    outcome = "delivered"
                except Exception as error:  # noqa: BLE001 - every failure is logged, then retried or reported
                    if not _retryable(error):
                        outcome = f"rejected by the server: {error}"
                        log.error(
                            "MLflow rejected %d items of run %s (%s); they are not logged",
                            len(batch),
                            self.run_id,
                            error,
                        )
                    else:
                        self.stats.failed_tries += 1
                        log.warning(
                            "MLflow did not take %d items (try %d: %s); %d buffered, retrying in %.0f s",
                            len(batch),
                            tries,
                            _short(error),
                            len(self._items),
                            delay,
                        )
                        time.sleep(delay)
                        delay = min(delay * 2, self.retry_max_s)
                        continue
                break
            with self._changed:
                stalled = self.clock() - (self._sending_since or self.clock())
                for _ in batch:
                    self._items.popleft()
                self._sending_since = None
                if outcome == "delivered":
                    self.stats.delivered += len(batch)
                    self.stats.batches += 1
                else:
                    self.stats.rejected.append(f"{len(batch)} items: {outcome}")
                self.stats.longest_stall_s = max(self.stats.longest_stall_s, stalled)
                if self._stall_warned or tries > 1:
                    log.warning(
                        "MLflow took the buffered run data again after %.1f s (%d tries); %d items still buffered",
                        stalled,
                        tries,
                        len(self._items),
                    )
                self._stall_warned = False
                self._changed.notify_all()

    # ------------------------------------------------------------------ the end of the run

    def close(self) -> DeliveryStats:
        """Deliver what is buffered (waiting up to flush_timeout_s) and stop the sender; raise
        TrackingUndelivered if anything did not reach the server."""
        with self._changed:
            self._closing = True
            pending = len(self._items)
            self._changed.notify_all()
        if pending:
            log.info("sending the last %d buffered items of run %s to MLflow", pending, self.run_id)
        deadline = self.clock() + self.flush_timeout_s
        while self._thread.is_alive() and self.clock() < deadline:
            self._thread.join(timeout=min(self.stall_warning_s, max(0.0, deadline - self.clock())))
            if self._thread.is_alive():
                with self._changed:
                    left = len(self._items)
                log.warning(
                    "the end of run %s waits for MLflow to take %d buffered items (up to %.0f s more)",
                    self.run_id,
                    left,
                    max(0.0, deadline - self.clock()),
                )
        with self._changed:
            left = len(self._items)
        problems = list(self.stats.rejected)
        if self._thread.is_alive():
            problems.append(
                f"{left} items still buffered after waiting {self.flush_timeout_s:g} s "
                "(tracking.flush_timeout_s) for the server"
            )
        if problems:
            raise TrackingUndelivered(f"MLflow run {self.run_id}: run data not delivered: " + "; ".join(problems))
        return self.stats


def _short(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."
