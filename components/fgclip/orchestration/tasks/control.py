"""The Airflow pieces both DAG files are wired from: the trigger forms, the dataset Asset
and the control tasks around the stages (apply the form, split the shards into groups,
publish a dataset version, pick and check one out, read the promotion gate). Stage tasks
come from tasks.stages.stage_task.

The control steps themselves live in control.py. On the `local` runtime a task calls them
in-process; on `kubernetes` they run in a pod on the shared workspace
(`python -m fgclip.orchestration.control ...`) and hand their result back as the pod's
XCom. What needs Airflow itself (the form's values, Asset events, the branch) stays in the
task on the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from fgclip.orchestration import control
from fgclip.orchestration.form import NUM_NODES, form_fields, form_set_flags, overrides
from fgclip.orchestration.kubernetes import pod_operator_kwargs
from fgclip.orchestration.pipeline import Project, load_project
from fgclip.orchestration.process import StageFailed
from fgclip.orchestration.tasks.stages import task_defaults

log = logging.getLogger(__name__)

DATASET_VERSION = "dataset_version"
FIRST_SHARD = "first_shard"
LAST_SHARD = "last_shard"
#: A dataset_version value that means: the version the triggering (or newest) Asset event carries.
LATEST = "latest"
PROMOTED_TASK = "champion_promoted"
KEPT_TASK = "champion_kept"
CONTROL_MODULE = "fgclip.orchestration.control"


def _fail(message: str) -> BaseException:
    """A failure no retry can fix (bad form values, a missing dataset version)."""
    return AirflowFailException(message)


def _call(step: Any, *args: Any) -> Any:
    """Run a control step in this task; its user errors fail the task without retries."""
    try:
        return step(*args)
    except control.ControlError as error:
        raise _fail(str(error)) from error
    except StageFailed as error:  # a dvc command; a flaky network is worth a retry
        raise (error if error.retryable else _fail(str(error))) from error


def dataset_asset(project: Project) -> Any:
    return Asset(name=project.settings.dataset_asset)


def _kubernetes(project: Project) -> bool:
    return project.settings.runtime == "kubernetes"


def _control_pod(project: Project, task_id: str, arguments: list[str], **kwargs: Any) -> Any:
    """A KubernetesPodOperator running one control step on the workspace; its JSON result
    is the task's XCom."""
    pod = pod_operator_kwargs(project.settings.control_component, ["fgclip", "--help"], project.params.kubernetes)
    pod.update(
        cmds=["python", "-m", CONTROL_MODULE],
        arguments=["--xcom-file", control.POD_XCOM_FILE, *arguments],
        do_xcom_push=True,
    )
    return KubernetesPodOperator(task_id=task_id, **{**task_defaults(project.settings), **pod, **kwargs})


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
            "description": "first shard number to build (NNNNN), inclusive",
        },
        LAST_SHARD: {
            "default": None,
            "type": ["integer", "null"],
            "minimum": 0,
            "title": "last shard",
            "description": "last shard number to build, inclusive; empty: up to the last shard",
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
        },
        NUM_NODES: {
            "default": 1,
            "type": "integer",
            "minimum": 1,
            "maximum": project.settings.max_nodes,
            "title": "number of nodes",
            "description": "training nodes (kubernetes runtime); local: 1",
        },
        **form_fields(project.settings.train_form, project.params),
    }
    return _params(fields)


def prepare_task(project: Project, form_keys: tuple[str, ...], *, training: bool = False) -> Any:
    """Check the form against the runtime; on `local`, write its values into params.yaml
    (like `dvc exp run -S`) so every stage and dvc.lock see them. On `kubernetes` the stage
    pods get them as `--set` flags and the publish step writes them for DVC."""
    root, kubernetes = project.root, _kubernetes(project)

    @task(task_id="prepare", doc_md=prepare_task.__doc__, multiple_outputs=False)
    def prepare() -> dict[str, Any]:
        values = get_current_context()["params"]
        if training and not kubernetes and int(values.get(NUM_NODES, 1)) != 1:
            raise _fail(
                f"the local runtime trains on this one machine: {NUM_NODES} must be 1 "
                f"(got {values[NUM_NODES]}); multi-node training needs orchestration.runtime=kubernetes"
            )
        chosen = overrides(values, form_keys)
        changed = {} if kubernetes else _call(control.apply_params, root, chosen)
        return {
            "workspace": str(root),
            "runtime": "kubernetes" if kubernetes else "local",
            "values": chosen,
            "changed": changed,
        }

    return prepare()


