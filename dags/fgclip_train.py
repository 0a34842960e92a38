"""FG-CLIP training: stage 1 -> stage 2, eval of each beside the next, register, promotion gate.

Scheduled on the `fgclip_dataset` Asset (each published dataset version trains a model)
or triggered by hand. Each run works in its own workspace (a git worktree of the project
with the form's values in its params.yaml): `resolve_dataset` picks the version (the form's,
the triggering Asset event's, or the newest) and `checkout_dataset` links it in from the
shared DVC cache. Each stage task then runs its dvc.yaml command (the same one `dvc repro`
runs) on the runtime that `orchestration.runtime` picks: a subprocess on this worker
(`local`) or a pod on the stage's node pool (`kubernetes`; training as a multi-node
TrainJob). `register` adds a model version to the MLflow registry, logged in its training
run; `registry_decision` tags it with its lineage and commits the run's DVC state (tag
`model/<name>/v<version>`); `promotion_gate` shows the decision: `champion_promoted`,
`champion_kept`, or (registry.require_approval) `approve_champion`, where a person approves
before `promote_champion` moves the alias.

Trigger form: dataset version, number of nodes and the params.yaml keys in
`orchestration.train_form` (the recipe among them).
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag

from fgclip.orchestration.pipeline import load_project, project_root
from fgclip.orchestration.tasks import graph
from fgclip.orchestration.tasks.common import dag_macros
from fgclip.orchestration.tasks.control import dataset_asset, finish_callbacks, train_form

# params.yaml and dvc.yaml as committed (see fgclip_data_build.py).
PROJECT = load_project(project_root(Path(__file__).resolve().parent), committed=True)


@dag(
    dag_id="fgclip_train",
    description="Train FG-CLIP on a dataset version, evaluate, register and gate the champion",
    schedule=[dataset_asset(PROJECT)],
    catchup=False,
    max_active_runs=PROJECT.settings.max_active_runs,
    params=train_form(PROJECT),
    user_defined_macros=dag_macros(),
    tags=["fgclip", "train"],
    doc_md=__doc__,
    **finish_callbacks(PROJECT),
)
def fgclip_train() -> None:
    graph.train(PROJECT)


fgclip_train()
