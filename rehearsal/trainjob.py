"""The pods a Kubeflow Trainer TrainJob starts, worked out on this machine: the project's
TrainingRuntime (k8s/base/training-runtime.yaml) with the TrainJob's runtimePatches and
trainer settings applied, and what Trainer's torch plugin and JobSet add to each node's pod.

Modelled on Kubeflow Trainer v2.x (v1alpha1 API) and JobSet, as their sources have it:

- the runtime's replicated job `node` becomes one Indexed Job of `numNodes` pods, named
  `<trainjob>-node-0-<index>`, each with hostname = that name and the TrainJob's name as
  subdomain (a headless Service), and the annotation
  `batch.kubernetes.io/job-completion-index: <index>`;
- the trainer container `node` gets the TrainJob's image, command, args, env and
  resourcesPerNode, and the torch plugin's variables, which torchrun reads as its defaults:
  PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (from that annotation), PET_MASTER_ADDR
  (`<trainjob>-node-0-0.<trainjob>`) and PET_MASTER_PORT (29400), plus container port 29400;
- runtimePatches merge into the runtime's template: maps key by key, lists of named objects
  (replicatedJobs, containers, volumes, volumeMounts, env) by name, other lists replaced.

The headless Service's DNS name of node 0 is given to every pod as a host alias (podman
networks resolve pod names, not `name.subdomain`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rehearsal.podman import REPO

RUNTIME_FILE = REPO / "k8s" / "base" / "training-runtime.yaml"
NODE = "node"
TRAINER_PORT = 29400
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
NAMED_LISTS = {"replicatedJobs", "containers", "initContainers", "volumes", "volumeMounts", "env", "ports"}


def load_runtime(path: Path = RUNTIME_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """A strategic-merge-like merge (see the module doc)."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = dict(base)
        for name, value in patch.items():
            out[name] = merge(base.get(name), value, name) if name in base else copy.deepcopy(value)
        return out
    if key in NAMED_LISTS and isinstance(base, list) and isinstance(patch, list):
        out = [copy.deepcopy(item) for item in base]
        index = {item.get("name", item.get("containerPort")): i for i, item in enumerate(out)}
        for item in patch:
            name = item.get("name", item.get("containerPort"))
            if name in index:
                out[index[name]] = merge(out[index[name]], item)
            else:
                index[name] = len(out)
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def node_pod_name(trainjob: str, index: int) -> str:
    return f"{trainjob}-{NODE}-0-{index}"


def master_address(trainjob: str) -> str:
    return f"{node_pod_name(trainjob, 0)}.{trainjob}"


def node_pods(trainjob: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One Pod spec per training node of `trainjob`, in node order."""
    runtime = runtime or load_runtime()
    name = trainjob["metadata"]["name"]
    spec = trainjob["spec"]
    ref = spec["runtimeRef"]
    if ref["name"] != runtime["metadata"]["name"] or ref.get("kind", "ClusterTrainingRuntime") != runtime["kind"]:
        raise ValueError(
            f"TrainJob {name} references {ref}, not the runtime {runtime['kind']}/{runtime['metadata']['name']}"
        )
    template = runtime["spec"]["template"]
    for patch in spec.get("runtimePatches") or []:
        template = merge(template, patch["trainingRuntimeSpec"]["template"])
    (job,) = [rjob for rjob in template["spec"]["replicatedJobs"] if rjob["name"] == NODE]
    pod_template = job["template"]["spec"]["template"]
    trainer = spec["trainer"]
    nodes = int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)
    procs = trainer.get("numProcPerNode", runtime["spec"]["mlPolicy"].get("torch", {}).get("numProcPerNode", "auto"))
    injected = [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        },
        {"name": "PET_MASTER_ADDR", "value": master_address(name)},
        {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
    ]
    container_patch = {
        "name": NODE,
        "image": trainer["image"],
        "command": trainer.get("command"),
        "args": trainer.get("args"),
        "env": [*(trainer.get("env") or []), *injected],
        "resources": trainer.get("resourcesPerNode"),
        "ports": [{"containerPort": TRAINER_PORT}],
    }
    pod_spec = merge(
        pod_template["spec"], {"containers": [{k: v for k, v in container_patch.items() if v is not None}]}
    )
    labels = {**(pod_template.get("metadata", {}).get("labels") or {}), JOBSET_NAME: name}
    pods = []
    for index in range(nodes):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": node_pod_name(name, index),
                "labels": dict(labels),
                "annotations": {COMPLETION_INDEX: str(index)},
            },
            "spec": {
                **copy.deepcopy(pod_spec),
                "hostname": node_pod_name(name, index),
                "subdomain": name,
                "restartPolicy": "Never",
            },
        }
        pods.append(pod)
    return pods


def with_master_alias(pods: list[dict[str, Any]], trainjob: str, master_ip: str) -> list[dict[str, Any]]:
    """The headless Service's name of node 0 as a host alias in every pod."""
    out = copy.deepcopy(pods)
    for pod in out:
        pod["spec"]["hostAliases"] = [{"ip": master_ip, "hostnames": [master_address(trainjob)]}]
    return out
