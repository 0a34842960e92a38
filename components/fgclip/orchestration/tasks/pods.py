"""The `kubernetes` runtime's tasks: a stage as a pod on its pool preset (one per shard group
for a fanned-out stage), training as a TrainJob, a control step as a pod. Every pod works in
the DAG run's workspace on the shared volume (`fgclip -C <run workspace>`), so it reads that
run's params.yaml: the trigger form's values reach it with no flags.

The task builders import this module only on the kubernetes runtime: it pulls in the cncf
provider and the Kubernetes clients (about 2 s of the DAG file's parse, which every task
process of the local runtime pays again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from fgclip.orchestration.config import KubernetesConfig
from fgclip.orchestration.control import POD_XCOM_FILE
from fgclip.orchestration.form import NUM_NODES
from fgclip.orchestration.kubernetes import fgclip_arguments, pod_operator_kwargs, run_workdir
from fgclip.orchestration.pipeline import Project, StageSpec, group_label
from fgclip.orchestration.tasks.common import (
    GROUP_LABEL_KEY,
    GROUP_POD_LABEL,
    PARENT_RUN_TEMPLATE,
    RUN_KEY_MACRO,
    pool_kwargs,
    task_defaults,
)
from fgclip.orchestration.trainjob import TrainJobOperator

CONTROL_MODULE = "fgclip.orchestration.control"
PARENT_RUN_ENV = "FGCLIP_MLFLOW_PARENT_RUN"


def run_key_template() -> str:
    return "{{ " + RUN_KEY_MACRO + "(dag.dag_id, run_id) }}"


def workdir(project: Project) -> str:
    """The DAG run's workspace as pods see it, a template rendered when the task runs."""
    return run_workdir(project.params.kubernetes, project.settings.runs_dir, run_key_template())


def _env(kwargs: dict[str, Any]) -> list[Any]:
    return [*kwargs.get("env_vars", []), k8s.V1EnvVar(name=PARENT_RUN_ENV, value=PARENT_RUN_TEMPLATE)]


def stage_pod_kwargs(project: Project, stage: StageSpec, shards: Sequence[str] | None = None) -> dict[str, Any]:
    kwargs = pod_operator_kwargs(stage.base_name, stage.command(shards), project.params.kubernetes, workdir(project))
    kwargs["env_vars"] = _env(kwargs)
    return kwargs


class ShardGroupPodOperator(KubernetesPodOperator):
    """One shard group of a fanned-out stage as a pod: the group (`shards`, mapped from the
    shard-group task group) becomes `--shards ...` and the group's own report, and a label
    that names the pod after its shards."""

    template_fields = (*KubernetesPodOperator.template_fields, "shards")

    def __init__(self, *, shards: Any, stage: StageSpec, kubernetes: KubernetesConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards
        self.stage = stage
        self.kubernetes = kubernetes

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        shards = [str(shard) for shard in self.shards]
        rendered_workdir = self.arguments[1]  # `-C <the run workspace>`, rendered above
        self.arguments = fgclip_arguments(self.stage.command(shards), self.kubernetes, rendered_workdir)
        self.labels = {**(self.labels or {}), GROUP_POD_LABEL: group_label(shards)}
        context[GROUP_LABEL_KEY] = group_label(shards)


def kubernetes_task(project: Project, stage: StageSpec, shards: Any) -> Any:
    defaults = {**task_defaults(project.settings), **pool_kwargs(project, stage)}
    if stage.component == "train":
        return trainjob_task(project, stage, defaults)
    if shards is None:
        return KubernetesPodOperator(
            task_id=stage.task_id, doc_md=f"`{stage.cmd}`", **defaults, **stage_pod_kwargs(project, stage)
        )
    kwargs = stage_pod_kwargs(project, stage, ["00000"])  # the group's shards replace these at run time
    operator = ShardGroupPodOperator(
        task_id=stage.task_id,
        doc_md=f"`{stage.cmd}` `--shards ...`: one pod per shard group",
        map_index_template="{{ " + GROUP_LABEL_KEY + " }}",
        shards=shards,
        stage=stage,
        kubernetes=project.params.kubernetes,
        **defaults,
        **kwargs,
    )
    return operator


#: A TrainJob per stage, DAG run and try: a retry starts a new TrainJob (the failed one stays
#: for `kubectl describe`), which resumes from the last checkpoint on the workspace.
TRAINJOB_NAME = "fgclip-{stage}-{{{{ dag_run.run_after.strftime('%Y%m%d-%H%M%S-%f') }}}}-t{{{{ ti.try_number }}}}"


def trainjob_task(project: Project, stage: StageSpec, defaults: dict[str, Any]) -> Any:
    name = TRAINJOB_NAME.format(stage=stage.task_id.replace("_", "-"))
    return TrainJobOperator.for_command(
        task_id=stage.task_id,
        argv=stage.command(),
        settings=project.params.kubernetes,
        num_nodes=f"{{{{ params.{NUM_NODES} }}}}",
        name=name,
        workdir=workdir(project),
        env={PARENT_RUN_ENV: PARENT_RUN_TEMPLATE},
        doc_md=f"`{stage.cmd}` as a multi-node TrainJob",
        **defaults,
    )


def control_pod(project: Project, task_id: str, arguments: list[str], *, home: bool = False, **kwargs: Any) -> Any:
    """A KubernetesPodOperator running one control step in the run workspace (`home`: in the
    checkout, for the step that makes the run workspace); its JSON result is the task's XCom
    (read by the operator through `pods/exec`, which the Role grants)."""
    settings = project.params.kubernetes
    where = settings.workspace_path if home else workdir(project)
    pod = pod_operator_kwargs(project.settings.control_component, ["fgclip", "--help"], settings)
    pod.update(
        cmds=["python", "-m", CONTROL_MODULE],
        arguments=["--workspace", where, "--xcom-file", POD_XCOM_FILE, *arguments],
        do_xcom_push=True,
    )
    return KubernetesPodOperator(task_id=task_id, **{**task_defaults(project.settings), **pod, **kwargs})
