"""Airflow tasks of the dvc.yaml stages on the configured runtime: the `local` runtime (a
subprocess on the Airflow worker, see process.py) or the `kubernetes` runtime (a pod on the
stage's node-pool preset, a TrainJob for training; see fgclip.orchestration.kubernetes).

The runtime only decides where: the command is always the dvc.yaml one (see pipeline.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.form import NUM_NODES, form_set_flags
from fgclip.orchestration.kubernetes import pod_operator_kwargs
from fgclip.orchestration.pipeline import Project, StageSpec, group_label, load_project
from fgclip.orchestration.process import StageFailed, run_stage_locally
from fgclip.orchestration.trainjob import TrainJobOperator

#: The key of the context entry that names a mapped task in the UI.
GROUP_LABEL_KEY = "shard_group"
#: A mapped pod's label that names its shard group (also its name in the UI).
GROUP_POD_LABEL = "fgclip.io/shard-group"


def _fail(error: StageFailed) -> BaseException:
    """Airflow retries an ordinary exception; an AirflowFailException fails at once."""
    if error.retryable:
        return error
    return AirflowFailException(str(error))


def task_defaults(settings: OrchestrationConfig) -> dict[str, Any]:
    return {"retries": settings.retries, "retry_delay": timedelta(seconds=settings.retry_delay_s)}


def stage_task(project: Project, stage: StageSpec, groups: Any = None) -> Any:
    """The Airflow task of one dvc.yaml stage on the configured runtime; a fanned-out stage
    is mapped over `groups` (the XComArg of the shard groups), one task per group."""
    if stage.fan_out and groups is None:
        raise ValueError(f"stage {stage.name} is fanned out: pass the shard groups")
    if project.settings.runtime == "kubernetes":
        return _kubernetes_task(project, stage, groups if stage.fan_out else None)
    return _local_task(project, stage, groups if stage.fan_out else None)


def _local_task(project: Project, stage: StageSpec, groups: Any) -> Any:
    root = project.root
    doc = f"`{stage.cmd}`" + (" `--shards ...`: one task per shard group" if stage.fan_out else "")

    @task(
        task_id=stage.task_id,
        doc_md=doc,
        map_index_template="{{ " + GROUP_LABEL_KEY + " }}" if stage.fan_out else None,
        multiple_outputs=False,
        **task_defaults(project.settings),
    )
    def run(shards: list[str] | None = None) -> dict[str, Any]:
        if shards:
            get_current_context()[GROUP_LABEL_KEY] = group_label(shards)  # type: ignore[literal-required]
        current = load_project(root)  # the stage as dvc.yaml has it now, not as it was parsed
        try:
            return run_stage_locally(current, current.pipeline.stage(stage.name), shards)
        except StageFailed as error:
            raise _fail(error) from error

    return run.expand(shards=groups) if groups is not None else run()


# ---------------------------------------------------------------- kubernetes runtime


def _form_keys(project: Project, stage: StageSpec) -> tuple[str, ...]:
    """The trigger-form keys this stage reads: they reach its pod as `--set` flags (pods read
    the cluster's params.yaml, not the workspace's)."""
    every = (*project.settings.data_form, *project.settings.train_form)
    return tuple(key for key in dict.fromkeys(every) if stage.reads_param(key))


def _form_flags(project: Project, stage: StageSpec) -> list[str]:
    return form_set_flags(_form_keys(project, stage))


def _pod_kwargs(project: Project, stage: StageSpec, shards: Sequence[str] | None) -> dict[str, Any]:
    """Pod arguments for the stage command, split so that what Jinja must render (the
    program, its global options and the form's --set values) sits in `cmds`, and the
    component's own arguments (which a mapped task maps, and Airflow never renders mapped
    values) in `arguments`."""
    argv = stage.command(list(shards) if shards else None)
    kwargs = pod_operator_kwargs(stage.base_name, argv, project.params.kubernetes)
    arguments, own = list(kwargs["arguments"]), argv[1:]
    if arguments[len(arguments) - len(own) :] != own:
        raise ValueError(f"pod arguments {arguments} do not end with the command's own {own}")
    kwargs["cmds"] = [argv[0], *arguments[: len(arguments) - len(own)], *_form_flags(project, stage)]
    kwargs["arguments"] = own
    return kwargs


def _kubernetes_task(project: Project, stage: StageSpec, groups: Any) -> Any:
    defaults = task_defaults(project.settings)
    if stage.component == "train":
        return _trainjob_task(project, stage, defaults)
    if groups is None:
        return KubernetesPodOperator(
            task_id=stage.task_id, doc_md=f"`{stage.cmd}`", **defaults, **_pod_kwargs(project, stage, None)
        )

    # What differs between two shard groups is mapped; the rest is shared by every pod.
    probe_a, probe_b = _pod_kwargs(project, stage, ["00000"]), _pod_kwargs(project, stage, ["99999"])
    varying = {name for name in probe_a if probe_a.get(name) != probe_b.get(name)} | {"labels"}
    shared = {name: value for name, value in probe_a.items() if name not in varying}

    def per_group(shards: list[str]) -> dict[str, Any]:
        kwargs = _pod_kwargs(project, stage, shards)
        mapped = {name: kwargs[name] for name in varying if name in kwargs}
        mapped["labels"] = {**(kwargs.get("labels") or {}), GROUP_POD_LABEL: group_label(shards)}
        return mapped

    return KubernetesPodOperator.partial(
        task_id=stage.task_id,
        doc_md=f"`{stage.cmd}` `--shards ...`",
        map_index_template="{{ task.labels['" + GROUP_POD_LABEL + "'] }}",
        **defaults,
        **shared,
    ).expand_kwargs(groups.map(per_group))


#: A TrainJob is named per stage and DAG run (a retry of the run's task attaches to it).
TRAINJOB_NAME = "fgclip-{stage}-{{{{ dag_run.run_after.strftime('%Y%m%d-%H%M%S-%f') }}}}"


def _trainjob_task(project: Project, stage: StageSpec, defaults: dict[str, Any]) -> Any:
    name = TRAINJOB_NAME.format(stage=stage.task_id.replace("_", "-"))
    argv = stage.command()
    return TrainJobOperator.for_command(
        task_id=stage.task_id,
        argv=[argv[0], *_form_flags(project, stage), *argv[1:]],
        settings=project.params.kubernetes,
        num_nodes=f"{{{{ params.{NUM_NODES} }}}}",
        name=name,
        doc_md=f"`{stage.cmd}` as a multi-node TrainJob",
        **defaults,
    )
