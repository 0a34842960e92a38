"""Multi-node training on Kubernetes: a Kubeflow Trainer (v2.3+) TrainJob that runs
`fgclip train` under torchrun on N nodes of the training pool, and the Airflow operator
that creates it and waits until it completes or fails.

The wait is deferred (`TrainJobTrigger` polls in Airflow's triggerer): a training of three
days holds no worker slot. The TrainJob carries its own deadline (`activeDeadlineSeconds`),
so a hung job is stopped by the cluster even when nobody is waiting for it.

`trainjob_manifest` builds the spec offline (tests render and validate it); only the
operator's `execute` and the trigger talk to a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from kubernetes.client.exceptions import ApiException

from fgclip.orchestration.config import KubernetesConfig, TrainerSettings
from fgclip.orchestration.kubernetes import (
    DNS_LABEL,
    DNS_LABEL_MAX,
    PROGRAM,
    container_security,
    fgclip_arguments,
    pod_env,
    pod_resources,
    pod_security,
    pod_tolerations,
    pod_volumes,
    to_dict,
    workload_labels,
)
from fgclip.orchestration.trainjob_status import (
    TRAINER_GROUP,
    TRAINER_VERSION,
    TRAINJOB_PLURAL,
    TrainJobTrigger,
    trainjob_verdict,
)

# The torch runtime's replicated job and trainer container are both called "node".
TRAINER_NODE = "node"
# JobSet (which the TrainJob becomes) labels every pod with its name == the TrainJob's.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
#: `fgclip train`'s flag to continue from the latest checkpoint (none yet: from step 0).
RESUME_FLAG = "--resume"
_TRAINER_DEFAULTS = TrainerSettings()


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


def trainjob_manifest(
    argv: Sequence[str],
    settings: KubernetesConfig,
    num_nodes: int,
    name: str,
    *,
    component: str | None = None,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Kubeflow Trainer v2 TrainJob running `torchrun -m fgclip.cli ... train ...` on
    `num_nodes` nodes of the training component's pool.

    The referenced torch TrainingRuntime (k8s/base) carries the cluster wiring (S3/MLflow
    settings from ConfigMaps and Secrets, non-root user, working directory; gang scheduling
    with Volcano in the npu overlay); this job adds what depends on the pool, through a
    runtimePatches entry: node selector, tolerations, /dev/shm, the shared workspace,
    params.yaml (whose `train` section the trainer turns into the DeepSpeed config) and the
    driver mounts. numProcPerNode is always explicit: Trainer's `auto` counts GPUs only.
    `workdir`: the DAG run's workspace the nodes train in (its params.yaml); `env`: more
    variables (e.g. the DAG run's MLflow run). `activeDeadlineSeconds` is the trainer's
    timeout: the cluster stops the job then, whoever is waiting.

    The command always has --resume: a TrainJob started again after a node failed (a retry)
    continues from the last checkpoint instead of refusing to start; a first run has none
    and starts at step 0, and checkpoints of other inputs are refused (fgclip.train.loop).
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
    volumes, mounts = pod_volumes(settings, preset)
    labels = workload_labels(component, pool)
    pod_spec_patch = {
        "serviceAccountName": settings.service_account,
        "nodeSelector": dict(preset.node_selector),
        "tolerations": to_dict(pod_tolerations(preset)),
        "volumes": to_dict(volumes),
        "securityContext": to_dict(pod_security(settings)),
        "containers": [
            {"name": TRAINER_NODE, "volumeMounts": to_dict(mounts), "securityContext": to_dict(container_security())}
        ],
    }
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {"name": trainer.runtime_name, "apiGroup": TRAINER_GROUP, "kind": trainer.runtime_kind},
            "activeDeadlineSeconds": int(trainer.timeout_s),
            "trainer": {
                "image": settings.images[preset.family],
                "command": ["torchrun"],
                # torchrun reads nodes, rank, master and procs from the PET_* variables Trainer sets.
                "args": ["--module", "fgclip.cli", *_resuming(fgclip_arguments(argv, settings, workdir))],
                "env": [*to_dict(pod_env(preset)), *({"name": k, "value": v} for k, v in sorted((env or {}).items()))],
                "numNodes": num_nodes,
                "numProcPerNode": procs,
                "resourcesPerNode": to_dict(
                    pod_resources(
                        preset,
                        accelerators=procs if preset.accelerator_resource else 0,
                        cpu=trainer.cpu_per_node,
                        memory=trainer.memory_per_node,
                    )
                ),
            },
            "runtimePatches": [
                {
                    "manager": trainer.patch_manager,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": TRAINER_NODE,
                                        "template": {
                                            "spec": {
                                                "template": {"metadata": {"labels": labels}, "spec": pod_spec_patch}
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }


def _resuming(args: list[str]) -> list[str]:
    return args if RESUME_FLAG in args else [*args, RESUME_FLAG]


def is_template(text: str) -> bool:
    return "{{" in text


def check_trainjob_name(name: str) -> None:
    if not DNS_LABEL.match(name) or len(name) > DNS_LABEL_MAX:
        raise ValueError(f"TrainJob name {name!r} must be a DNS label (a-z, 0-9, '-', at most {DNS_LABEL_MAX})")


def logs_command(namespace: str, name: str) -> str:
    return (
        f"kubectl logs -n {namespace} -l {JOBSET_NAME_LABEL}={name} -c {TRAINER_NODE} "
        "--prefix --tail=-1 --max-log-requests=64"
    )


class TrainJobOperator(BaseOperator):
    """Create a TrainJob and wait until it completes (returns its name) or fails (raises with
    Trainer's reason and message). The wait is deferred to a TrainJobTrigger (`deferrable`,
    the default; False polls in the worker). Each try creates a TrainJob of its own name (the
    name template holds the try number); a TrainJob of the same name that already exists (the
    same try, after the worker died) is attached to, not duplicated. On timeout or kill the
    TrainJob is deleted, so its nodes free their accelerators. The last lines of each node's
    log are copied into the task log; the full logs stay reachable with the logged kubectl
    command.

    `num_nodes`, when given (an int or a template such as "{{ params.num_nodes }}"), replaces
    the manifest's node count at run time. `custom_objects_api` / `core_api` default to the
    cncf provider's KubernetesHook clients.
    """

    template_fields = ("manifest", "num_nodes")

    def __init__(
        self,
        *,
        manifest: dict[str, Any],
        kubernetes_conn_id: str = "kubernetes_default",
        poll_interval_s: float = _TRAINER_DEFAULTS.poll_interval_s,
        timeout_s: float = _TRAINER_DEFAULTS.timeout_s,
        log_tail_lines: int = _TRAINER_DEFAULTS.log_tail_lines,
        num_nodes: int | str | None = None,
        deferrable: bool = True,
        custom_objects_api: Any = None,
        core_api: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.manifest = manifest
        self.num_nodes = num_nodes
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.log_tail_lines = log_tail_lines
        self._custom_objects_api = custom_objects_api
        self._core_api = core_api

    @classmethod
    def for_command(
        cls,
        *,
        task_id: str,
        argv: Sequence[str],
        settings: KubernetesConfig,
        num_nodes: int | str,
        name: str,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> TrainJobOperator:
        """The operator for one `fgclip train` command, with the trainer settings' timing;
        `num_nodes` may be a template, rendered when the task runs."""
        trainer = settings.trainer
        planned = num_nodes if isinstance(num_nodes, int) else trainer.num_nodes
        return cls(
            task_id=task_id,
            manifest=trainjob_manifest(argv, settings, planned, name, workdir=workdir, env=env),
            num_nodes=num_nodes,
            poll_interval_s=trainer.poll_interval_s,
            timeout_s=trainer.timeout_s,
            log_tail_lines=trainer.log_tail_lines,
            **{"deferrable": trainer.deferrable, **kwargs},
        )

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
        return {
            "group": TRAINER_GROUP,
            "version": TRAINER_VERSION,
            "namespace": self.job_namespace,
            "plural": TRAINJOB_PLURAL,
        }

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
                raise AirflowException(
                    f"could not create TrainJob {namespace}/{name}: {error.status} {error.reason}"
                ) from error
            self.log.info("TrainJob %s/%s already exists (an earlier try): waiting for it", namespace, name)
        self.log.info("node logs: %s", logs_command(namespace, name))
        if self.deferrable:
            self.defer(
                trigger=TrainJobTrigger(name, namespace, self.kubernetes_conn_id, self.poll_interval_s),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout_s),
            )
        return self._finish(*self._wait())

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> str:
        """Back from the trigger with the TrainJob's verdict."""
        return self._finish(str(event["state"]), str(event["detail"]))

    def _finish(self, state: str, detail: str) -> str:
        name, namespace = self.job_name, self.job_namespace
        self._copy_node_logs()
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
                    f"deleted it. Logs (until its pods are gone): {logs_command(self.job_namespace, self.job_name)}"
                )
            time.sleep(min(self.poll_interval_s, remaining))

    def _delete(self, why: str) -> None:
        self.log.warning("deleting TrainJob %s/%s (%s)", self.job_namespace, self.job_name, why)
        try:
            self.custom_objects.delete_namespaced_custom_object(name=self.job_name, **self._api_args())
        except ApiException as error:
            if error.status != 404:
                self.log.error(
                    "could not delete TrainJob %s/%s: %s %s; delete it by hand",
                    self.job_namespace,
                    self.job_name,
                    error.status,
                    error.reason,
                )

    def _copy_node_logs(self) -> None:
        if not self.log_tail_lines:
            return
        selector = f"{JOBSET_NAME_LABEL}={self.job_name}"
        try:
            pods = self.core.list_namespaced_pod(namespace=self.job_namespace, label_selector=selector).items
            for pod in sorted(pods, key=lambda item: item.metadata.name):
                text = self.core.read_namespaced_pod_log(
                    name=pod.metadata.name,
                    namespace=self.job_namespace,
                    container=TRAINER_NODE,
                    tail_lines=self.log_tail_lines,
                )
                self.log.info("---- last %d log lines of %s ----\n%s", self.log_tail_lines, pod.metadata.name, text)
        except ApiException as error:
            # The verdict stands either way; say where the logs are instead.
            self.log.warning(
                "could not read the node logs (%s %s); run: %s",
                error.status,
                error.reason,
                logs_command(self.job_namespace, self.job_name),
            )

    def on_kill(self) -> None:
        self._delete("task killed")
