"""The Kubernetes runtime: where each component's pod lands, and multi-node training.

- `pod_operator_kwargs(component, argv, settings)`: the arguments of a KubernetesPodOperator
  that runs one `fgclip` command on the component's pool (image of the pool's accelerator
  family, resources, node selector, tolerations, scheduler, /dev/shm, driver mounts, the
  shared workspace, params.yaml, and S3/MLflow settings from ConfigMaps and Secrets).
- `build_pod_spec(...)`: the same pod as a plain manifest (what the operator would create).

Multi-node training (a Kubeflow Trainer TrainJob and its operator) is in trainjob.py and
builds on the pod pieces here.

`settings` is the `kubernetes` section of the config (`fgclip.config.KubernetesConfig`).
Nothing here talks to a cluster except the operator's `execute`; the rest builds specs, so
tests render and validate them offline.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from fgclip.orchestration.config import KubernetesConfig, PoolPreset

PROGRAM = "fgclip"
PART_OF = {"app.kubernetes.io/part-of": "fgclip"}
COMPONENT_LABEL = "app.kubernetes.io/component"
POOL_LABEL = "fgclip/pool"
SHM_VOLUME, WORKSPACE_VOLUME, PARAMS_VOLUME = "dshm", "workspace", "params"
PARAMS_KEY = "params.yaml"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63
_SERIALIZER = ApiClient()


def to_dict(obj: Any) -> Any:
    """A kubernetes client model (or a structure of them) as the API's JSON (camelCase)."""
    return _SERIALIZER.sanitize_for_serialization(obj)


# --- the command -------------------------------------------------------------------------


def fgclip_arguments(argv: Sequence[str], settings: KubernetesConfig, workdir: str | None = None) -> list[str]:
    """The arguments after `fgclip`: the images' entrypoint is `fgclip`, so a leading
    program name is dropped. In a DAG run (`workdir`: its run workspace on the volume) the
    command runs there and reads that run's params.yaml; otherwise the cluster's params.yaml
    (mounted from a ConfigMap) is named explicitly, or the CLI would silently read defaults
    from the empty workspace."""
    args = [str(part) for part in argv]
    if args and Path(args[0]).name == PROGRAM:
        args = args[1:]
    if not args:
        raise ValueError("argv holds no fgclip component command")
    if workdir:
        return ["-C", workdir, *args]
    if settings.params_configmap and "--params" not in args:
        args = ["--params", f"{settings.params_mount_path}/{PARAMS_KEY}", *args]
    return args


def run_workdir(settings: KubernetesConfig, runs_dir: str, key_template: str) -> str:
    """A DAG run's workspace as a pod sees it (on the workspace volume)."""
    return f"{settings.workspace_path.rstrip('/')}/{runs_dir.strip('/')}/{key_template}"


def resource_name(component: str) -> str:
    """`train_stage1` -> `fgclip-train-stage1` (pod and label values take no underscores)."""
    name = f"{PROGRAM}-{component.replace('_', '-').lower()}"
    if not DNS_LABEL.match(name) or len(name) > DNS_LABEL_MAX:
        raise ValueError(f"component {component!r} does not make a valid Kubernetes name ({name!r})")
    return name


def workload_labels(component: str, pool: str) -> dict[str, str]:
    return {**PART_OF, COMPONENT_LABEL: resource_name(component), POOL_LABEL: pool}


# --- pod pieces shared by component pods and training nodes ----------------------------------


