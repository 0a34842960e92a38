"""FG-CLIP training: stage 1 -> stage 2 -> eval -> register -> promotion gate.

Scheduled on the `fgclip_dataset` Asset (each published dataset version trains a model)
or triggered by hand. `resolve_dataset` picks the version (the form's, the triggering
Asset event's, or the newest) and `checkout_dataset` checks it out with DVC. Each stage
task then runs its dvc.yaml command (the same one `dvc repro` runs) on the runtime that
`orchestration.runtime` picks: a subprocess on this worker (`local`) or a pod on the
stage's node pool (`kubernetes`; training as a multi-node TrainJob). `register` adds a
model version to the MLflow registry and moves the champion alias only through the gate;
`promotion_gate` shows the decision: `champion_promoted` or `champion_kept` runs, the
other is skipped.

Trigger form: dataset version, number of nodes and the params.yaml keys in
`orchestration.train_form` (the recipe among them).
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import chain, dag

from fgclip.orchestration.pipeline import load_project, project_root
from fgclip.orchestration.tasks.control import (
    checkout_task,
    dataset_asset,
    decision_task,
    gate_outcomes,
    prepare_task,
    promotion_gate_task,
    resolve_dataset_task,
    train_form,
)
from fgclip.orchestration.tasks.stages import stage_task

PROJECT = load_project(project_root(Path(__file__).resolve().parent))


@dag(
    dag_id="fgclip_train",
    schedule=[dataset_asset(PROJECT)],
    catchup=False,
    max_active_runs=1,
    params=train_form(PROJECT),
    tags=["fgclip", "train"],
    doc_md=__doc__,
)
def fgclip_train() -> None:
    version = resolve_dataset_task(PROJECT)
    stages = [stage_task(PROJECT, stage) for stage in PROJECT.train_stages()]
    decision = decision_task(PROJECT, version)
    chain(
        prepare_task(PROJECT, PROJECT.settings.train_form, training=True),
        version,
        checkout_task(PROJECT, version),
        *stages,
        decision,
        promotion_gate_task(decision),
        gate_outcomes(),
    )


fgclip_train()
