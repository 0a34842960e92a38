"""FG-CLIP data build: shard groups through recaption -> detect -> negatives, then qc, publish.

Each task runs its dvc.yaml stage's command (the same one `dvc repro` runs) on the runtime
that `orchestration.runtime` picks: a subprocess on this worker (`local`) or a pod on the
stage's node pool (`kubernetes`), in this DAG run's own workspace: a git worktree of the
project with the form's values in its params.yaml, sharing the project's DVC cache. The
checkout is never written, so runs of other datasets, shard ranges or settings go on side
by side. Recaption, detect and negatives run once per shard group
(`orchestration.shard_group_size` shards), each group through all three on its own;
components skip shards they finished before, so a retry redoes only what is missing.
`merge_reports` sums the groups' counts into each stage's report; `publish` records the
outputs with DVC, commits and tags the state (`dataset/<version>`), pushes it to the remote
and emits the `fgclip_dataset` Asset carrying the version, which schedules `fgclip_train`.

Trigger form: the shard range and the params.yaml keys in `orchestration.data_form`, by
section; every field opens with the committed value, and an empty text field keeps it.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag

from fgclip.cli import main as fgclip_main
from fgclip.orchestration.pipeline import load_project, project_root
from fgclip.orchestration.tasks import graph
from fgclip.orchestration.tasks.common import dag_macros
from fgclip.orchestration.tasks.control import data_form, finish_callbacks

# params.yaml and dvc.yaml as committed: what every run starts from, so the DAG never changes
# under a run and the form's defaults never drift.
PROJECT = load_project(project_root(Path(__file__).resolve().parent), committed=True)


@dag(
    dag_id="fgclip_data_build",
    description="Build a fine-grained dataset version from image-text shards (recaption, detect, negatives, QC)",
    schedule=None,
    catchup=False,
    max_active_runs=PROJECT.settings.max_active_runs,
    params=data_form(PROJECT),
    user_defined_macros=dag_macros(),
    tags=["fgclip", "data"],
    doc_md=__doc__,
    **finish_callbacks(PROJECT),
)
def fgclip_data_build() -> None:
    graph.data_build(PROJECT, fgclip_main)  # shard groups run in their task's own process


fgclip_data_build()
