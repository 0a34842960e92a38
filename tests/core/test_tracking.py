"""MLflow tracking: runs land in the configured store, and a run does not pin the
tracking URI of later runs in the same process."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from fgclip.core.config import TrackingConfig
from fgclip.core.tracking import dataset_digest, flatten, tracked_run


def test_each_run_goes_to_its_own_configured_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = (f"sqlite:///{tmp_path / name}.db" for name in ("first", "second"))
    for uri in (first, second):
        with tracked_run(TrackingConfig(uri=uri, experiment="exp"), "run") as tracker:
            tracker.log_metrics({"value": 1.0, "nested": {"count": 2}})
    assert "MLFLOW_TRACKING_URI" not in os.environ
    for uri in (first, second):
        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
        assert len(runs) == 1 and runs[0].data.metrics == {"value": 1.0, "nested.count": 2.0}


def test_a_run_id_continues_that_run_through_the_buffer(tmp_path: Path, monkeypatch) -> None:
    """The eval suite logs onto the training run of the model it scores: the buffered
    metrics, params and tags land on that run, next to what it already held."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrackingConfig(uri=f"sqlite:///{tmp_path / 'runs'}.db", experiment="exp")
    with tracked_run(config, "training") as tracker:
        tracker.log_metrics({"loss": 0.5}, step=1)
        training_run = tracker.run_id
    with tracked_run(config, "ignored", run_id=training_run) as tracker:
        assert tracker.run_id == training_run
        tracker.log_metrics({"eval": {"top1": 0.75}})
        tracker.log_params({"suite": "paper"})
        tracker.set_tags({"evaluated": "yes"})
    client = mlflow.MlflowClient(tracking_uri=config.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_id == training_run
    assert run.data.metrics == {"loss": 0.5, "eval.top1": 0.75}
    assert run.data.params == {"suite": "paper"} and run.data.tags["evaluated"] == "yes"


def test_disabled_tracking_logs_nothing(tmp_path: Path) -> None:
    with tracked_run(TrackingConfig(uri=f"sqlite:///{tmp_path}/x.db", enabled=False), "run") as tracker:
        assert not tracker.enabled and tracker.run_id is None
        tracker.log_metrics({"value": 1.0})
    assert not (tmp_path / "x.db").exists()


def test_digest_of_a_folder_changes_with_its_content(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    before, origin = dataset_digest(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    after, _ = dataset_digest(tmp_path)
    assert origin == "sha256" and before != after


def test_flatten_joins_nested_keys() -> None:
    assert flatten("", {"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
