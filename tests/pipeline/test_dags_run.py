"""End to end: both DAGs with `dag.test()` on the `local` runtime, on a tiny demo world in a
scratch copy of the project, against a real MLflow server and a real S3 server (rclone),
both on loopback: the DVC remote and MLflow's artifact store are S3 buckets.

data build -> dataset version on S3 + a git tag + Asset event -> train (picks the version
from the event) -> model in the registry, logged in its training run, with its lineage;
then a run whose QC gate fails (form value) publishes nothing. Every run works in its own
git worktree of the project: the checkout's params.yaml is never written.
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

from fgclip.orchestration.pipeline import StageSpec
from fgclip.orchestration.tasks.graph import SHARD_GROUP
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
    pools = home / "pools.json"
    pools.write_text(_run([sys.executable, "-m", "fgclip.orchestration.pools"], workspace, variables))
    _run([program("airflow"), "pools", "import", str(pools)], workspace, variables)
    return variables


def run_dag(dag_id: str, env: dict[str, str], workspace: Path, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    out = _run([sys.executable, str(RUNNER), dag_id, json.dumps(conf or {})], workspace, env)
    return json.loads(out.strip().splitlines()[-1])


def _states(summary: dict[str, Any]) -> dict[tuple[str, int], str]:
    return {(t["task_id"], t["map_index"]): t["state"] for t in summary["tasks"]}


def _result(summary: dict[str, Any], task_id: str, map_index: int = -1) -> Any:
    return next(r["value"] for r in summary["results"] if r["task_id"] == task_id and r["map_index"] == map_index)


def _commands() -> dict[str, StageSpec]:
    """{task id: dvc.yaml's stage} (test_dvc_dag_consistency ties this reading to DVC's)."""
    from fgclip.orchestration.pipeline import load_pipeline

    return {stage.task_id: stage for stage in load_pipeline(REPO_ROOT, FAN_OUT).stages}


def _group_task(stage: str) -> str:
    return f"{SHARD_GROUP}.{stage}"


@pytest.fixture(scope="module")
def committed_params(workspace) -> str:
    return (workspace / "params.yaml").read_text()


@pytest.fixture(scope="module")
def data_run(env, workspace, committed_params) -> dict[str, Any]:
    return run_dag("fgclip_data_build", env, workspace)


def test_data_build_runs_each_shard_group_through_the_fanned_out_stages(data_run, workspace, env) -> None:
    assert data_run["state"] == "success", _states(data_run)
    stages = _commands()
    for stage in FAN_OUT:
        labels = sorted(t["label"] for t in data_run["tasks"] if t["task_id"] == _group_task(stage))
        assert labels == ["00000", "00001"], f"{stage}: mapped tasks are not one per shard group: {labels}"
        ran = sorted(r["value"]["cmd"] for r in data_run["results"] if r["task_id"] == _group_task(stage))
        assert ran == sorted(stages[stage].command([group]) for group in ("00000", "00001"))
    for task_id in ("dataset", "qc"):
        assert [r["value"]["cmd"] for r in data_run["results"] if r["task_id"] == task_id] == [stages[task_id].argv]


def test_the_run_works_in_its_own_workspace_and_dvc_records_it(data_run, workspace, env, committed_params) -> None:
    prepared = _result(data_run, "prepare")
    run_dir = Path(prepared["run_dir"])
    assert run_dir.parent.parent == workspace / ".fgclip" / "runs", run_dir
    # the checkout is untouched: no params rewrite, no outputs, nothing for git to show
    assert (workspace / "params.yaml").read_text() == committed_params
    assert not (workspace / "data").exists() and not (workspace / "reports").exists()
    assert _run(["git", "status", "--porcelain"], workspace, env).strip() == ""
    # DVC is the recorder: every stage the run ran is up to date, the metrics are whole
    status = json.loads(_run([program("dvc"), "status", "--json"], run_dir, env))
    ran = {"dataset", *FAN_OUT, "qc"}
    assert not set(status) & ran, f"stages the run ran are not recorded: {status}"
    for stage in FAN_OUT:
        report = json.loads((run_dir / "reports" / f"{stage}.json").read_text())
        assert report["shards"] == 2 and report["groups"] == 2, f"{stage}: {report}"
    metrics = json.loads(_run([program("dvc"), "metrics", "show", "--json"], run_dir, env))
    shown = json.dumps(metrics)
    assert '"shards": 2' in shown, shown[:2000]
    # outputs are linked from the one shared cache, never copied
    caption = next((run_dir / "data" / "build" / "captions").glob("*.jsonl"))
    assert caption.stat().st_nlink >= 2 or caption.is_symlink(), "the run's outputs are copies of the cache"
    assert (workspace / ".dvc" / "cache").is_dir()


def test_publish_tags_the_version_puts_it_on_s3_and_emits_the_asset(
    data_run, servers, workspace, env, monkeypatch
) -> None:
    from fgclip.core import storage

    s3, _ = servers
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    published = _result(data_run, "publish")
    version = published["version"]
    assert version.startswith("ds-") and published["tag"] == f"dataset/{version}"
    [event] = [e for e in data_run["asset_events"] if e["source_run_id"] == data_run["run_id"]]
    assert event["extra"]["version"] == version
    record = json.loads(storage.read_text(f"{DVC_REMOTE}/versions/{version}.json"))
    assert record["outs"] == published["outs"] and "data/build/captions" in record["outs"]
    assert record["commit"] == published["commit"]
    assert len(storage.list_files(f"{DVC_REMOTE}/files/md5")) > 10, "dvc push put no data on the S3 remote"
    # the version is a git state anyone can check out: its dvc.lock names the data
    lock = yaml.safe_load(_run(["git", "show", f"dataset/{version}:dvc.lock"], workspace, env))
    assert {"recaption", "detect", "negatives", "qc"} <= set(lock["stages"])


def test_train_registers_the_model_from_its_run_with_its_lineage(
    data_run, env, workspace, servers, monkeypatch, tmp_path
) -> None:
    from mlflow import MlflowClient

    from fgclip.core import storage

    s3, tracking = servers
    version = _result(data_run, "publish")["version"]
    train = run_dag("fgclip_train", env, workspace)  # no form values: the version comes from the Asset event
    states = _states(train)
    assert train["state"] == "success", states
    assert _result(train, "resolve_dataset") == version
    decision = _result(train, "registry_decision")
    assert decision["promoted"] is True and decision["decision"] == "first model"
    assert states[("champion_promoted", -1)] == "success" and states[("champion_kept", -1)] == "skipped"
    assert states[("approve_champion", -1)] == "skipped"
    run_dir = Path(_result(train, "prepare")["run_dir"])
    status = json.loads(_run([program("dvc"), "status", "--json"], run_dir, env))
    assert status == {}, f"the training run left stages out of DVC: {status}"
    assert decision["tag"] == f"model/{decision['name']}/v{decision['version']}"

    client = MlflowClient(tracking_uri=tracking)
    model = client.get_model_version_by_alias(decision["name"], "champion")
    assert model.version == str(decision["version"])
    # lineage: version -> training run -> the DAG run's run; dataset version -> data build's runs
    training = client.get_run(model.run_id)
    assert training.data.tags.get("component") == "train" and training.data.tags.get("stage") == "2"
    parent = _result(train, "prepare")["parent_run_id"]
    assert training.data.tags["mlflow.parentRunId"] == parent == model.tags["pipeline.mlflow_run"]
    assert model.tags["dataset.version"] == version
    data_parent = model.tags["dataset.mlflow_run"]
    assert data_parent == _result(data_run, "prepare")["parent_run_id"]
    children = client.search_runs(
        [client.get_run(data_parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{data_parent}'"
    )
    components = sorted(run.data.tags.get("component") for run in children)
    assert components.count("recaption") == 2 and "qc" in components, components  # one run per shard group
    assert client.get_run(data_parent).info.status == "FINISHED"
    # the logged model is the Hugging Face folder alone, with an input example
    import mlflow

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    # Resolved through this test's client: a `models:/` URI is resolved by a client of
    # mlflow's global tracking URI, which an earlier test in this process may have set.
    location = client.get_model_version_download_uri(model.name, model.version)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path), tracking_uri=tracking)
    )
    files = [path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file()]
    assert any(name.endswith("fgclip_model/config.json") for name in files), files
    assert any(name.endswith(".safetensors") for name in files), files
    weights = [name for name in files if not name.startswith("code/")]  # code/: the fgclip package
    assert not [name for name in weights if "checkpoint" in name or "optim" in name], "optimiser states were logged"
    assert any(name.startswith("input_example") or "/input_example" in name for name in files), files
    assert any(name.startswith("s3://mlflow/") or "MLmodel" in name for name in storage.list_files(ARTIFACTS))


def test_a_failing_qc_gate_publishes_nothing_and_keeps_the_checkout(data_run, env, workspace, committed_params) -> None:
    failed = run_dag("fgclip_data_build", env, workspace, {"qc_max_noise_upper": 0.001})
    states = _states(failed)
    assert failed["state"] == "failed"
    assert states[("qc", -1)] == "failed" and states[("publish", -1)] == "upstream_failed"
    assert not [e for e in failed["asset_events"] if e["source_run_id"] == failed["run_id"]], "a failed build published"
    # the form's value reached the run's params.yaml, never the checkout's
    run_dir = Path(_result(failed, "prepare")["run_dir"])
    assert yaml.safe_load((run_dir / "params.yaml").read_text())["qc"]["max_noise_upper"] == 0.001
    assert (workspace / "params.yaml").read_text() == committed_params