def shard_groups_task(project: Project) -> Any:
    """The shard groups the fanned-out stages map over (the form's shard range, in groups of
    orchestration.shard_group_size)."""
    doc = shard_groups_task.__doc__
    if _kubernetes(project):
        return _control_pod(
            project,
            "shard_groups",
            [
                "shard-groups",
                "--first",
                f"{{{{ params.{FIRST_SHARD} | tojson }}}}",
                "--last",
                f"{{{{ params.{LAST_SHARD} | tojson }}}}",
            ],
            doc_md=doc,
        ).output

    root = project.root

    @task(task_id="shard_groups", doc_md=doc)
    def groups() -> list[list[str]]:
        values = get_current_context()["params"]
        return _call(control.list_groups, load_project(root), values.get(FIRST_SHARD), values.get(LAST_SHARD))

    return groups()


def publish_task(project: Project) -> Any:
    """`dvc commit` + `dvc push` of the data stages' outputs and a version record on the
    remote; emits the dataset Asset whose extra carries the version."""
    asset = dataset_asset(project)
    doc = publish_task.__doc__
    if _kubernetes(project):

        def emit(context: Mapping[str, Any], result: Mapping[str, Any]) -> None:
            context["outlet_events"][asset].extra = dict(result)

        flags = form_set_flags(project.settings.data_form)
        return _control_pod(project, "publish", ["publish", *flags], outlets=[asset], post_execute=emit, doc_md=doc)

    root = project.root

    @task(task_id="publish", outlets=[asset], doc_md=doc, multiple_outputs=False)
    def publish() -> dict[str, Any]:
        extra = _call(control.publish, load_project(root))
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
    """Check the dataset version out into the workspace: nothing to do when dvc.lock has it,
    else its lock entries from the remote's version record and `dvc pull`."""
    doc = checkout_task.__doc__
    if _kubernetes(project):
        return _control_pod(project, "checkout_dataset", ["checkout", version], doc_md=doc)

    root = project.root

    @task(task_id="checkout_dataset", doc_md=doc, multiple_outputs=False)
    def checkout(wanted: str) -> dict[str, Any]:
        return _call(control.checkout, load_project(root), wanted)

    return checkout(version)


def decision_task(project: Project, version: Any) -> Any:
    """The registry's promotion decision (from the register stage's decision file); tags the
    new model version with the dataset version it was trained on."""
    doc = decision_task.__doc__
    if _kubernetes(project):
        return _control_pod(project, "registry_decision", ["decision", "--dataset-version", version], doc_md=doc)

    root = project.root

    @task(task_id="registry_decision", doc_md=doc, multiple_outputs=False)
    def read(dataset_version: str) -> dict[str, Any]:
        return _call(control.decision, load_project(root), dataset_version)

    return read(version)


def promotion_gate_task(decision: Any) -> Any:
    """The promotion gate's outcome, as a branch: `champion_promoted` runs when the new model
    version became champion, `champion_kept` when the champion stayed."""

    @task.branch(task_id="promotion_gate", doc_md=promotion_gate_task.__doc__)
    def gate(result: dict[str, Any]) -> str:
        log.info("%s v%s: %s - %s", result["name"], result["version"], result["decision"], result["reason"])
        return PROMOTED_TASK if result["promoted"] else KEPT_TASK

    return gate(decision)


def gate_outcomes() -> list[Any]:
    return [
        EmptyOperator(task_id=PROMOTED_TASK, doc_md="The new model version is the champion."),
        EmptyOperator(task_id=KEPT_TASK, doc_md="The gate kept the champion; the new version is the challenger."),
    ]
