"""End to end: `dvc repro` of the data pipeline on a tiny demo world, in a scratch copy
of the project (its own git + DVC repo), exactly as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, dvc_workspace, tool_env

pytestmark = pytest.mark.slow

DATA_STAGES = ["dataset", "recaption", "detect", "negatives", "qc"]


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def _tiny_params(base: dict) -> dict:
    params = json.loads(json.dumps(base))
    params["demo"].update(train_shards=2, heldout_shards=1, samples_per_shard=12)
    # 40 items cannot bound the noise under 5% at 95% confidence; the gate test below
    # raises the injected error rate far past this threshold instead.
    params["qc"].update(sample_size=40, gallery_items=10, max_noise_upper=0.2)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    root = dvc_workspace(tmp_path_factory.mktemp("project"), _tiny_params(params))
    # only the data stages: training has its own end-to-end test
    _run(["dvc", "repro", "qc"], root)
    return root


def test_repro_builds_every_stage_output(project: Path) -> None:
    for folder in ("data/build/captions", "data/build/regions", "data/build/negatives"):
        manifests = sorted((project / folder).glob("*.manifest.json"))
        assert len(manifests) == 2, folder
    metrics = json.loads((project / "reports/qc/metrics.json").read_text())
    assert 0.0 <= metrics["ci_low"] <= metrics["p_hat"] <= metrics["ci_high"] <= 1.0
    assert (project / "reports/qc/gallery/index.html").stat().st_size > 1000
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(DATA_STAGES) <= set(lock["stages"])


def test_repro_again_changes_nothing(project: Path) -> None:
    status = _run(["dvc", "status", "qc"], project)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() in ("", "{}"), status.stdout


def test_changing_a_param_reruns_only_affected_stages(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["qc"]["sample_size"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run(["dvc", "repro", "qc"], project)
    out = result.stdout
    assert "Running stage 'qc'" in out
    for stage in ["dataset", "recaption", "detect", "negatives"]:
        assert f"Running stage '{stage}'" not in out, out


def test_mlflow_has_a_run_per_stage_with_dataset_input(project: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fgclip-data")
    runs = client.search_runs([experiment.experiment_id])
    names = {run.info.run_name for run in runs}
    assert {"recaption", "detect", "negatives", "qc"} <= names
    recaption = next(run for run in runs if run.info.run_name == "recaption")
    assert recaption.inputs.dataset_inputs, "recaption run has no dataset input"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["dataset"]["outs"]}
    assert outs["data/dataset"].endswith(".dir")  # the dataset stage's output (manifest + demo world) is versioned
    manifest = json.loads((project / "data/dataset/manifest.json").read_text())
    assert recaption.data.tags["dataset.images.digest_origin"] == "sha256"  # the shard folder inside it, hashed
    assert manifest["source"] == "demo" and manifest["images"] == "data/dataset/train/images"
    assert recaption.data.metrics["items_out"] > 0


def test_high_injected_error_rate_fails_the_qc_gate(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["recaption"]["demo"]["attribute_error_rate"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run(["dvc", "repro", "qc"], project, check=False)
    assert result.returncode != 0
    assert "QC gate failed: noise upper bound" in result.stderr + result.stdout
    report = json.loads((project / "reports/qc/report.json").read_text())
    assert report["gate"]["passed"] is False
    assert report["truth"]["true_rate"] > 0.2
