"""The Airflow pieces both DAG files are wired from: the trigger forms, the dataset Asset, the
control tasks around the stages (make the run's workspace, split the shards into groups,
merge their reports, publish a dataset version, pick and check one out, read the promotion
gate, ask a person to approve) and the callbacks that close the run's MLflow run. Stage
tasks come from tasks.stages.stage_task.

The control steps themselves live in control.py. On the `local` runtime a task calls them
in-process; on `kubernetes` they run in a pod on the shared workspace volume
(`python -m fgclip.orchestration.control ...`) and hand their result back as the pod's XCom.
What needs Airflow itself (the form's values, Asset events, the branch, the approval) stays
in the task on the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from fgclip.orchestration import control
from fgclip.orchestration.form import NUM_NODES, form_fields, form_set_flags, overrides, section_of
from fgclip.orchestration.gitrepo import RunError
from fgclip.orchestration.pipeline import Project
from fgclip.orchestration.process import StageFailed
from fgclip.orchestration.runs import read_marker
from fgclip.orchestration.tasks.common import PARENT_RUN_TEMPLATE
from fgclip.orchestration.tasks.stages import check_local_nodes, current_workspace

log = logging.getLogger(__name__)

DATASET_VERSION = "dataset_version"
FIRST_SHARD = "first_shard"
LAST_SHARD = "last_shard"
#: A dataset_version value that means: the version the triggering (or newest) Asset event carries.
LATEST = "latest"
PROMOTED_TASK = "champion_promoted"
KEPT_TASK = "champion_kept"
APPROVAL_TASK = "approve_champion"
PROMOTE_TASK = "promote_champion"
DATA_SOURCE_SECTION = "Data source"
RUN_SECTION = "Run"


def _fail(message: str) -> BaseException:
    """A failure no retry can fix (bad form values, a missing dataset version)."""
    return AirflowFailException(message)


def _call(step: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a control step in this task; its user errors fail the task without retries."""
    try:
        return step(*args, **kwargs)
    except (control.ControlError, RunError) as error:
        raise _fail(str(error)) from error
    except StageFailed as error:  # a dvc command; a flaky network is worth a retry
        raise (error if error.retryable else _fail(str(error))) from error


def dataset_asset(project: Project) -> Any:
    return Asset(name=project.settings.dataset_asset)


def _kubernetes(project: Project) -> bool:
    return project.settings.runtime == "kubernetes"


def _pod(project: Project, task_id: str, arguments: list[str], **kwargs: Any) -> Any:
    from fgclip.orchestration.tasks.pods import control_pod  # see pods.py: the cluster stack loads here only

    return control_pod(project, task_id, arguments, **kwargs)


def _params(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: Param(**spec) for name, spec in fields.items()}


def data_form(project: Project) -> dict[str, Any]:
    """Trigger form of the data build: the shard range and the configured params keys."""
    fields: dict[str, dict[str, Any]] = {
        FIRST_SHARD: {
            "default": 0,
            "type": "integer",
            "minimum": 0,
            "title": "first shard",
            "description": "first shard number to build (NNNNN) of the dataset, inclusive",
            "section": DATA_SOURCE_SECTION,
        },
        LAST_SHARD: {
            "default": None,
            "type": ["integer", "null"],
            "minimum": 0,
            "title": "last shard",
            "description": "last shard number to build, inclusive; empty: up to the last shard",
            "section": DATA_SOURCE_SECTION,
        },
        **form_fields(project.settings.data_form, project.params),
    }
    return _params(fields)


def train_form(project: Project) -> dict[str, Any]:
    """Trigger form of training: dataset version, number of nodes and the configured keys."""
    fields: dict[str, dict[str, Any]] = {
        DATASET_VERSION: {
            "default": LATEST,
            "type": "string",
            "pattern": r"^(latest|ds-[0-9a-f]+)$",
            "title": "dataset version",
            "description": "ds-... as published by the data build, or 'latest': the version of the "
            "Asset event that triggered the run (else the newest one)",
            "section": DATA_SOURCE_SECTION,
        },
        NUM_NODES: {
            "default": 1,
            "type": "integer",
            "minimum": 1,
            "maximum": project.settings.max_nodes,
            "title": "number of nodes",
            "description": "training nodes (kubernetes runtime); local: 1",
            "section": section_of("train"),
        },
        **form_fields(project.settings.train_form, project.params),
    }
    return _params(fields)