def pod_volumes(settings: KubernetesConfig, preset: PoolPreset) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    volumes = [
        # Docker's 64 MiB /dev/shm breaks DataLoader workers and NCCL/HCCL: a RAM-backed one.
        k8s.V1Volume(
            name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=preset.shm_size)
        ),
        k8s.V1Volume(
            name=WORKSPACE_VOLUME,
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.workspace_claim),
        ),
    ]
    mounts = [
        k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
        k8s.V1VolumeMount(name=WORKSPACE_VOLUME, mount_path=settings.workspace_path),
    ]
    if settings.params_configmap:
        volumes.append(
            k8s.V1Volume(
                name=PARAMS_VOLUME,
                config_map=k8s.V1ConfigMapVolumeSource(
                    name=settings.params_configmap, items=[k8s.V1KeyToPath(key=PARAMS_KEY, path=PARAMS_KEY)]
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name=PARAMS_VOLUME, mount_path=settings.params_mount_path, read_only=True))
    for mount in preset.host_mounts:
        volumes.append(
            k8s.V1Volume(name=mount.name, host_path=k8s.V1HostPathVolumeSource(path=mount.host_path, type=mount.type))
        )
        mounts.append(k8s.V1VolumeMount(name=mount.name, mount_path=mount.mount_path, read_only=True))
    return volumes, mounts


def pod_tolerations(preset: PoolPreset) -> list[k8s.V1Toleration]:
    return [
        k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in preset.tolerations
    ]


def pod_resources(preset: PoolPreset, *, accelerators: int, cpu: str, memory: str) -> k8s.V1ResourceRequirements:
    requests = {"cpu": cpu, "memory": memory}
    # No CPU limit (throttling slows data loading for nothing); memory and devices are hard.
    limits = {"memory": memory}
    if preset.accelerator_resource and accelerators:
        requests[preset.accelerator_resource] = limits[preset.accelerator_resource] = str(accelerators)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def pod_env(preset: PoolPreset) -> list[k8s.V1EnvVar]:
    return [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(preset.env.items())]


def pod_env_from(settings: KubernetesConfig) -> list[k8s.V1EnvFromSource]:
    # Not optional: a missing ConfigMap or Secret stops the pod at start, loudly.
    return [
        k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=name)) for name in settings.env_configmaps
    ] + [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in settings.env_secrets]


def pod_security(settings: KubernetesConfig) -> k8s.V1PodSecurityContext:
    # Together with the container context this meets the 'restricted' Pod Security Standard.
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=settings.run_as_user,
        run_as_group=settings.run_as_user,
        fs_group=settings.run_as_user,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]))


# --- component pods --------------------------------------------------------------------------


def pod_operator_kwargs(
    component: str, argv: Sequence[str], settings: KubernetesConfig, workdir: str | None = None
) -> dict[str, Any]:
    """KubernetesPodOperator keyword arguments (all but task_id) for one component command
    (`workdir`: the DAG run's workspace it runs in)."""
    pool = settings.pool_for(component)
    preset = settings.pools[pool]
    volumes, mounts = pod_volumes(settings, preset)
    kwargs: dict[str, Any] = {
        "name": resource_name(component),
        "random_name_suffix": True,
        "namespace": settings.namespace,
        "image": settings.images[preset.family],
        "image_pull_policy": settings.image_pull_policy,
        "arguments": fgclip_arguments(argv, settings, workdir),
        "labels": workload_labels(component, pool),
        "container_resources": pod_resources(
            preset, accelerators=preset.accelerators_per_pod, cpu=preset.cpu, memory=preset.memory
        ),
        "node_selector": dict(preset.node_selector),
        "tolerations": pod_tolerations(preset),
        "volumes": volumes,
        "volume_mounts": mounts,
        "env_vars": pod_env(preset),
        "env_from": pod_env_from(settings),
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,  # components never call the Kubernetes API
        "security_context": pod_security(settings),
        "container_security_context": container_security(),
        "startup_timeout_seconds": settings.startup_timeout_s,
        "get_logs": True,
        "durable": True,  # a restarted worker reattaches to the running pod
        "on_finish_action": "delete_succeeded_pod",  # failed pods stay for `kubectl describe`
    }
    if preset.scheduler_name:
        kwargs["schedulername"] = preset.scheduler_name
    if preset.runtime_class_name:
        kwargs["runtime_class_name"] = preset.runtime_class_name
    return kwargs


_OFFLINE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: offline, cluster: {server: "https://offline.invalid"}}]
users: [{name: offline, user: {}}]
contexts: [{name: offline, context: {cluster: offline, user: offline}}]
current-context: offline
"""


def build_pod_spec(component: str, argv: Sequence[str], settings: KubernetesConfig) -> dict[str, Any]:
    """The V1Pod (as the API's JSON) a real KubernetesPodOperator builds for this component,
    with no cluster: the operator's hook only reads a kubeconfig (never connects) to label
    the pod with whether it runs in-cluster, so a throwaway one is handed to it."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    with tempfile.TemporaryDirectory(prefix="fgclip-kubeconfig-") as folder:
        config_file = Path(folder) / "config"
        config_file.write_text(_OFFLINE_KUBECONFIG)
        operator = KubernetesPodOperator(
            task_id=f"build-{resource_name(component)}",
            in_cluster=False,
            config_file=str(config_file),
            **pod_operator_kwargs(component, argv, settings),
        )
        pod = operator.build_pod_request_obj()
    return to_dict(pod)
