"""MLflow tracking for every component run.

The embedded default is a SQLite store in the project folder (no server); on a cluster
MLFLOW_TRACKING_URI points at the tracking server and wins over params.yaml. Each run
records the component's params, counts, throughput, metrics and artifacts, and the
digest of its input data as an MLflow dataset input, so a registered model leads back to
the exact shards that made it.

Metrics, params and tags reach the server from a background thread through a bounded
buffer (fgclip.core.tracking_buffer), so a training loop never waits for a slow or stopped
tracking server; the end of the run waits until everything is delivered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fgclip.core.config import TrackingConfig
from fgclip.core.storage import (
    exists,
    filesystem,
    is_s3,
    join,
    list_files,
    local_path,
    name_of,
    object_pin,
    sha256_file,
)
from fgclip.core.tracking_buffer import BufferedRunLogger, TrackingUndelivered

log = logging.getLogger(__name__)

#: Set by an orchestrator (the Airflow DAGs) to the MLflow run of the whole DAG run: every
#: component run is then nested under it, in its experiment.
PARENT_RUN_ENV = "FGCLIP_MLFLOW_PARENT_RUN"
PARENT_RUN_TAG = "mlflow.parentRunId"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params and metrics are flat."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}


def _find_dvc_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".dvc").is_dir():
            return folder
    return None


def dataset_digest(path: str | Path) -> tuple[str, str]:
    """(digest, origin) of a data folder or file.

    The DVC md5 recorded in dvc.lock when the path is a tracked output (origin "dvc"),
    otherwise a sha256 over the relative paths and contents of its files ("sha256").
    """
    if is_s3(path):
        return _listing_digest(path), "etag"
    target = local_path(path).resolve()
    root = _find_dvc_root(target if target.is_dir() else target.parent)
    if root is not None and (root / "dvc.lock").is_file():
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        relative = os.path.relpath(target, root)
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if os.path.normpath(out.get("path", "")) == relative and out.get("md5"):
                    return out["md5"], "dvc"
    digest = hashlib.sha256()
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        digest.update(str(file.relative_to(target if target.is_dir() else target.parent)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest(), "sha256"


def _listing_digest(url: str | Path) -> str:
    """An S3 folder's digest from its listing: each object's name, size and ETag (reading
    every shard of a bucket to hash it would cost as much as the build itself)."""
    digest = hashlib.sha256()
    names = list_files(url) or ([""] if exists(url) else [])
    for name in names:
        pin = object_pin(join(url, name) if name else url)
        digest.update(f"{name}\t{pin['size']}\t{pin['etag']}\n".encode())
    return digest.hexdigest()


def dataset_source_path(path: str | Path) -> str:
    """How a dataset input names its data: relative to the DVC project it lies in (the same
    on every machine and in every run workspace), an s3:// URL as it is."""
    text = str(path)
    if "://" in text:
        return text
    target = local_path(path).resolve()
    root = _find_dvc_root(target if target.is_dir() else target.parent)
    return os.path.relpath(target, root) if root is not None else str(path)


class Tracker:
    """What a component logs; a disabled tracker accepts the same calls and does nothing.

    With a `buffer` (a BufferedRunLogger), metrics, params and tags go through it; artifacts
    and dataset inputs are sent at once (MLflow retries them)."""

    def __init__(self, mlflow_module: Any | None, buffer: Any | None = None) -> None:
        self._mlflow = mlflow_module
        self._buffer = buffer

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    @property
    def run_id(self) -> str | None:
        return self._mlflow.active_run().info.run_id if self._mlflow else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._mlflow:
            values = {k: str(v)[:6000] for k, v in flatten("", params).items()}
            (self._buffer or self._mlflow).log_params(values)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._mlflow:
            numeric = {
                k.replace("@", "_at_"): float(v)
                for k, v in flatten("", metrics).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            (self._buffer or self._mlflow).log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow:
            if is_s3(path):  # MLflow logs local files: bring the object(s) over first
                with tempfile.TemporaryDirectory(prefix="fgclip-artifact-") as scratch:
                    fs, remote = filesystem(path)
                    local = Path(scratch) / name_of(path)
                    fs.get(remote, str(local), recursive=fs.isdir(remote))
                    self.log_artifact(local, artifact_path)
                return
            target = local_path(path)
            if target.is_dir():
                self._mlflow.log_artifacts(str(target), artifact_path)
            else:
                self._mlflow.log_artifact(str(target), artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        if self._mlflow:
            self._mlflow.log_dict(dict(data), name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self._mlflow:
            (self._buffer or self._mlflow).set_tags(dict(tags))

    def close(self) -> None:
        """Deliver what is buffered; raises TrackingUndelivered if the server did not take it all."""
        if self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            stats = buffer.close()
            if stats.failed_tries or stats.longest_stall_s >= buffer.stall_warning_s:
                log.warning(
                    "MLflow run %s: %d items delivered in %d batches, %d failed tries, longest wait for "
                    "the server %.1f s",
                    buffer.run_id,
                    stats.delivered,
                    stats.batches,
                    stats.failed_tries,
                    stats.longest_stall_s,
                )

    def log_dataset(
        self, path: str | Path, name: str, context: str = "input", known: tuple[str, str] | None = None
    ) -> str:
        """Log a data folder as an MLflow dataset input; returns its digest. `known`:
        (digest, origin) computed already (a fan-out group's shards), else computed here."""
        digest, origin = known or dataset_digest(path)
        if self._mlflow:
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # made at import

            if is_s3(path):
                from mlflow.data.dataset_source_registry import resolve_dataset_source

                source = resolve_dataset_source(str(path))
            else:
                source = LocalArtifactDatasetSource(dataset_source_path(path))
            dataset = MetaDataset(source=source, name=name, digest=digest[:36])  # type: ignore[abstract]  # not an ABC at run time
            self._mlflow.log_input(dataset, context=context)
            self.set_tags({f"dataset.{name}.digest": digest, f"dataset.{name}.digest_origin": origin})
        return digest


def tracking_uri(config: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or config.uri


@contextmanager
def tracked_run(
    config: TrackingConfig,
    run_name: str,
    *,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """An MLflow run around a component; yields a no-op tracker when tracking is off.

    ``run_id``: log into that existing run (e.g. the training run of the model being
    evaluated) instead of starting a new one."""
    if not config.enabled:
        yield Tracker(None)
        return
    import mlflow

    uri = tracking_uri(config)
    parent = os.environ.get(PARENT_RUN_ENV)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; put the caller's value
    # back afterwards, or the first run in a process would pin the URI of every later one.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        # an existing run (`run_id`) keeps its experiment and its parent
        if run_id is None and parent:  # nested under the DAG run's run, in its experiment (the UI nests within one)
            mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).get_run(parent).info.experiment_id)
            tags = {**(tags or {}), PARENT_RUN_TAG: parent}
        elif run_id is None:
            mlflow.set_experiment(experiment or config.experiment)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=dict(tags or {})) as run:
            buffer = BufferedRunLogger(
                mlflow.MlflowClient(tracking_uri=uri),
                run.info.run_id,
                capacity=config.buffer_items,
                flush_timeout_s=config.flush_timeout_s,
                stall_warning_s=config.stall_warning_s,
            )
            tracker = Tracker(mlflow, buffer)
            log.info("MLflow run %s (%s) at %s", tracker.run_id, run_name, uri)
            try:
                yield tracker
            except BaseException:
                try:
                    tracker.close()
                except TrackingUndelivered as undelivered:  # the component's own error goes on
                    log.error("%s", undelivered)
                raise
            tracker.close()  # before the run ends: its data belongs to a running run
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