def prepare_task(project: Project, form_keys: tuple[str, ...], *, experiment: str, training: bool = False) -> Any:
    """The run's own workspace: a git worktree of the project at HEAD whose params.yaml holds
    the committed values plus the form's, and the run's MLflow run; the checkout is never
    written, so runs never see each other's values and the DAG never changes under a run."""
    doc = prepare_task.__doc__
    if _kubernetes(project):
        args = ["prepare", "--dag-id", "{{ dag.dag_id }}", "--run-id", "{{ run_id }}", "--experiment", experiment]
        return _pod(project, "prepare", [*args, *form_set_flags(form_keys)], home=True, doc_md=doc)

    home = project.root

    @task(task_id="prepare", doc_md=doc, multiple_outputs=False)
    def prepare() -> dict[str, Any]:
        context = get_current_context()
        values = context["params"]
        if training:
            check_local_nodes(values)
        chosen = overrides(values, form_keys)
        return _call(control.prepare, home, context["dag"].dag_id, context["run_id"], chosen, experiment=experiment)

    return prepare()


def shard_groups_task(project: Project) -> Any:
    """The shard groups the fanned-out stages map over (the form's shard range, in groups of
    orchestration.shard_group_size)."""
    doc = shard_groups_task.__doc__
    if _kubernetes(project):
        first, last = f"{{{{ params.{FIRST_SHARD} | tojson }}}}", f"{{{{ params.{LAST_SHARD} | tojson }}}}"
        return _pod(project, "shard_groups", ["shard-groups", "--first", first, "--last", last], doc_md=doc).output

    @task(task_id="shard_groups", doc_md=doc)
    def groups() -> list[list[str]]:
        values = get_current_context()["params"]
        return _call(control.list_groups, current_workspace(project), values.get(FIRST_SHARD), values.get(LAST_SHARD))

    return groups()


def merge_reports_task(project: Project, groups: Any) -> Any:
    """Each fanned-out stage's counts report, merged from its shard groups' reports: the
    file dvc.yaml names and `dvc metrics show` reads."""
    doc = merge_reports_task.__doc__
    if _kubernetes(project):
        groups_json = "{{ ti.xcom_pull(task_ids='shard_groups') | tojson }}"
        return _pod(project, "merge_reports", ["merge-reports", "--groups", groups_json], doc_md=doc)

    @task(task_id="merge_reports", doc_md=doc)
    def merge(all_groups: list[list[str]]) -> dict[str, Any]:
        return _call(control.merge, current_workspace(project), [list(group) for group in all_groups])

    return merge(groups)


def publish_task(project: Project) -> Any:
    """`dvc commit` + `dvc push` of the data stages' outputs, a git commit and the tag
    dataset/<version> in the run workspace, a version record on the remote; emits the dataset
    Asset whose extra carries the version."""
    asset = dataset_asset(project)
    doc = publish_task.__doc__
    if _kubernetes(project):

        def emit(context: Mapping[str, Any], result: Mapping[str, Any]) -> None:
            context["outlet_events"][asset].extra = dict(result)

        args = ["publish", "--parent-run-id", PARENT_RUN_TEMPLATE]  # the prepare pod's result
        return _pod(project, "publish", args, outlets=[asset], post_execute=emit, doc_md=doc)

    @task(task_id="publish", outlets=[asset], doc_md=doc, multiple_outputs=False)
    def publish() -> dict[str, Any]:
        workspace = current_workspace(project)
        extra = _call(control.publish, workspace, (read_marker(workspace.root) or {}).get("parent_run_id"))
        get_current_context()["outlet_events"][asset].extra = extra
        return extra

    return publish()


def resolve_dataset_task(project: Project) -> Any:
    """The dataset version to train on: the form's, else the triggering Asset event's, else
    the newest published one."""
    asset = dataset_asset(project)

    @task(task_id="resolve_dataset", inlets=[asset], doc_md=resolve_dataset_task.__doc__)
    def resolve() -> str:
        context = get_current_context()
        wanted = str(context["params"].get(DATASET_VERSION) or LATEST)
        if wanted != LATEST:
            log.info("dataset %s (from the trigger form)", wanted)
            return wanted
        version, source = _latest_version(context, asset)
        log.info("dataset %s (from the %s)", version, source)
        return version

    return resolve()


def _latest_version(context: Mapping[str, Any], asset: Any) -> tuple[str, str]:
    triggering = context.get("triggering_asset_events") or {}
    events = list(triggering.get(asset, [])) if triggering else []
    source = "triggering Asset event"
    if not events:
        events = list(context["inlet_events"][asset].ascending(False).limit(1))
        source = "newest Asset event"
    if not events:
        raise _fail(
            f"no dataset version was ever published (no {asset.name} Asset event): run the data build "
            f"DAG first, or give {DATASET_VERSION}"
        )
    version = (events[-1].extra or {}).get("version")
    if not version:
        raise _fail(f"the {asset.name} Asset event carries no version: {events[-1].extra}")
    return str(version), source


