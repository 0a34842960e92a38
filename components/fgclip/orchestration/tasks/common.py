"""What every fgclip task shares: its retries, timeout and priority, its Airflow pool, the
names that label mapped tasks, and the macro that names a run's workspace in templates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.pipeline import Project, StageSpec
from fgclip.orchestration.runs import run_key

#: The key of the context entry that names a mapped task in the UI.
GROUP_LABEL_KEY = "shard_group"
#: A mapped pod's label that names its shard group (also its name in the UI).
GROUP_POD_LABEL = "fgclip.io/shard-group"
#: The DAG macro that names a run's workspace folder (`<dag>/<run>`) in templates.
RUN_KEY_MACRO = "fgclip_run_key"
POOL_PREFIX = "fgclip-"
#: The parent MLflow run of the DAG run, as the prepare pod returned it (kubernetes runtime).
PARENT_RUN_TEMPLATE = "{{ ti.xcom_pull(task_ids='prepare')['parent_run_id'] or '' }}"


def dag_macros() -> dict[str, Any]:
    """The user-defined macros every fgclip DAG needs (the run workspace in pod templates)."""
    return {RUN_KEY_MACRO: run_key}


def task_defaults(settings: OrchestrationConfig) -> dict[str, Any]:
    return {
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
        "execution_timeout": timedelta(seconds=settings.task_timeout_s),
        # a task deeper in the pipeline goes first: shard groups finish before new ones start
        "weight_rule": "upstream",
    }


def stage_pool(project: Project, stage: StageSpec) -> str | None:
    """The Airflow pool of the stage's accelerator family, if orchestration.pools has it."""
    family = project.params.kubernetes.pools[project.params.kubernetes.pool_for(stage.base_name)].family
    name = POOL_PREFIX + family
    return name if name in project.settings.pools else None


def pool_kwargs(project: Project, stage: StageSpec) -> dict[str, Any]:
    pool = stage_pool(project, stage)
    return {"pool": pool} if pool else {}
