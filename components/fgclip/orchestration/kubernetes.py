"""The Kubernetes runtime: where each component's pod lands, and multi-node training.

- `pod_operator_kwargs(component, argv, settings)`: the arguments of a KubernetesPodOperator
  that runs one `fgclip` command on the component's pool (image of the pool's accelerator
  family, resources, node selector, tolerations, scheduler, /dev/shm, driver mounts, the
  shared workspace, params.yaml, and S3/MLflow settings from ConfigMaps and Secrets).
- `trainjob_manifest(argv, settings, num_nodes, name)`: a Kubeflow Trainer (v2.3+) TrainJob
  that runs `fgclip train` under torchrun on N nodes of the training pool.
- `TrainJobOperator`: creates a TrainJob and waits until it completes or fails.

`settings` is the `kubernetes` section of the config (`fgclip.config.KubernetesConfig`).
Nothing here talks to a cluster except the operator's `execute`; the rest builds specs, so
tests render and validate them offline.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from fgclip.config import KubernetesConfig, PoolPreset, TrainerSettings

PROGRAM = "fgclip"
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
# The torch runtime's replicated job and trainer container are both called "node".
TRAINER_NODE = "node"
# JobSet (which the TrainJob becomes) labels every pod with its name == the TrainJob's.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
PART_OF = {"app.kubernetes.io/part-of": "fgclip"}
COMPONENT_LABEL = "app.kubernetes.io/component"
POOL_LABEL = "fgclip/pool"
SHM_VOLUME, WORKSPACE_VOLUME, PARAMS_VOLUME = "dshm", "workspace", "params"
PARAMS_KEY = "params.yaml"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_MAX = 63
_SERIALIZER = ApiClient()
_TRAINER_DEFAULTS = TrainerSettings()


def to_dict(obj: Any) -> Any:
    """A kubernetes client model (or a structure of them) as the API's JSON (camelCase)."""
    return _SERIALIZER.sanitize_for_serialization(obj)


# --- the command -------------------------------------------------------------------------

def fgclip_arguments(argv: Sequence[str], settings: KubernetesConfig) -> list[str]:
    """The arguments after `fgclip`: the images' entrypoint is `fgclip`, so a leading
    program name is dropped, and the cluster's params.yaml (mounted from a ConfigMap) is
    named explicitly, or the CLI would silently read defaults from the empty workspace."""
    args = [str(part) for part in argv]
    if args and Path(args[0]).name == PROGRAM:
        args = args[1:]
    if not args:
        raise ValueError("argv holds no fgclip component command")
    if settings.params_configmap and "--params" not in args:
        args = ["--params", f"{settings.params_mount_path}/{PARAMS_KEY}", *args]
    return args


def resource_name(component: str) -> str:
    """`train_stage1` -> `fgclip-train-stage1` (pod and label values take no underscores)."""
    name = f"{PROGRAM}-{component.replace('_', '-').lower()}"
    if not _DNS_LABEL.match(name) or len(name) > _DNS_LABEL_MAX:
        raise ValueError(f"component {component!r} does not make a valid Kubernetes name ({name!r})")
    return name


def workload_labels(component: str, pool: str) -> dict[str, str]:
    return {**PART_OF, COMPONENT_LABEL: resource_name(component), POOL_LABEL: pool}


# --- pod pieces shared by component pods and training nodes ----------------------------------

def _volumes(settings: KubernetesConfig, preset: PoolPreset) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    volumes = [
        # Docker's 64 MiB /dev/shm breaks DataLoader workers and NCCL/HCCL: a RAM-backed one.
        k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=preset.shm_size)),
        k8s.V1Volume(name=WORKSPACE_VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=settings.workspace_claim)),
    ]
    mounts = [
        k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
        k8s.V1VolumeMount(name=WORKSPACE_VOLUME, mount_path=settings.workspace_path),
    ]
    if settings.params_configmap:
        volumes.append(k8s.V1Volume(name=PARAMS_VOLUME, config_map=k8s.V1ConfigMapVolumeSource(
            name=settings.params_configmap, items=[k8s.V1KeyToPath(key=PARAMS_KEY, path=PARAMS_KEY)])))
        mounts.append(k8s.V1VolumeMount(name=PARAMS_VOLUME, mount_path=settings.params_mount_path, read_only=True))
    for mount in preset.host_mounts:
        volumes.append(k8s.V1Volume(name=mount.name, host_path=k8s.V1HostPathVolumeSource(
            path=mount.host_path, type=mount.type)))
        mounts.append(k8s.V1VolumeMount(name=mount.name, mount_path=mount.mount_path, read_only=True))
    return volumes, mounts