def checkout_task(project: Project, version: Any) -> Any:
    """Check the dataset version out into the run workspace: its data stages' dvc.lock entries
    and params, the data linked from the shared DVC cache (pulled from the remote if missing)."""
    doc = checkout_task.__doc__
    if _kubernetes(project):
        return _pod(project, "checkout_dataset", ["checkout", version], doc_md=doc)

    @task(task_id="checkout_dataset", doc_md=doc, multiple_outputs=False)
    def checkout(wanted: str) -> dict[str, Any]:
        return _call(control.checkout, current_workspace(project), wanted)

    return checkout(version)


def decision_task(project: Project, version: Any) -> Any:
    """The registry's promotion decision (from the register stage's decision file); the new
    model version gets its lineage (dataset version, the data build's and this run's MLflow
    runs, the git state) and the run's DVC state is committed and tagged model/<name>/v<n>."""
    doc = decision_task.__doc__
    if _kubernetes(project):
        args = ["decision", "--dataset-version", version, "--parent-run-id", PARENT_RUN_TEMPLATE]  # prepare's
        return _pod(project, "registry_decision", args, doc_md=doc)

    @task(task_id="registry_decision", doc_md=doc, multiple_outputs=False)
    def read(dataset_version: str) -> dict[str, Any]:
        workspace = current_workspace(project)
        parent = (read_marker(workspace.root) or {}).get("parent_run_id")
        return _call(control.decision, workspace, dataset_version, parent)

    return read(version)


def promotion_gate_task(decision: Any) -> Any:
    """The promotion gate's outcome, as a branch: `champion_promoted` when the new model version
    became champion, `approve_champion` when it passed the gate and a person has to approve
    (registry.require_approval), `champion_kept` when the champion stayed."""

    @task.branch(task_id="promotion_gate", doc_md=promotion_gate_task.__doc__)
    def gate(result: dict[str, Any]) -> str:
        log.info("%s v%s: %s - %s", result["name"], result["version"], result["decision"], result["reason"])
        if result.get("approval_required") and result.get("gate_passed"):
            return APPROVAL_TASK
        return PROMOTED_TASK if result["promoted"] else KEPT_TASK

    return gate(decision)


def approval_tasks(project: Project, decision: Any) -> tuple[Any, Any]:
    """A person approves (or rejects) the challenger in Airflow before `champion` moves; then
    the alias moves. A rejection skips both the move and `champion_promoted`."""
    approve = ApprovalOperator(
        task_id=APPROVAL_TASK,
        subject="Promote {{ ti.xcom_pull(task_ids='registry_decision')['name'] }} "
        "v{{ ti.xcom_pull(task_ids='registry_decision')['version'] }} to champion?",
        body="{{ ti.xcom_pull(task_ids='registry_decision')['reason'] }}",
        response_timeout=timedelta(seconds=project.params.registry.approval_timeout_s),
        doc_md=approval_tasks.__doc__,
    )
    if _kubernetes(project):
        name = "{{ ti.xcom_pull(task_ids='registry_decision')['name'] }}"
        number = "{{ ti.xcom_pull(task_ids='registry_decision')['version'] }}"
        promote = _pod(project, PROMOTE_TASK, ["promote", "--name", name, "--version", number])
    else:

        @task(task_id=PROMOTE_TASK, doc_md="Move the champion alias to the approved version.")
        def promote_local(result: dict[str, Any]) -> dict[str, Any]:
            return _call(control.promote, current_workspace(project), result["name"], str(result["version"]))

        promote = promote_local(decision)
    return approve, promote


def gate_outcomes() -> tuple[Any, Any]:
    return (
        EmptyOperator(
            task_id=PROMOTED_TASK,
            doc_md="The new model version is the champion.",
            trigger_rule="none_failed_min_one_success",
        ),
        EmptyOperator(task_id=KEPT_TASK, doc_md="The gate kept the champion; the new version is the challenger."),
    )


def finish_callbacks(project: Project) -> dict[str, Any]:
    """DAG callbacks that close the DAG run's MLflow run as FINISHED or FAILED."""

    def close(failed: bool) -> Any:
        def callback(context: Mapping[str, Any]) -> None:
            dag_run = context["dag_run"]
            try:
                control.close_dag_run(project, dag_run.dag_id, dag_run.run_id, failed)
            except Exception:  # the run's outcome stands either way; a tracking outage is logged
                log.exception("could not close the MLflow run of %s %s", dag_run.dag_id, dag_run.run_id)

        return callback

    return {"on_success_callback": close(False), "on_failure_callback": close(True)}
