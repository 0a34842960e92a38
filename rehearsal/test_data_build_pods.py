"""The data build DAG on the `kubernetes` runtime with its pods run for real: every stage,
every shard group and the control steps (prepare, shard groups, merge reports, publish) as
the pods the KubernetesPodOperators build, in the CPU image, as uid 1000, on a volume
standing in for the workspace claim, reading the ConfigMaps and the Secret the manifests
reference.

The DAG run works in its own run workspace on the volume (`<runs_dir>/<dag>/<run>`, a git
worktree the prepare pod makes). Its outputs there must equal what `dvc repro` makes on this
machine from the same params, and `dvc status` in that workspace afterwards must say
everything is up to date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fgclip.orchestration.pipeline import load_pipeline
from fgclip.orchestration.tasks.graph import SHARD_GROUP
from rehearsal.dag_runner import result_of
from rehearsal.podman import REPO, Podman

FAN_OUT = ("recaption", "detect", "negatives")
CONTROL_STEPS = ("prepare", "shard_groups", "merge_reports", "publish")
RUNS_DIR = ".fgclip/runs"


def _group_task(stage: str) -> str:
    """The task id of a fanned-out stage: a task of the mapped shard-group task group."""
    return f"{SHARD_GROUP}.{stage}"


def _states(summary: dict[str, Any]) -> dict[tuple[str, int], str]:
    return {(task["task_id"], task["map_index"]): task["state"] for task in summary["tasks"]}


def _lock(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def _hashes(entries: list[dict[str, Any]] | None) -> dict[str, str]:
    return {entry["path"]: entry.get("md5") for entry in entries or []}


def test_every_data_pod_runs_and_the_dag_succeeds(data_build: Any, report: dict[str, Any]) -> None:
    summary = data_build.summary
    failed = {key: state for key, state in _states(summary).items() if state != "success"}
    assert summary["state"] == "success" and not failed, f"failed tasks {failed}; log: {summary['log']}"
    data_stages = [stage.task_id for stage in load_pipeline(REPO).split("qc")[0]]
    expected = {_group_task(name) if name in FAN_OUT else name for name in data_stages} | set(CONTROL_STEPS)
    ran = {task["task_id"] for task in summary["tasks"]}
    assert ran == expected, f"tasks {sorted(ran)}, expected {sorted(expected)}"
    for stage in FAN_OUT:
        labels = sorted(task["label"] for task in summary["tasks"] if task["task_id"] == _group_task(stage))
        assert labels == ["00000", "00001"], f"{stage}: not one pod per shard group: {labels}"
    groups = result_of(summary, "shard_groups")
    assert groups == [["00000"], ["00001"]]  # the control pod's XCom, read from its sidecar
    # the prepare pod made the run's workspace on the volume, under the runs folder
    assert data_build.run_workdir.startswith(f"/workspace/{RUNS_DIR}/fgclip_data_build/"), data_build.prepared
    assert (data_build.run_files / "dvc.yaml").is_file(), f"no run workspace at {data_build.run_files}"
    assert data_build.prepared.get("parent_run_id"), data_build.prepared
    # the checkout on the volume is never written: no outputs there, only in the run's workspace
    assert not (data_build.volume_files / "data").exists() and not (data_build.volume_files / "reports").exists()
    merged = result_of(summary, "merge_reports")
    assert sorted(merged) == sorted(FAN_OUT) and all(merged[stage]["shards"] == 2 for stage in FAN_OUT), merged
    published = result_of(summary, "publish")
    assert published["version"].startswith("ds-") and published["tag"] == f"dataset/{published['version']}"
    assert [e["extra"]["version"] for e in summary["asset_events"]] == [published["version"]]
    pods = len(data_stages) - len(FAN_OUT) + 2 * len(FAN_OUT) + len(CONTROL_STEPS)
    assert pods == len(summary["tasks"]), "every task of the DAG is a pod on the kubernetes runtime"
    report["data_build"] = {
        "pods": pods,
        "dag_seconds": data_build.seconds,
        "dvc_repro_reference_seconds": data_build.reference_seconds,
        "dataset_version": published["version"],
    }


#: Counts reports of the fanned-out stages (DVC metrics, not data): each shard group's pod
#: writes its group's report and the merge_reports pod sums them into the file dvc.yaml
#: names, so its counts equal those of `dvc repro`'s one run over every shard; their run
#: times (and so the file's hash) differ in any two runs, and the merged one says how many
#: groups it sums.
RUN_REPORTS = {f"reports/{stage}.json" for stage in FAN_OUT}
TIMING_KEYS = {"seconds", "items_per_second"}
MERGE_KEYS = {"groups"}


def test_the_pods_tracked_to_the_mlflow_server(data_build: Any, servers: Any) -> None:
    """MLFLOW_TRACKING_URI reached every component pod from the fgclip-mlflow ConfigMap."""
    import mlflow

    _, tracking = servers
    client = mlflow.MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("fgclip-data").experiment_id])
    components = sorted(run.data.tags.get("component", run.info.run_name) for run in runs)
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    for stage in FAN_OUT:
        assert components.count(stage) == 2, f"{stage}: {components}"  # one run per shard group's pod
    assert "qc" in components and "dataset" in components, components  # the dataset stage made the demo world
    # every component pod's run is nested under the DAG run's run (the prepare pod's)
    parent = data_build.prepared["parent_run_id"]
    children = [run for run in runs if run.info.run_id != parent]
    assert children and all(run.data.tags.get("mlflow.parentRunId") == parent for run in children), [
        (run.info.run_name, run.data.tags.get("mlflow.parentRunId")) for run in children
    ]


def test_pod_outputs_equal_dvc_repro(data_build: Any) -> None:
    """The published dvc.lock (what `dvc commit` recorded in the run workspace) against the
    one `dvc repro` wrote: the same deps, params and outputs, hash for hash (the data, the QC
    report, gate, sample and gallery); the fan-out's counts reports equal but for run times."""
    pods, reference = _lock(data_build.run_files), _lock(data_build.reference)
    stages = [stage.name for stage in load_pipeline(REPO).split("qc")[0]]
    assert set(stages) <= set(pods), f"the publish pod recorded no lock entries for {set(stages) - set(pods)}"
    compared = 0
    for name in stages:
        assert pods[name]["cmd"] == reference[name]["cmd"], name
        assert pods[name].get("params") == reference[name].get("params"), f"{name}: params differ"
        assert _hashes(pods[name].get("deps")) == _hashes(reference[name].get("deps")), f"{name}: deps differ"
        made, expected = _hashes(pods[name].get("outs")), _hashes(reference[name].get("outs"))
        assert set(made) == set(expected), f"{name}: other outputs"
        for path in set(made) - RUN_REPORTS:
            assert made[path] == expected[path], f"{name}: {path} differs from dvc repro's"
            compared += 1
    assert compared >= 10
    for path in RUN_REPORTS:  # merged over the shard groups: dvc repro's counts, every shard
        made = json.loads((data_build.run_files / path).read_text())
        whole = json.loads((data_build.reference / path).read_text())
        assert set(made) == set(whole) | MERGE_KEYS and made["groups"] == 2, (path, made)
        counts = {key: value for key, value in made.items() if key not in TIMING_KEYS | MERGE_KEYS}
        assert counts == {key: value for key, value in whole.items() if key not in TIMING_KEYS}, (path, made, whole)
        assert whole["shards"] == 2, (path, whole)
    # and the files themselves, beyond what DVC hashes: every shard's records, rejects and manifests
    for folder in ("data/build/captions", "data/build/regions", "data/build/negatives"):
        made = sorted(
            p.relative_to(data_build.run_files) for p in (data_build.run_files / folder).rglob("*") if p.is_file()
        )
        expected = sorted(
            p.relative_to(data_build.reference) for p in (data_build.reference / folder).rglob("*") if p.is_file()
        )
        assert made == expected and made, folder
        for relative in made:
            assert (data_build.run_files / relative).read_bytes() == (data_build.reference / relative).read_bytes(), (
                relative
            )


def test_dvc_status_is_up_to_date_in_the_run_workspace(data_build: Any, podman: Podman, cpu_image: str) -> None:
    status = podman.text(
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "--volume",
        f"{data_build.claim}:/workspace",
        "--workdir",
        data_build.run_workdir,
        "--entrypoint",
        "dvc",
        cpu_image,
        "status",
        "--json",
        *[stage.name for stage in load_pipeline(REPO).split("qc")[0]],
        timeout=600,
    )
    assert json.loads(status.strip().splitlines()[-1]) == {}, status


def test_the_dataset_version_is_on_the_s3_remote(data_build: Any, servers: Any) -> None:
    s3, _ = servers
    published = result_of(data_build.summary, "publish")
    record = s3.root / "fgclip-data" / "dvc" / "versions" / f"{published['version']}.json"
    assert record.is_file(), f"no version record {record}"
    assert json.loads(record.read_text())["outs"] == published["outs"]
