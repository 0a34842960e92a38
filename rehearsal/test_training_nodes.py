"""Multi-node training rehearsed: the pods a Kubeflow Trainer TrainJob of this project's
runtime starts for stage 1 on 2 nodes (rehearsal.trainjob), as containers on one podman
network, in the run workspace the data build left on the workspace volume (its starting
model made by the init_model pod first), with the DAG run's MLflow run handed to the nodes
as the TrainJob's env, as the train DAG does. Stage 1 trains across them with gloo; its
loss at every step must match a one-process run on the same global batch
(rehearsal.global_batch). Node 1 is killed mid-run: the job fails, and the nodes started
again resume from the last checkpoint and finish with the losses of an uninterrupted run.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fgclip.config import Params
from fgclip.core.dataset import load_manifest
from fgclip.core.tracking import PARENT_RUN_ENV, PARENT_RUN_TAG
from fgclip.orchestration.kubernetes import build_pod_spec, fgclip_arguments
from fgclip.orchestration.pipeline import load_pipeline
from fgclip.orchestration.trainjob import trainjob_manifest
from rehearsal.podman import REPO, LocalNamespace, PodFailed, Podman
from rehearsal.trainjob import node_pods, with_master_alias
from rehearsal.world import TRAIN_NODES

NETWORK = "fgclip-rehearsal"
TRAINJOB = "fgclip-train-stage1-rehearsal"
#: The tracking store of the training pods: on the workspace volume (the nodes' network
#: does not reach this machine's loopback; the server faults are rehearsed in test_server_faults).
TRACKING_DB = "rehearsal-train-mlflow.db"
LOSS_TOLERANCE = 1e-4  # fp32: two ranks and one process differ by float rounding only
NODE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def train_namespace(
    namespace: LocalNamespace, podman: Podman, scratch: Path
) -> Iterator[tuple[LocalNamespace, list[str]]]:
    """The data namespace's ConfigMaps and Secret, on a podman network of its own; and the
    addresses the nodes get on it."""
    if podman.exists("network", NETWORK):
        podman("network", "rm", "--force", NETWORK)
    podman("network", "create", NETWORK)  # podman picks a free subnet
    subnet = ipaddress.ip_network(
        podman.text("network", "inspect", NETWORK, "--format", "{{range .Subnets}}{{.Subnet}}{{end}}").strip()
    )
    configmaps = json.loads(json.dumps(namespace.configmaps))
    configmaps["fgclip-mlflow"]["MLFLOW_TRACKING_URI"] = f"sqlite:////workspace/{TRACKING_DB}"
    workdir = scratch / "train-namespace"
    workdir.mkdir()
    space = LocalNamespace(workdir, configmaps=configmaps, network=NETWORK, image_stand_ins=namespace.image_stand_ins)
    yield space, [str(subnet.network_address + 10 + index) for index in range(TRAIN_NODES)]
    podman("network", "rm", "--force", NETWORK, check=False)


def _mountpoint(podman: Podman, volume: str) -> Path:
    return Path(podman.text("volume", "inspect", volume, "--format", "{{.Mountpoint}}").strip())


def _dataset_images(workspace: Path) -> str:
    """The image shard folder the data build's dataset stage pinned (relative to its workspace)."""
    return load_manifest(workspace / "data" / "dataset" / "manifest.json").images


def _latest_checkpoint(workspace: Path) -> int:
    latest = workspace / "models" / "stage1" / "checkpoints" / "latest"
    try:
        return int(latest.read_text().strip().removeprefix("step"))
    except (FileNotFoundError, ValueError):
        return 0


#: The DAG run's MLflow run, as the train DAG's prepare step starts it (made in a pod: the
#: tracking store on the volume is the pods' user's).
PARENT_RUN_SCRIPT = """
import mlflow
client = mlflow.MlflowClient()
experiment = client.get_experiment_by_name("fgclip-train")
experiment_id = experiment.experiment_id if experiment else client.create_experiment("fgclip-train")
print(client.create_run(experiment_id, run_name="fgclip_train rehearsal").info.run_id)
"""


