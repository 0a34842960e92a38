"""Airflow tasks of the dvc.yaml stages on the configured runtime: the `local` runtime (a
subprocess on the Airflow worker, see process.py) or the `kubernetes` runtime (a pod on the
stage's node-pool preset, a TrainJob for training; see fgclip.orchestration.kubernetes).

The runtime only decides where: the command is always the dvc.yaml one (see pipeline.py),
run in the DAG run's own workspace (runs.py), whose params.yaml holds the form's values.
Each task takes a slot of its accelerator family's Airflow pool (`fgclip-<family>`), so a
thousand shard groups never put a thousand pods in front of the scheduler at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from fgclip.orchestration.control import run_project
from fgclip.orchestration.form import NUM_NODES
from fgclip.orchestration.pipeline import Project, StageSpec, group_label
from fgclip.orchestration.process import CommandMain, StageFailed, run_stage_locally
from fgclip.orchestration.runs import read_marker, run_dir
from fgclip.orchestration.tasks.common import GROUP_LABEL_KEY, pool_kwargs, task_defaults


def _fail(error: StageFailed) -> BaseException:
    """Airflow retries an ordinary exception; an AirflowFailException fails at once."""
    if error.retryable:
        return error
    return AirflowFailException(str(error))


def current_workspace(project: Project) -> Project:
    """The project of the running DAG run's workspace (see runs.py)."""
    context = get_current_context()
    return run_project(run_dir(project.root, project.settings, context["dag"].dag_id, context["run_id"]))


def parent_run_of(workspace: Project) -> str | None:
    return (read_marker(workspace.root) or {}).get("parent_run_id")


def stage_task(project: Project, stage: StageSpec, shards: Any = None, main: CommandMain | None = None) -> Any:
    """The Airflow task of one dvc.yaml stage on the configured runtime; a fanned-out stage
    takes `shards` (inside the mapped shard-group task group: its group). `main`: the `fgclip`
    command's entry point, to run a shard group in its task's own process (local runtime,
    orchestration.fan_out_in_process)."""
    if stage.fan_out and shards is None:
        raise ValueError(f"stage {stage.name} is fanned out: pass its shard group")
    if project.settings.runtime == "kubernetes":
        from fgclip.orchestration.tasks.pods import kubernetes_task  # see pods.py: the cluster stack loads here only

        return kubernetes_task(project, stage, shards if stage.fan_out else None)
    in_process = main if stage.fan_out and project.settings.fan_out_in_process else None
    return _local_task(project, stage, shards if stage.fan_out else None, in_process)


def _local_task(project: Project, stage: StageSpec, shards: Any, main: CommandMain | None) -> Any:
    doc = f"`{stage.cmd}`" + (" `--shards ...`: one task per shard group" if stage.fan_out else "")

    @task(
        task_id=stage.task_id,
        doc_md=doc,
        map_index_template="{{ " + GROUP_LABEL_KEY + " }}" if stage.fan_out else None,
        multiple_outputs=False,
        **task_defaults(project.settings),
        **pool_kwargs(project, stage),
    )
    def run(shards: Sequence[str] | None = None) -> dict[str, Any]:
        context = get_current_context()
        if shards:
            context[GROUP_LABEL_KEY] = group_label(shards)  # type: ignore[literal-required]
        workspace = current_workspace(project)  # the stage as the run's dvc.yaml has it
        try:
            return run_stage_locally(
                workspace,
                workspace.pipeline.stage(stage.name),
                list(shards) if shards else None,
                parent_run_of(workspace),
                main,
                retry=int(context["ti"].try_number) > 1,
            )
        except StageFailed as error:
            raise _fail(error) from error

    return run(shards) if shards is not None else run()


def check_local_nodes(values: Any) -> None:
    if int(values.get(NUM_NODES, 1)) != 1:
        raise AirflowFailException(
            f"the local runtime trains on this one machine: {NUM_NODES} must be 1 "
            f"(got {values[NUM_NODES]}); multi-node training needs orchestration.runtime=kubernetes"
        )
