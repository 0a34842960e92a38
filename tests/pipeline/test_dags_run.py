"""End to end: both DAGs with `dag.test()` on the `local` runtime, on a tiny demo world in a
scratch copy of the project, against a real MLflow server and a real S3 server (rclone),
both on loopback: the DVC remote and MLflow's artifact store are S3 buckets.

data build -> dataset version on S3 + Asset event -> train (picks the version from the
event) -> model in the registry with the gate's decision; then a rerun whose QC gate fails
(form value) skips every finished shard and publishes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, dvc_workspace, tool_env
from tests.support.servers import S3Server, mlflow_server, program, s3_server

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("dag_test_runner.py")
DAG_RUN_TIMEOUT_S = 600
DVC_REMOTE = "s3://dvc-remote/fgclip"
ARTIFACTS = "s3://mlflow/artifacts"
FAN_OUT = ("recaption", "detect", "negatives")


def _tiny_params() -> dict[str, Any]:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["demo"].update(train_shards=2, heldout_shards=1, samples_per_shard=8)
    # 20 items cannot bound the noise under 5% at 95% confidence: the gate is loosened here
    params["qc"].update(sample_size=20, gallery_items=4, max_noise_upper=0.2)
    params["orchestration"] = {
        **params.get("orchestration", {}),
        "shard_group_size": 1,
        "dvc_remote_url": DVC_REMOTE,
        "retries": 0,
    }
    train = params.setdefault("train", {})
    train.update(recipe="demo", workers=0, log_system_metrics=False)
    for stage in ("stage1", "stage2"):  # a handful of steps: 16 images in batches of 4
        train.setdefault("demo", {}).setdefault(stage, {}).update(batch_size=4, epochs=1, warmup_steps=1)
    params.setdefault("eval", {}).update(batch_size=8)
    return params


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=DAG_RUN_TIMEOUT_S)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[S3Server, str]]:
    root = tmp_path_factory.mktemp("servers")
    with s3_server(root / "s3") as s3:
        s3.bucket("dvc-remote")
        s3.bucket("mlflow")
        with mlflow_server(root / "mlflow", ARTIFACTS, s3.env()) as tracking:
            yield s3, tracking


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return dvc_workspace(tmp_path_factory.mktemp("workspace"), _tiny_params())


@pytest.fixture(scope="module")
def env(servers, workspace, tmp_path_factory) -> dict[str, str]:
    s3, tracking = servers
    home = tmp_path_factory.mktemp("airflow_home")
    variables = {
        **tool_env(),
        **s3.env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FGCLIP_WORKSPACE": str(workspace),
        "MLFLOW_TRACKING_URI": tracking,
    }
    variables.pop("FGCLIP_RUNTIME", None)
    _run([program("airflow"), "db", "migrate"], workspace, variables)
    return variables


def run_dag(dag_id: str, env: dict[str, str], workspace: Path, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    out = _run([sys.executable, str(RUNNER), dag_id, json.dumps(conf or {})], workspace, env)
    return json.loads(out.strip().splitlines()[-1])


def _states(summary: dict[str, Any]) -> dict[tuple[str, int], str]:
    return {(t["task_id"], t["map_index"]): t["state"] for t in summary["tasks"]}


def _result(summary: dict[str, Any], task_id: str, map_index: int = -1) -> Any:
    return next(r["value"] for r in summary["results"] if r["task_id"] == task_id and r["map_index"] == map_index)


def _commands() -> dict[str, list[str]]:
    """{task id: dvc.yaml's command} (test_dvc_dag_consistency ties this reading to DVC's)."""
    from fgclip.orchestration.pipeline import load_pipeline

    return {stage.task_id: stage.argv for stage in load_pipeline(REPO_ROOT).stages}


@pytest.fixture(scope="module")
def data_run(env, workspace) -> dict[str, Any]:
    return run_dag("fgclip_data_build", env, workspace)


def test_data_build_runs_the_dvc_commands_once_per_shard_group(data_run) -> None:
    assert data_run["state"] == "success", _states(data_run)
    for stage in FAN_OUT:
        labels = sorted(t["label"] for t in data_run["tasks"] if t["task_id"] == stage)
        assert labels == ["00000", "00001"], f"{stage}: mapped tasks are not one per shard group: {labels}"
    for task_id, argv in _commands().items():
        ran = [r["value"]["cmd"] for r in data_run["results"] if r["task_id"] == task_id]
        if task_id in FAN_OUT:
            assert sorted(ran) == sorted([*argv, "--shards", group] for group in ("00000", "00001"))
        elif ran:
            assert ran == [argv], task_id
    assert {"dataset", "qc"} <= {r["task_id"] for r in data_run["results"]}


def test_publish_puts_the_version_on_s3_and_emits_the_asset(data_run, servers, workspace, env, monkeypatch) -> None:
    from fgclip.core import storage

    s3, _ = servers
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    published = _result(data_run, "publish")
    version = published["version"]
    assert version.startswith("ds-")
    [event] = [e for e in data_run["asset_events"] if e["source_run_id"] == data_run["run_id"]]
    assert event["extra"]["version"] == version
    record = json.loads(storage.read_text(f"{DVC_REMOTE}/versions/{version}.json"))
    assert record["outs"] == published["outs"] and "data/build/captions" in record["outs"]
    assert len(storage.list_files(f"{DVC_REMOTE}/files/md5")) > 10, "dvc push put no data on the S3 remote"
    # the DAG run left the project exactly as `dvc repro` would have
    status = _run([program("dvc"), "status", "--json", "qc"], workspace, env)
    assert json.loads(status) == {}, status


def test_train_registers_the_model_with_the_gate_decision(data_run, env, workspace, servers, monkeypatch) -> None:
    commands = _commands()
    assert "register" in commands
    from mlflow import MlflowClient

    from fgclip.core import storage

    s3, tracking = servers
    version = _result(data_run, "publish")["version"]
    train = run_dag("fgclip_train", env, workspace)  # no form values: the version comes from the Asset event
    states = _states(train)
    assert train["state"] == "success", states
    assert _result(train, "resolve_dataset") == version
    for task_id, argv in commands.items():  # every train stage ran dvc.yaml's command
        ran = [r["value"]["cmd"] for r in train["results"] if r["task_id"] == task_id]
        assert ran in ([], [argv]) and (ran or task_id in {r["task_id"] for r in data_run["results"]}), task_id
    decision = _result(train, "registry_decision")
    assert decision["promoted"] is True and decision["decision"] == "first model"
    assert states[("champion_promoted", -1)] == "success" and states[("champion_kept", -1)] == "skipped"

    client = MlflowClient(tracking_uri=tracking)
    model = client.get_model_version_by_alias(decision["name"], "champion")
    assert model.version == str(decision["version"])
    assert model.tags["dataset.version"] == version
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    artifacts = storage.list_files(ARTIFACTS)
    assert any("MLmodel" in name for name in artifacts), "the registered model's artifacts are not on S3"


def test_a_failing_qc_gate_publishes_nothing_and_finished_shards_are_skipped(data_run, env, workspace) -> None:
    failed = run_dag("fgclip_data_build", env, workspace, {"qc_max_noise_upper": 0.001})
    states = _states(failed)
    assert failed["state"] == "failed"
    assert states[("qc", -1)] == "failed" and states[("publish", -1)] == "upstream_failed"
    assert not [e for e in failed["asset_events"] if e["source_run_id"] == failed["run_id"]], "a failed build published"
    # the form's value reached params.yaml, as `dvc exp run -S` would have written it
    assert yaml.safe_load((workspace / "params.yaml").read_text())["qc"]["max_noise_upper"] == 0.001
    for stage in FAN_OUT:
        report = json.loads((workspace / "reports" / f"{stage}.json").read_text())
        assert report["shards_skipped"] == report["shards"] == 1, f"{stage} redid finished shards: {report}"
