"""The tracking buffer: logging never waits for the server, nothing is dropped or sent twice,
and what cannot be delivered is reported, not lost silently."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import RestException

from fgclip.core.tracking_buffer import BufferedRunLogger, TrackingUndelivered


class FakeClient:
    """log_batch that records what it got; it can be held (a stalled server) or fail."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.batches: list[dict[str, list]] = []
        self.release = threading.Event()
        self.release.set()
        self.failures, self.error = failures, error or ConnectionError("connection refused")
        self.calls = 0

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls += 1
        self.release.wait()
        if self.failures:
            self.failures -= 1
            raise self.error
        self.batches.append({"metrics": list(metrics), "params": list(params), "tags": list(tags)})

    def metric_points(self) -> list[tuple[str, int, float]]:
        return [(m.key, m.step, m.value) for batch in self.batches for m in batch["metrics"]]


def test_logging_goes_on_while_the_server_stalls_and_everything_arrives_in_order():
    client = FakeClient()
    client.release.clear()  # the server takes nothing for now
    buffer = BufferedRunLogger(client, "run1", retry_initial_s=0.01)
    started = time.monotonic()
    for step in range(1, 201):
        buffer.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
    buffer.log_params({"seed": 3})
    buffer.set_tags({"stage": "1"})
    assert time.monotonic() - started < 1.0, "logging waited for the server"
    client.release.set()
    stats = buffer.close()
    points = client.metric_points()
    assert [(key, step) for key, step, _ in points] == [(k, s) for s in range(1, 201) for k in ("loss", "lr")]
    assert stats.delivered == 402 and stats.failed_tries == 0
    assert [p.key for b in client.batches for p in b["params"]] == ["seed"]
    assert [t.value for b in client.batches for t in b["tags"]] == ["1"]


def test_failed_tries_are_retried_and_logged(caplog):
    client = FakeClient(failures=3)
    buffer = BufferedRunLogger(client, "run2", retry_initial_s=0.01, retry_max_s=0.02)
    with caplog.at_level(logging.WARNING, logger="fgclip.core.tracking_buffer"):
        buffer.log_metrics({"loss": 0.5}, step=1)
        stats = buffer.close()
    assert client.metric_points() == [("loss", 1, 0.5)]
    assert stats.failed_tries == 3 and client.calls == 4
    messages = [record.getMessage() for record in caplog.records]
    assert sum("did not take 1 items" in message for message in messages) == 3
    assert any("took the buffered run data again" in message and "4 tries" in message for message in messages)


def test_a_stall_is_logged_while_it_lasts(caplog):
    client = FakeClient()
    client.release.clear()
    buffer = BufferedRunLogger(client, "run3", stall_warning_s=0.05)
    with caplog.at_level(logging.WARNING, logger="fgclip.core.tracking_buffer"):
        buffer.log_metrics({"loss": 1.0}, step=1)
        time.sleep(0.2)
        buffer.log_metrics({"loss": 0.9}, step=2)  # the next call notices the stall
        assert any("has not taken run data for" in r.getMessage() for r in caplog.records)
        client.release.set()
        buffer.close()
    assert [step for _, step, _ in client.metric_points()] == [1, 2]


def test_a_full_buffer_makes_the_caller_wait_and_loses_nothing():
    client = FakeClient()
    client.release.clear()
    buffer = BufferedRunLogger(client, "run4", capacity=3)
    done = threading.Event()

    def log_five():
        for step in range(5):
            buffer.log_metrics({"x": float(step)}, step=step)
        done.set()

    writer = threading.Thread(target=log_five)
    writer.start()
    assert not done.wait(0.3), "the caller should wait for room"
    client.release.set()
    assert done.wait(5)
    writer.join()
    stats = buffer.close()
    assert [step for _, step, _ in client.metric_points()] == [0, 1, 2, 3, 4]
    assert stats.waited_for_room_s > 0.2


def test_what_the_server_rejects_is_reported_at_close():
    client = FakeClient(
        failures=1, error=RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "param changed"})
    )
    buffer = BufferedRunLogger(client, "run5")
    buffer.log_params({"lr": 0.1})
    with pytest.raises(TrackingUndelivered, match="param changed"):
        buffer.close()
    assert client.calls == 1  # a 4xx is not retried


def test_close_gives_up_after_the_flush_timeout_and_says_how_much_is_left():
    client = FakeClient()
    client.release.clear()  # a server that never answers
    buffer = BufferedRunLogger(client, "run6", flush_timeout_s=0.2)
    buffer.log_metrics({"a": 1.0, "b": 2.0}, step=1)
    with pytest.raises(TrackingUndelivered, match="2 items still buffered after waiting 0.2 s"):
        buffer.close()
    client.release.set()


def test_a_batch_sent_twice_is_stored_once(tmp_path: Path):
    """Why a retry after a lost answer adds no duplicate: MLflow stores a metric point once."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("exp"))
    sent = []

    class AnswerLost:
        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
            sent.append(len(metrics))
            if len(sent) == 1:
                raise ConnectionError("connection reset after the server stored the batch")

    buffer = BufferedRunLogger(AnswerLost(), run.info.run_id, retry_initial_s=0.01)
    buffer.log_metrics({"loss": 0.25}, step=7)
    buffer.log_params({"seed": 1})
    buffer.close()
    assert sent == [1, 1]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.25)]
    assert client.get_run(run.info.run_id).data.params == {"seed": "1"}
