"""Every component's pod, built offline by a real KubernetesPodOperator on each of the three
pool presets, validated strictly against the Kubernetes schemas, and landing on its pool's
image, resources, node selector, tolerations, scheduler and volumes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import jsonschema
import pytest
from pydantic import ValidationError

pytest.importorskip("airflow.providers.cncf.kubernetes", reason="needs apache-airflow-providers-cncf-kubernetes")
pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (offline Kubernetes schemas)")

from fgclip.config import Params
from fgclip.orchestration.config import KubernetesConfig  # noqa: E402
from fgclip.orchestration.kubernetes import (  # noqa: E402
    build_pod_spec,
    fgclip_arguments,
    pod_operator_kwargs,
    to_dict,
)
from tests.cluster.k8s_schema import validate_core  # noqa: E402

SETTINGS = Params().kubernetes
COMPONENTS = sorted(SETTINGS.component_pools)
POOLS = ("npu", "gpu", "cpu")
SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


@pytest.fixture(autouse=True)
def _quiet_operator_logs(caplog):
    caplog.set_level(logging.WARNING)


def on_pool(pool: str) -> KubernetesConfig:
    """The default settings with every component sent to `pool`."""
    return SETTINGS.model_copy(update={"component_pools": {name: pool for name in COMPONENTS}})


def command_for(component: str) -> list[str]:
    return ["fgclip", component.replace("_", "-"), "--out", f"data/build/{component}"]


def container_of(pod: dict) -> dict:
    (container,) = pod["spec"]["containers"]
    return container


@pytest.mark.parametrize("pool", POOLS)
def test_every_component_pod_validates_and_lands_on_the_pool(pool):
    settings = on_pool(pool)
    preset = settings.pools[pool]
    for component in COMPONENTS:
        pod = build_pod_spec(component, command_for(component), settings)
        validate_core(pod)
        spec, container = pod["spec"], container_of(pod)
        where = f"{component} on {pool}"

        assert container["image"] == settings.images[preset.family], where
        resources = container["resources"]
        assert resources["requests"]["cpu"] == preset.cpu, where
        assert resources["requests"]["memory"] == resources["limits"]["memory"] == preset.memory, where
        if preset.accelerator_resource:
            count = str(preset.accelerators_per_pod)
            assert resources["requests"][preset.accelerator_resource] == count, where
            assert resources["limits"][preset.accelerator_resource] == count, where
        else:
            assert set(resources["limits"]) == {"memory"}, where
        assert spec["nodeSelector"] == preset.node_selector, where
        assert spec["tolerations"] == [
            {
                k: v
                for k, v in {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}.items()
                if v is not None
            }
            for t in preset.tolerations
        ], where
        assert spec.get("schedulerName") == preset.scheduler_name, where

        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": preset.shm_size}, where
        assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == settings.workspace_claim, where
        assert volumes["params"]["configMap"]["name"] == settings.params_configmap, where
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        assert mounts["dshm"]["mountPath"] == "/dev/shm", where
        assert mounts["workspace"]["mountPath"] == settings.workspace_path, where
        assert mounts["params"]["readOnly"] is True, where
        for mount in preset.host_mounts:
            assert volumes[mount.name]["hostPath"] == {"path": mount.host_path, "type": mount.type}, where
            assert mounts[mount.name] == {"name": mount.name, "mountPath": mount.mount_path, "readOnly": True}, where
        assert len(volumes) == 3 + len(preset.host_mounts), where

        assert pod["metadata"]["namespace"] == settings.namespace, where
        assert pod["metadata"]["labels"]["fgclip/pool"] == pool, where
        assert pod["metadata"]["name"].startswith(f"fgclip-{component.replace('_', '-')}-"), where
        assert spec["serviceAccountName"] == settings.service_account, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_pools_differ_where_they_should():
    npu, gpu, cpu = (build_pod_spec("qc", ["fgclip", "qc"], on_pool(pool)) for pool in POOLS)
    assert container_of(npu)["resources"]["limits"]["huawei.com/Ascend910"] == "1"
    assert npu["spec"]["schedulerName"] == "volcano"
    assert {"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"} in npu["spec"]["tolerations"]
    # the driver comes with the `ascend` RuntimeClass of NPU pods only, never a hostPath
    assert npu["spec"]["runtimeClassName"] == "ascend"
    assert not any("hostPath" in v for pod in (npu, gpu, cpu) for v in pod["spec"]["volumes"])
    assert "runtimeClassName" not in gpu["spec"] and "runtimeClassName" not in cpu["spec"]
    assert container_of(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "schedulerName" not in gpu["spec"]
    assert not cpu["spec"]["tolerations"] and not any("hostPath" in v for v in cpu["spec"]["volumes"])
    images = {container_of(pod)["image"] for pod in (npu, gpu, cpu)}
    assert images == {"fgclip/fgclip-npu:0.1.0", "fgclip/fgclip-gpu:0.1.0", "fgclip/fgclip-cpu:0.1.0"}


def test_default_pools_follow_the_design():
    expected = {
        "recaption": "npu",
        "detect": "gpu",
        "negatives": "npu",
        "qc": "cpu",
        "train_stage1": "npu",
        "train_stage2": "npu",
        "eval": "gpu",
        "register": "cpu",
        "dataset": "cpu",
        "init_model": "cpu",
        "publish": "cpu",
    }
    assert {component: SETTINGS.pool_for(component) for component in expected} == expected
    detect = build_pod_spec("detect", ["fgclip", "detect"], SETTINGS)
    assert container_of(detect)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_accelerator_pool_moves_accelerator_components_only():
    gpu_cluster = SETTINGS.model_copy(update={"accelerator_pool": "gpu"})
    assert gpu_cluster.pool_for("recaption") == "gpu" and gpu_cluster.pool_for("negatives") == "gpu"
    assert gpu_cluster.pool_for("qc") == "cpu"
    dev = Params.model_validate({"kubernetes": {"accelerator_pool": "cpu"}}).kubernetes
    pod = build_pod_spec("recaption", ["fgclip", "recaption"], dev)
    assert "huawei.com/Ascend910" not in container_of(pod)["resources"]["limits"]
    assert container_of(pod)["image"] == dev.images["cpu"]


def test_settings_and_credentials_come_from_references_only():
    pod = build_pod_spec("register", ["fgclip", "register"], SETTINGS)
    container = container_of(pod)
    refs = [(kind, source[kind]["name"]) for source in container["envFrom"] for kind in source]
    assert refs == [("configMapRef", "fgclip-storage"), ("configMapRef", "fgclip-mlflow"), ("secretRef", "fgclip-s3")]
    for env in build_pod_spec("recaption", ["fgclip", "recaption"], SETTINGS)["spec"]["containers"][0]["env"]:
        assert not any(word in env["name"] for word in SECRET_WORDS), env


def test_command_is_the_component_argv_with_the_mounted_params():
    args = fgclip_arguments(["fgclip", "qc", "--out", "reports/qc"], SETTINGS)
    assert args == ["--params", "/etc/fgclip/params/params.yaml", "qc", "--out", "reports/qc"]
    assert fgclip_arguments(["qc"], SETTINGS)[-1] == "qc"
    assert fgclip_arguments(["fgclip", "--params", "p.yaml", "qc"], SETTINGS) == ["--params", "p.yaml", "qc"]
    no_params = SETTINGS.model_copy(update={"params_configmap": None})
    assert fgclip_arguments(["fgclip", "qc"], no_params) == ["qc"]
    kwargs = pod_operator_kwargs("qc", ["fgclip", "qc"], no_params)
    assert "params" not in {volume.name for volume in kwargs["volumes"]}
    with pytest.raises(ValueError, match="no fgclip component"):
        fgclip_arguments(["fgclip"], SETTINGS)


def test_unknown_component_is_an_error():
    with pytest.raises(KeyError, match="no pool"):
        pod_operator_kwargs("teleport", ["fgclip", "teleport"], SETTINGS)


def test_invalid_pod_is_caught_by_strict_validation():
    pod = build_pod_spec("qc", ["fgclip", "qc"], SETTINGS)
    pod["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_core(pod)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"images": {"cpu": "fgclip/fgclip-cpu:latest", "gpu": "g:1", "npu": "n:1"}}, "pinned"),
        ({"images": {"cpu": "fgclip/fgclip-cpu", "gpu": "g:1", "npu": "n:1"}}, "pinned"),
        ({"component_pools": {"qc": "tpu"}}, "not defined"),
        ({"accelerator_pool": "tpu"}, "not defined"),
        ({"pools": {"npu": {"family": "npu", "cpu": "8", "memory": "8Gi"}}}, "accelerator_resource"),
        ({"pools": {"cpu": {"family": "cpu", "cpu": "8", "memory": "eight"}}}, "memory"),
        (
            {
                "pools": {
                    "cpu": {
                        "family": "cpu",
                        "cpu": "1",
                        "memory": "1Gi",
                        "tolerations": [{"key": "k", "operator": "Equal"}],
                    }
                }
            },
            "Equal",
        ),
    ],
)
def test_bad_kubernetes_settings_are_rejected(update, message):
    with pytest.raises(ValidationError, match=message):
        Params.model_validate({"kubernetes": update})


def test_a_shard_group_pod_runs_its_group_in_the_runs_workspace(tmp_path, monkeypatch):
    """What a mapped pod of a fanned-out stage runs once Airflow has rendered it: the stage's
    dvc.yaml command in the run's workspace, with its shard group and the group's own report."""
    from jinja2 import Environment

    from fgclip.orchestration.kubernetes import _OFFLINE_KUBECONFIG
    from fgclip.orchestration.pipeline import load_project
    from fgclip.orchestration.tasks.common import dag_macros
    from fgclip.orchestration.tasks.pods import ShardGroupPodOperator, kubernetes_task
    from tests.conftest import REPO_ROOT

    project = load_project(REPO_ROOT, committed=True)
    stage = project.pipeline.stage("detect")
    operator = kubernetes_task(project, stage, ["00004", "00005"])
    assert isinstance(operator, ShardGroupPodOperator) and operator.pool == "fgclip-gpu"
    config = tmp_path / "kubeconfig"
    config.write_text(_OFFLINE_KUBECONFIG)
    operator.config_file, operator.in_cluster = str(config), False
    run = SimpleNamespace(dag_id="fgclip_data_build")
    prepared = SimpleNamespace(xcom_pull=lambda task_ids: {"parent_run_id": "run-of-the-dag-run"})
    context = {"dag": run, "run_id": "manual__2026-01-02T03:04:05+00:00", "ti": prepared, **dag_macros()}
    operator.render_template_fields(context, Environment())
    args = operator.arguments
    assert args[:2] == ["-C", "/workspace/.fgclip/runs/fgclip_data_build/manual__2026-01-02T03_04_05_00_00"]
    assert args[2:] == stage.command(["00004", "00005"])[1:]
    assert args[-3:] == ["--shards", "00004", "00005"] and ".fgclip/groups/detect/00004-00005.json" in args
    assert operator.labels["fgclip.io/shard-group"] == "00004-00005" and context["shard_group"] == "00004-00005"
    pod = to_dict(operator.build_pod_request_obj())
    validate_core(pod)
    assert container_of(pod)["args"] == args
    env = {item["name"]: item.get("value") for item in container_of(pod)["env"]}
    assert env["FGCLIP_MLFLOW_PARENT_RUN"] == "run-of-the-dag-run"  # nested under the DAG run's MLflow run
