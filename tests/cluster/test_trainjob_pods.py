"""The pods the cluster rehearsal starts for a TrainJob (rehearsal.trainjob): the project's
TrainingRuntime with the TrainJob's patches and trainer settings, and what Kubeflow
Trainer's torch plugin and JobSet add. Checked offline; the rehearsal runs them."""

from __future__ import annotations

from fgclip.config import Params
from fgclip.orchestration.trainjob import trainjob_manifest
from rehearsal.trainjob import COMPLETION_INDEX, load_runtime, master_address, merge, node_pods, with_master_alias
from tests.cluster.test_trainjob import STAGE1


def _pods(nodes: int = 2):
    settings = Params().kubernetes.model_copy(update={"accelerator_pool": "cpu"})
    manifest = trainjob_manifest(STAGE1, settings, nodes, "fgclip-train-stage1-x")
    return manifest, node_pods(manifest)


def test_one_pod_per_node_named_and_indexed_as_jobset_does():
    _, pods = _pods(3)
    assert [pod["metadata"]["name"] for pod in pods] == [f"fgclip-train-stage1-x-node-0-{i}" for i in range(3)]
    assert [pod["metadata"]["annotations"][COMPLETION_INDEX] for pod in pods] == ["0", "1", "2"]
    assert {pod["spec"]["subdomain"] for pod in pods} == {"fgclip-train-stage1-x"}
    assert [pod["spec"]["hostname"] for pod in pods] == [pod["metadata"]["name"] for pod in pods]


def test_the_node_container_keeps_the_runtime_wiring_and_gets_the_trainjob_settings():
    manifest, pods = _pods()
    runtime = load_runtime()["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    (container,) = pods[0]["spec"]["containers"]
    # from the runtime: settings from ConfigMaps and the Secret, the working directory
    assert container["envFrom"] == runtime["containers"][0]["envFrom"] and container["workingDir"] == "/workspace"
    assert pods[0]["spec"]["automountServiceAccountToken"] is False
    # from the TrainJob: image, command, args, resources; from its patch: volumes and mounts
    trainer = manifest["spec"]["trainer"]
    assert (container["image"], container["command"], container["args"]) == (
        trainer["image"],
        ["torchrun"],
        trainer["args"],
    )
    assert container["args"][-1] == "--resume"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", "/workspace", "/etc/fgclip/params"}
    assert {v["name"] for v in pods[0]["spec"]["volumes"]} == {"dshm", "workspace", "params"}
    assert pods[0]["spec"]["securityContext"]["runAsUser"] == 1000


def test_torchrun_gets_the_trainer_plugins_variables():
    _, pods = _pods()
    env = {item["name"]: item for item in pods[1]["spec"]["containers"][0]["env"]}
    assert env["PET_NNODES"]["value"] == "2" and env["PET_NPROC_PER_NODE"]["value"] == "8"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{COMPLETION_INDEX}']"
    assert (
        env["PET_MASTER_ADDR"]["value"]
        == master_address("fgclip-train-stage1-x")
        == "fgclip-train-stage1-x-node-0-0.fgclip-train-stage1-x"
    )
    assert env["PET_MASTER_PORT"]["value"] == "29400"
    aliased = with_master_alias(pods, "fgclip-train-stage1-x", "10.0.0.5")
    assert aliased[1]["spec"]["hostAliases"] == [
        {"ip": "10.0.0.5", "hostnames": [master_address("fgclip-train-stage1-x")]}
    ]


def test_merge_keys_named_lists_by_name_and_replaces_others():
    base = {
        "a": {"b": 1, "c": [1, 2]},
        "containers": [{"name": "x", "image": "i", "env": [{"name": "A", "value": "1"}]}],
    }
    patch = {"a": {"c": [3]}, "containers": [{"name": "x", "env": [{"name": "B", "value": "2"}]}, {"name": "y"}]}
    assert merge(base, patch) == {
        "a": {"b": 1, "c": [3]},
        "containers": [
            {"name": "x", "image": "i", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "y"},
        ],
    }