def _tolerations(preset: PoolPreset) -> list[k8s.V1Toleration]:
    return [k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in preset.tolerations]


def _resources(preset: PoolPreset, *, accelerators: int, cpu: str, memory: str) -> k8s.V1ResourceRequirements:
    requests = {"cpu": cpu, "memory": memory}
    # No CPU limit (throttling slows data loading for nothing); memory and devices are hard.
    limits = {"memory": memory}
    if preset.accelerator_resource and accelerators:
        requests[preset.accelerator_resource] = limits[preset.accelerator_resource] = str(accelerators)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _env(preset: PoolPreset) -> list[k8s.V1EnvVar]:
    return [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(preset.env.items())]


def _env_from(settings: KubernetesConfig) -> list[k8s.V1EnvFromSource]:
    # Not optional: a missing ConfigMap or Secret stops the pod at start, loudly.
    return ([k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=name)) for name in settings.env_configmaps]
            + [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in settings.env_secrets])


def _pod_security(settings: KubernetesConfig) -> k8s.V1PodSecurityContext:
    # Together with the container context this meets the 'restricted' Pod Security Standard.
    return k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=settings.run_as_user,
                                    run_as_group=settings.run_as_user, fs_group=settings.run_as_user,
                                    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))


def _container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]))


# --- component pods --------------------------------------------------------------------------

def pod_operator_kwargs(component: str, argv: Sequence[str], settings: KubernetesConfig) -> dict[str, Any]:
    """KubernetesPodOperator keyword arguments (all but task_id) for one component command."""
    pool = settings.pool_for(component)
    preset = settings.pools[pool]
    volumes, mounts = _volumes(settings, preset)
    kwargs: dict[str, Any] = {
        "name": resource_name(component),
        "random_name_suffix": True,
        "namespace": settings.namespace,
        "image": settings.images[preset.family],
        "image_pull_policy": settings.image_pull_policy,
        "arguments": fgclip_arguments(argv, settings),
        "labels": workload_labels(component, pool),
        "container_resources": _resources(preset, accelerators=preset.accelerators_per_pod,
                                          cpu=preset.cpu, memory=preset.memory),
        "node_selector": dict(preset.node_selector),
        "tolerations": _tolerations(preset),
        "volumes": volumes,
        "volume_mounts": mounts,
        "env_vars": _env(preset),
        "env_from": _env_from(settings),
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,  # components never call the Kubernetes API
        "security_context": _pod_security(settings),
        "container_security_context": _container_security(),
        "startup_timeout_seconds": settings.startup_timeout_s,
        "get_logs": True,
        "durable": True,  # a restarted worker reattaches to the running pod
        "on_finish_action": "delete_succeeded_pod",  # failed pods stay for `kubectl describe`
    }
    if preset.scheduler_name:
        kwargs["schedulername"] = preset.scheduler_name
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
        operator = KubernetesPodOperator(task_id=f"build-{resource_name(component)}", in_cluster=False,
                                         config_file=str(config_file), **pod_operator_kwargs(component, argv, settings))
        pod = operator.build_pod_request_obj()
    return to_dict(pod)


# --- multi-node training ---------------------------------------------------------------------

def training_component(argv: Sequence[str]) -> str:
    """`fgclip train --stage 2 ...` -> `train_stage2`."""
    args = [str(part) for part in argv]
    if args and Path(args[0]).name == PROGRAM:
        args = args[1:]
    if "train" not in args:
        raise ValueError(f"not an `fgclip train` command: {' '.join(args)}")
    stage = next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--stage"), None)
    if stage is None:
        stage = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--stage=")), None)
    if stage not in ("1", "2"):
        raise ValueError("an `fgclip train` command needs --stage 1 or --stage 2")
    return f"train_stage{stage}"


