"""The dataset stage of a URL list as the kubernetes runtime runs it: one pod of the CPU image
(img2dataset in its own environment inside it) downloads the loopback photo site (real
photos plus hostile URLs) with every path on the S3 server: the URL list it reads, the shards
it writes, the manifest and the report (the pod is given no path on the workspace volume). Every good photo
arrives under its stable key; every bad URL is one failure of its kind, in the report and in
MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fgclip.config import Params
from fgclip.core.shards import RawShardReader
from fgclip.data.ingest.urls import stable_key
from fgclip.orchestration.kubernetes import build_pod_spec
from rehearsal.podman import LocalNamespace, PodFailed
from tests.support.photo_server import HOSTILE, photo_site
from tests.support.real_data import INGEST, url_rows, write_url_list

BUCKET = "fgclip-photos"
KEY_LENGTH = 20


def test_a_url_list_is_downloaded_by_the_dataset_pod_onto_s3(
    namespace: LocalNamespace,
    servers: tuple[Any, str],
    params: dict[str, Any],
    scratch: Path,
    report: dict[str, Any],
) -> None:
    import mlflow

    s3, tracking = servers
    s3.bucket(BUCKET)
    with photo_site(slow_s=4.0, huge_side=5000) as site:
        rows = url_rows(site)
        s3.client().upload_file(str(write_url_list(scratch / "photo-urls.parquet", rows)), BUCKET, "lists/urls.parquet")
        urls = f"s3://{BUCKET}/lists/urls.parquet"
        sets = {
            "dataset.name": "packaged-photos",
            "dataset.source": "urls",
            "dataset.location": f"s3://{BUCKET}/images",
            "dataset.heldout_shards": 1,
            "dataset.urls.path": urls,
            **{f"ingest.{name}": value for name, value in INGEST.items()},
            "ingest.key_length": KEY_LENGTH,
        }
        overrides = [part for key, value in sets.items() for part in ("--set", f"{key}={value}")]
        argv = ["fgclip", "--no-progress", *overrides, "dataset"]
        argv += ["--out", f"s3://{BUCKET}/dataset", "--report", f"s3://{BUCKET}/reports/dataset.json"]
        spec = build_pod_spec("dataset", argv, Params.model_validate(params).kubernetes)
        started = time.monotonic()
        try:
            namespace.run_pod(spec, timeout_s=900)
        except PodFailed as failed:
            raise AssertionError(f"{failed}\n{failed.logs[-6000:]}") from failed
        seconds = round(time.monotonic() - started, 1)

    bucket = s3.root / BUCKET
    summary = json.loads((bucket / "reports" / "dataset.json").read_text())
    ingest = summary["ingest"]
    good = [row for row in rows if "broken link" not in row["caption"]]
    assert ingest["planned"] == len(rows) and ingest["successes"] == len(good), ingest
    assert ingest["failures_by_kind"] == {kind: 1 for kind in HOSTILE.values()}, ingest
    manifest = json.loads((bucket / "dataset" / "manifest.json").read_text())
    assert manifest["images"] == f"s3://{BUCKET}/images" and manifest["source"] == "urls"
    assert sorted(manifest["shards"]) == [f"{n:05d}" for n in range(ingest["shards"])]
    stored = {sample.key for tar in sorted((bucket / "images").glob("*.tar")) for sample in RawShardReader(tar)}
    assert stored == {stable_key(row["url"], row["caption"], KEY_LENGTH) for row in good}
    # the download report reached the tracking server from inside the pod
    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'dataset:packaged-photos'")
    assert run.data.metrics["successes"] == len(good)
    assert all(run.data.metrics[f"failures.{kind}"] == 1 for kind in HOSTILE.values()), run.data.metrics
    report["ingest_pod"] = {
        "seconds": seconds,
        "rows": ingest["planned"],
        "successes": ingest["successes"],
        "failures_by_kind": ingest["failures_by_kind"],
        "shards": ingest["shards"],
    }
