"""The two DAGs' task graphs, shaped like the pipeline: an edge wherever a stage reads what
another writes (dvc.yaml's deps and outs), nothing more. So eval of stage 1 runs beside
stage 2, and the fanned-out stages form one mapped task group per shard group: each group
flows through recaption -> detect -> negatives on its own, never waiting for other groups.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task_group

from fgclip.orchestration.pipeline import Project, StageSpec
from fgclip.orchestration.process import CommandMain
from fgclip.orchestration.tasks.control import (
    approval_tasks,
    checkout_task,
    decision_task,
    gate_outcomes,
    merge_reports_task,
    prepare_task,
    promotion_gate_task,
    publish_task,
    resolve_dataset_task,
    shard_groups_task,
)
from fgclip.orchestration.tasks.stages import stage_task

SHARD_GROUP = "shard_group"


def _wire(
    project: Project,
    stages: list[StageSpec],
    made: dict[str, Any],
    start: Any,
    *,
    group: bool,
    main: CommandMain | None = None,
) -> None:
    """Make each stage's task (in run order) after the tasks of the stages it reads from;
    a stage that reads from none of `stages` (nor from what `made` has) comes after `start`."""
    upstream = project.pipeline.upstream
    for stage in stages:
        task_obj = stage_task(project, stage, start if group else None, main)
        before = [made[name] for name in sorted(upstream[stage.name]) if name in made]
        if before:
            for parent in before:
                parent >> task_obj
        elif not group:
            start >> task_obj
        made[stage.name] = task_obj


def data_build(project: Project, main: CommandMain | None = None) -> None:
    """`main`: the `fgclip` command's entry point, for shard groups run in their task's process."""
    prepare = prepare_task(project, project.settings.data_form, experiment=project.params.tracking.experiment)
    stages = project.data_stages()
    fanned = [stage for stage in stages if stage.fan_out]
    made: dict[str, Any] = {}
    _wire(project, [s for s in stages if not s.fan_out and not _after(project, s, fanned)], made, prepare, group=False)
    if fanned:
        groups = shard_groups_task(project)
        feeding = {name for stage in fanned for name in project.pipeline.upstream[stage.name]} - {
            s.name for s in fanned
        }
        for name in sorted(feeding & set(made)) or []:
            made[name] >> groups
        if not feeding & set(made):
            prepare >> groups

        @task_group(group_id=SHARD_GROUP, tooltip="one shard group through every fanned-out stage")
        def shard_group(shards: Any) -> None:
            _wire(project, fanned, {}, shards, group=True, main=main)

        mapped = shard_group.expand(shards=groups)
        merged = merge_reports_task(project, groups)
        mapped >> merged
        for stage in fanned:
            made[stage.name] = merged  # later stages read the merged outputs and reports
        _wire(project, [s for s in stages if not s.fan_out and _after(project, s, fanned)], made, merged, group=False)
    publish = publish_task(project)
    for stage in stages:
        made[stage.name] >> publish


def _after(project: Project, stage: StageSpec, fanned: list[StageSpec]) -> bool:
    """Whether the stage reads (directly or not) what a fanned-out stage writes."""
    return bool(project.pipeline.ancestors(stage.name) & {s.name for s in fanned})


def train(project: Project) -> None:
    prepare = prepare_task(
        project, project.settings.train_form, experiment=project.params.train.experiment, training=True
    )
    version = resolve_dataset_task(project)
    checkout = checkout_task(project, version)
    prepare >> version
    prepare >> checkout
    made: dict[str, Any] = {}
    stages = project.train_stages()
    _wire(project, stages, made, checkout, group=False)
    decision = decision_task(project, version)
    for stage in stages:  # the recorded state holds every train stage's outputs
        made[stage.name] >> decision
    gate = promotion_gate_task(decision)
    approve, promote = approval_tasks(project, decision)
    promoted, kept = gate_outcomes()
    gate >> [approve, promoted, kept]
    approve >> promote