def trainjob_manifest(argv: Sequence[str], settings: KubernetesConfig, num_nodes: int, name: str,
                      *, component: str | None = None) -> dict[str, Any]:
    """A Kubeflow Trainer v2 TrainJob running `torchrun -m fgclip.cli ... train ...` on
    `num_nodes` nodes of the training component's pool.

    The referenced torch TrainingRuntime (k8s/base) carries the cluster wiring (S3/MLflow
    settings from ConfigMaps and Secrets, non-root user, working directory; gang scheduling
    with Volcano in the npu overlay); this job adds what depends on the pool, through a
    runtimePatches entry: node selector, tolerations, /dev/shm, the shared workspace,
    params.yaml (whose `train` section the trainer turns into the DeepSpeed config) and the
    driver mounts. numProcPerNode is always explicit: Trainer's `auto` counts GPUs only.
    """
    if not is_template(name):  # a template (e.g. with the try number) is checked once rendered
        check_trainjob_name(name)
    if num_nodes < 1:
        raise ValueError("num_nodes must be >= 1")
    component = component or training_component(argv)
    pool = settings.pool_for(component)
    preset = settings.pools[pool]
    trainer = settings.trainer
    procs = trainer.procs_per_node
    volumes, mounts = _volumes(settings, preset)
    labels = workload_labels(component, pool)
    pod_spec_patch = {
        "serviceAccountName": settings.service_account,
        "nodeSelector": dict(preset.node_selector),
        "tolerations": to_dict(_tolerations(preset)),
        "volumes": to_dict(volumes),
        "securityContext": to_dict(_pod_security(settings)),
        "containers": [{"name": TRAINER_NODE, "volumeMounts": to_dict(mounts),
                        "securityContext": to_dict(_container_security())}],
    }
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {"name": trainer.runtime_name, "apiGroup": TRAINER_GROUP, "kind": trainer.runtime_kind},
            "trainer": {
                "image": settings.images[preset.family],
                "command": ["torchrun"],
                # torchrun reads nodes, rank, master and procs from the PET_* variables Trainer sets.
                "args": ["--module", "fgclip.cli", *fgclip_arguments(argv, settings)],
                "env": to_dict(_env(preset)),
                "numNodes": num_nodes,
                "numProcPerNode": procs,
                "resourcesPerNode": to_dict(_resources(preset, accelerators=procs if preset.accelerator_resource else 0,
                                                       cpu=trainer.cpu_per_node, memory=trainer.memory_per_node)),
            },
            "runtimePatches": [{
                "manager": trainer.patch_manager,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": TRAINER_NODE,
                    "template": {"spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec_patch}}},
                }]}}},
            }],
        },
    }


def is_template(text: str) -> bool:
    return "{{" in text


def check_trainjob_name(name: str) -> None:
    if not _DNS_LABEL.match(name) or len(name) > _DNS_LABEL_MAX:
        raise ValueError(f"TrainJob name {name!r} must be a DNS label (a-z, 0-9, '-', at most {_DNS_LABEL_MAX})")


