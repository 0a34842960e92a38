"""FG-CLIP data build: recaption -> detect -> negatives -> qc -> publish.

Each task runs its dvc.yaml stage's command (the same one `dvc repro` runs) on the runtime
that `orchestration.runtime` picks: a subprocess on this worker (`local`) or a pod on the
stage's node pool (`kubernetes`). Recaption, detect and negatives run once per shard group
(`orchestration.shard_group_size` shards, mapped tasks named by their shards); components
skip shards they finished before, so a rerun or a retry redoes only what is missing.
`publish` records the outputs with DVC, pushes them to the remote and emits the
`fgclip_dataset` Asset carrying the dataset version, which schedules `fgclip_train`.

Trigger form: the shard range and the params.yaml keys in `orchestration.data_form`; the
values are written to params.yaml before the stages run (like `dvc exp run -S`).
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import chain, dag

from fgclip.orchestration.pipeline import load_project, project_root
from fgclip.orchestration.tasks.control import data_form, prepare_task, publish_task, shard_groups_task
from fgclip.orchestration.tasks.stages import stage_task

PROJECT = load_project(project_root(Path(__file__).resolve().parent))


@dag(
    dag_id="fgclip_data_build",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    params=data_form(PROJECT),
    tags=["fgclip", "data"],
    doc_md=__doc__,
)
def fgclip_data_build() -> None:
    steps = [prepare_task(PROJECT, PROJECT.settings.data_form)]
    groups = None
    for stage in PROJECT.data_stages():
        if stage.fan_out and groups is None:  # shards exist once the stages before have run
            groups = shard_groups_task(PROJECT)
            steps.append(groups)
        steps.append(stage_task(PROJECT, stage, groups))
    steps.append(publish_task(PROJECT))
    chain(*steps)


fgclip_data_build()