def _parent_run(podman: Podman, claim: str, image: str, tracking: str) -> str:
    out = podman.text(
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "--volume",
        f"{claim}:/workspace",
        "--env",
        f"MLFLOW_TRACKING_URI={tracking}",
        "--entrypoint",
        "python",
        image,
        "-c",
        PARENT_RUN_SCRIPT,
        timeout=300,
    )
    return out.strip().splitlines()[-1]


def _losses_by_run(db: Path, parent: str) -> list[dict[int, float]]:
    """Per stage-1 MLflow run nested under the DAG run's run `parent` (oldest first): step ->
    logged loss."""
    assert db.is_file(), f"the training nodes logged nothing to {db} (MLFLOW_TRACKING_URI from fgclip-mlflow)"
    with sqlite3.connect(db) as connection:
        runs = connection.execute(
            "SELECT runs.run_uuid FROM runs JOIN experiments ON runs.experiment_id = experiments.experiment_id "
            "JOIN tags ON tags.run_uuid = runs.run_uuid "
            "WHERE experiments.name = 'fgclip-train' AND tags.key = ? AND tags.value = ? ORDER BY runs.start_time",
            (PARENT_RUN_TAG, parent),
        ).fetchall()
        out = []
        for (run,) in runs:
            rows = connection.execute(
                "SELECT step, value FROM metrics WHERE run_uuid = ? AND key = 'loss'", (run,)
            ).fetchall()
            steps = [step for step, _ in rows]
            assert len(steps) == len(set(steps)), f"run {run}: a step logged twice"
            out.append(dict(rows))
    return out


def _start_nodes(space: LocalNamespace, pods: list[dict[str, Any]], ips: list[str]) -> list[Any]:
    return [space.start_pod(pod, ip=ip) for pod, ip in zip(pods, ips)]