def trainjob_verdict(trainjob: Mapping[str, Any]) -> tuple[str, str] | None:
    """("Complete" | "Failed", "reason: message") once the TrainJob has finished, else None."""
    for condition in (trainjob.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
            return condition["type"], detail or "no message"
    return None


def logs_command(namespace: str, name: str) -> str:
    return (f"kubectl logs -n {namespace} -l {JOBSET_NAME_LABEL}={name} -c {TRAINER_NODE} "
            "--prefix --tail=-1 --max-log-requests=64")


class TrainJobOperator(BaseOperator):
    """Create a TrainJob and wait until it completes (returns its name) or fails (raises with
    Trainer's reason and message). A TrainJob of the same name that already exists (a retry
    after the worker died) is attached to, not duplicated. On timeout or kill the TrainJob is
    deleted, so its nodes free their accelerators. The last lines of each node's log are
    copied into the task log; the full logs stay reachable with the logged kubectl command.

    `num_nodes`, when given (an int or a template such as "{{ params.num_nodes }}"), replaces
    the manifest's node count at run time. `custom_objects_api` / `core_api` default to the
    cncf provider's KubernetesHook clients.
    """

    template_fields = ("manifest", "num_nodes")

    def __init__(self, *, manifest: dict[str, Any], kubernetes_conn_id: str = "kubernetes_default",
                 poll_interval_s: float = _TRAINER_DEFAULTS.poll_interval_s,
                 timeout_s: float = _TRAINER_DEFAULTS.timeout_s,
                 log_tail_lines: int = _TRAINER_DEFAULTS.log_tail_lines, num_nodes: int | str | None = None,
                 custom_objects_api: Any = None, core_api: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.num_nodes = num_nodes
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.log_tail_lines = log_tail_lines
        self._custom_objects_api = custom_objects_api
        self._core_api = core_api

    @classmethod
    def for_command(cls, *, task_id: str, argv: Sequence[str], settings: KubernetesConfig, num_nodes: int | str,
                    name: str, **kwargs: Any) -> "TrainJobOperator":
        """The operator for one `fgclip train` command, with the trainer settings' timing;
        `num_nodes` may be a template, rendered when the task runs."""
        trainer = settings.trainer
        planned = num_nodes if isinstance(num_nodes, int) else trainer.num_nodes
        return cls(task_id=task_id, manifest=trainjob_manifest(argv, settings, planned, name),
                   num_nodes=num_nodes, poll_interval_s=trainer.poll_interval_s, timeout_s=trainer.timeout_s,
                   log_tail_lines=trainer.log_tail_lines, **kwargs)

    # -- clients (injected in tests; the cncf provider's hook on a cluster)
    def _hook(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @property
    def custom_objects(self) -> Any:
        if self._custom_objects_api is None:
            self._custom_objects_api = self._hook().custom_object_client
        return self._custom_objects_api

    @property
    def core(self) -> Any:
        if self._core_api is None:
            self._core_api = self._hook().core_v1_client
        return self._core_api

    @property
    def job_name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def job_namespace(self) -> str:
        return self.manifest["metadata"]["namespace"]

    def _api_args(self) -> dict[str, str]:
        return {"group": TRAINER_GROUP, "version": TRAINER_VERSION, "namespace": self.job_namespace,
                "plural": TRAINJOB_PLURAL}

    def _apply_num_nodes(self) -> None:
        if self.num_nodes is None:
            return
        try:
            nodes = int(self.num_nodes)
        except (TypeError, ValueError) as error:
            raise AirflowException(f"num_nodes must be a whole number, got {self.num_nodes!r}") from error
        if nodes < 1:
            raise AirflowException(f"num_nodes must be >= 1, got {nodes}")
        spec = {**self.manifest["spec"], "trainer": {**self.manifest["spec"]["trainer"], "numNodes": nodes}}
        self.manifest = {**self.manifest, "spec": spec}

    def execute(self, context: Any) -> str:
        self._apply_num_nodes()
        name, namespace = self.job_name, self.job_namespace
        try:
            check_trainjob_name(name)
        except ValueError as error:
            raise AirflowException(str(error)) from error
        try:
            self.custom_objects.create_namespaced_custom_object(body=self.manifest, **self._api_args())
            self.log.info("created TrainJob %s/%s", namespace, name)
        except ApiException as error:
            if error.status != 409:
                raise AirflowException(f"could not create TrainJob {namespace}/{name}: {error.status} {error.reason}") from error
            self.log.info("TrainJob %s/%s already exists (an earlier try): waiting for it", namespace, name)
        self.log.info("node logs: %s", logs_command(namespace, name))
        verdict = self._wait()
        self._copy_node_logs()
        state, detail = verdict
        if state == "Complete":
            self.log.info("TrainJob %s/%s completed: %s", namespace, name, detail)
            return name
        raise AirflowException(f"TrainJob {namespace}/{name} failed: {detail}. Logs: {logs_command(namespace, name)}")

    def _wait(self) -> tuple[str, str]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            trainjob = self.custom_objects.get_namespaced_custom_object(name=self.job_name, **self._api_args())
            verdict = trainjob_verdict(trainjob)
            if verdict is not None:
                return verdict
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._delete("timed out")
                raise AirflowException(
                    f"TrainJob {self.job_namespace}/{self.job_name} did not finish within {self.timeout_s:g} s; "
                    f"deleted it. Logs (until its pods are gone): {logs_command(self.job_namespace, self.job_name)}")
            time.sleep(min(self.poll_interval_s, remaining))

    def _delete(self, why: str) -> None:
        self.log.warning("deleting TrainJob %s/%s (%s)", self.job_namespace, self.job_name, why)
        try:
            self.custom_objects.delete_namespaced_custom_object(name=self.job_name, **self._api_args())
        except ApiException as error:
            if error.status != 404:
                self.log.error("could not delete TrainJob %s/%s: %s %s; delete it by hand",
                               self.job_namespace, self.job_name, error.status, error.reason)

    def _copy_node_logs(self) -> None:
        if not self.log_tail_lines:
            return
        selector = f"{JOBSET_NAME_LABEL}={self.job_name}"
        try:
            pods = self.core.list_namespaced_pod(namespace=self.job_namespace, label_selector=selector).items
            for pod in sorted(pods, key=lambda item: item.metadata.name):
                text = self.core.read_namespaced_pod_log(name=pod.metadata.name, namespace=self.job_namespace,
                                                         container=TRAINER_NODE, tail_lines=self.log_tail_lines)
                self.log.info("---- last %d log lines of %s ----\n%s", self.log_tail_lines, pod.metadata.name, text)
        except ApiException as error:
            # The verdict stands either way; say where the logs are instead.
            self.log.warning("could not read the node logs (%s %s); run: %s", error.status, error.reason,
                             logs_command(self.job_namespace, self.job_name))

    def on_kill(self) -> None:
        self._delete("task killed")