def test_two_nodes_match_one_process_and_resume_after_a_node_is_killed(
    data_build: Any,
    train_namespace: tuple[LocalNamespace, list[str]],
    params: dict[str, Any],
    podman: Podman,
    report: dict[str, Any],
    scratch: Path,
    timer: Any,
    cpu_image: str,
) -> None:
    space, ips = train_namespace
    settings = Params.model_validate(params).kubernetes
    pipeline = load_pipeline(REPO)
    # the data build's run workspace: the nodes train on its data, in it (`fgclip -C <it>`)
    workdir = data_build.run_workdir
    volume = _mountpoint(podman, data_build.claim)
    workspace = volume / data_build.run_files.relative_to(data_build.volume_files)
    assert (workspace / "data" / "build" / "captions").is_dir(), f"no data build outputs in {workspace}"
    figures: dict[str, Any] = {"nodes": TRAIN_NODES}

    init = pipeline.stage("init_model")
    init_pod = build_pod_spec(init.base_name, init.command(), settings)
    init_pod["spec"]["containers"][0]["args"] = fgclip_arguments(init.command(), settings, workdir)  # as a DAG task
    clock = timer()
    space.run_pod(init_pod, timeout_s=NODE_TIMEOUT_S)
    figures["init_model_pod_seconds"] = clock.seconds()

    parent = _parent_run(podman, data_build.claim, cpu_image, space.configmaps["fgclip-mlflow"]["MLFLOW_TRACKING_URI"])
    stage = pipeline.stage("train_stage1")
    manifest = trainjob_manifest(
        stage.command(), settings, TRAIN_NODES, TRAINJOB, workdir=workdir, env={PARENT_RUN_ENV: parent}
    )
    pods = with_master_alias(node_pods(manifest), TRAINJOB, ips[0])
    node_args = pods[0]["spec"]["containers"][0]["args"]
    assert node_args[node_args.index("-C") + 1] == workdir, node_args  # the TrainJob runs in the run's workspace
    recipe = Params.model_validate(params).train.recipe_for(1)
    total_steps = recipe.epochs * 16 // (recipe.batch_size * TRAIN_NODES)  # 2 shards x 8 images
    every = params["train"]["checkpoint_every"]

    # attempt 1: node 1 is killed once a checkpoint past the first is on the volume
    clock = timer()
    running = _start_nodes(space, pods, ips)
    killed_after = 0
    while time.monotonic() - running[0].started < NODE_TIMEOUT_S:
        killed_after = _latest_checkpoint(workspace)
        if killed_after >= 2 * every:
            space.kill_pod(running[1].name)
            break
        time.sleep(0.05)
    assert every * 2 <= killed_after < total_steps, (
        f"the run was not killed mid-run (checkpoint {killed_after} of {total_steps} steps)"
    )
    failures = []
    with pytest.raises(PodFailed) as failed:
        space.wait_pod(running[1], timeout_s=60)
    failures.append(str(failed.value))
    # The nodes are one Indexed Job with backoffLimit 0: its failed pod fails the Job, and the
    # Job controller terminates the pods still running (node 0 would otherwise wait in a gloo
    # collective for a peer that is gone, up to train.dist_timeout_s).
    space.terminate_pod(running[0].name, grace_s=30)
    with pytest.raises(PodFailed) as failed:
        space.wait_pod(running[0], timeout_s=120)
    failures.append(str(failed.value))
    figures.update(
        first_attempt_seconds=clock.seconds(), killed_after_checkpoint=killed_after, first_attempt_failures=failures
    )

    # attempt 2: the nodes start again (a retry of the TrainJob) and resume
    clock = timer()
    for node in _start_nodes(space, pods, ips):
        space.wait_pod(node, timeout_s=NODE_TIMEOUT_S)
    figures["second_attempt_seconds"] = clock.seconds()
    summary = json.loads((workspace / "models" / "stage1" / "training.json").read_text())
    assert summary["steps"] == total_steps and summary["world_size"] == TRAIN_NODES

    runs = _losses_by_run(volume / TRACKING_DB, parent)
    assert len(runs) == 2, f"expected the killed run and the resumed one under the DAG run's run, got {len(runs)} runs"
    first, resumed = runs
    assert min(resumed) == killed_after + 1 and max(resumed) == total_steps, (
        f"the resumed run did not continue after checkpoint {killed_after}: steps {min(resumed)}..{max(resumed)}"
    )
    redone = sorted(set(first) & set(resumed))  # steps the killed run made after its last checkpoint
    for step in redone:
        assert resumed[step] == pytest.approx(first[step], abs=1e-6), f"step {step} differs after the resume"
    multi_node = {**{step: loss for step, loss in first.items() if step <= killed_after}, **resumed}
    assert sorted(multi_node) == list(range(1, total_steps + 1))

    reference_file = scratch / "reference-losses.json"
    clock = timer()
    from tests.conftest import tool_env

    env = {**tool_env(), "PYTHONPATH": f"{REPO}:{tool_env()['PYTHONPATH']}"}
    params_file = scratch / "train-params.yaml"
    params_file.write_text(space.configmaps[settings.params_configmap]["params.yaml"])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rehearsal.global_batch",
            "--params",
            str(params_file),
            "--init",
            str(workspace / "models" / "base"),
            "--images",
            str(workspace / _dataset_images(workspace)),
            "--captions",
            str(workspace / "data" / "build" / "captions"),
            "--ranks",
            str(TRAIN_NODES),
            "--out",
            str(reference_file),
        ],
        cwd=REPO,
        env=env,
        check=True,
        timeout=900,
        capture_output=True,
    )
    figures["one_process_reference_seconds"] = clock.seconds()
    reference = json.loads(reference_file.read_text())["losses"]
    differences = [abs(multi_node[step] - reference[step - 1]) for step in range(1, total_steps + 1)]
    figures.update(
        steps=total_steps,
        max_loss_difference=max(differences),
        first_loss=reference[0],
        last_loss=reference[-1],
        redone_steps_after_resume=redone,
    )
    report["training_nodes"] = figures
    assert max(differences) <= LOSS_TOLERANCE, (
        f"two nodes and one process disagree: {[(s + 1, d) for s, d in enumerate(differences) if d > LOSS_TOLERANCE]}"
    )
    assert reference[-1] < reference[0], "the reference did not learn"
