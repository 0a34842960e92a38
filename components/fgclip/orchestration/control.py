"""The DAGs' control steps: make a DAG run's own workspace and MLflow run (prepare), split the
shards into groups, merge the groups' reports, publish a dataset version, check one out, read
the registry's decision and record the model's lineage, promote after an approval. Every step
but prepare works in the run workspace, never in the checkout. The local runtime calls them
in the Airflow task; the kubernetes runtime runs them in a pod that mounts the shared
workspace volume:

    python -m fgclip.orchestration.control [--workspace DIR] [--xcom-file FILE] STEP ...

which prints the step's result as JSON and, with --xcom-file, writes it where the
KubernetesPodOperator's XCom sidecar reads it. Exit code 2: a user error (no retry helps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fgclip.config import parse_override
from fgclip.core.dataset import load_manifest
from fgclip.core.storage import write_text_atomic
from fgclip.core.tracking import tracking_uri
from fgclip.errors import ComponentError, ExitCode
from fgclip.orchestration.dataset import DatasetError, checkout_version, dvc, read_record
from fgclip.orchestration.dataset import publish as publish_dataset
from fgclip.orchestration.form import drop_empty
from fgclip.orchestration.gitrepo import RunError
from fgclip.orchestration.pipeline import (
    PipelineError,
    Project,
    group_label,
    load_project,
    shard_groups,
)
from fgclip.orchestration.process import StageFailed, absolute_tracking_uri
from fgclip.orchestration.reports import ReportError, merge_reports
from fgclip.orchestration.runs import (
    MARKER_FILE,
    create_run_workspace,
    home_of,
    read_marker,
    record_state,
    repository_lock,
    run_key,
    update_marker,
)

log = logging.getLogger(__name__)

#: Where the KubernetesPodOperator's XCom sidecar picks up a pod's result.
POD_XCOM_FILE = "/airflow/xcom/return.json"
DECISION_FILE_FLAG = "--decision-out"
DATASET_VERSION_TAG = "dataset.version"
#: Tag of the parent MLflow run that names its DAG run (run_key: `<dag>/<run>`).
DAG_RUN_TAG = "fgclip.dag_run"


class ControlError(RuntimeError):
    """A control step cannot go on; the message says why (a user error, not retried)."""


def run_project(run_dir: str | Path) -> Project:
    """The project of a run workspace (its params and dvc.yaml, its checkout as home)."""
    root = Path(run_dir)
    if read_marker(root) is None:
        raise ControlError(f"{root} is not a run workspace (no {MARKER_FILE}); the prepare step makes one")
    return load_project(root, home=home_of(root))


def prepare(
    home: Path, dag_id: str, run_id: str, values: Mapping[str, Any], *, experiment: str | None = None
) -> dict[str, Any]:
    """The DAG run's own workspace (a git worktree at HEAD with the committed params plus the
    form's `values`) and its parent MLflow run; the checkout is never written."""
    project = load_project(home, committed=True)
    try:
        made = create_run_workspace(home, project.settings, dag_id, run_id, drop_empty(values))
    except RunError as error:
        raise ControlError(str(error)) from error
    workspace = run_project(made["run_dir"])
    with repository_lock(home):  # one writer creates an embedded (sqlite) MLflow store, not two at once
        parent = start_parent_run(workspace, experiment, dag_id, run_id, made)
    update_marker(workspace.root, parent_run_id=parent)
    return {**made, "parent_run_id": parent}


def _client(project: Project) -> Any:
    # MLflow only when a step needs it: the DAG files import this module at every parse.
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=_tracking_uri(project))


def start_parent_run(
    project: Project, experiment: str | None, dag_id: str, run_id: str, made: Mapping[str, Any]
) -> str | None:
    """One MLflow run per DAG run, every stage and shard-group run nested under it (a retry of
    the prepare step finds the one it made before)."""
    if not project.params.tracking.enabled:
        return None
    client = _client(project)
    name = experiment or project.params.tracking.experiment
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    key = run_key(dag_id, run_id)
    existing = client.search_runs([experiment_id], filter_string=f"tags.`{DAG_RUN_TAG}` = '{key}'", max_results=1)
    if existing:
        return str(existing[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=key.replace("/", " "),
        tags={
            DAG_RUN_TAG: key,
            "airflow.dag_id": dag_id,
            "airflow.run_id": run_id,
            "git.commit": str(made.get("base_commit")),
            "run_workspace": os.path.relpath(made["run_dir"], project.home_root),
        },
    )
    client.log_dict(run.info.run_id, dict(made.get("changed") or {}), "form_values.json")
    return str(run.info.run_id)


def finish_parent_run(project: Project, parent_run_id: str | None, failed: bool) -> None:
    if parent_run_id and project.params.tracking.enabled:
        _client(project).set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")


def close_dag_run(project: Project, dag_id: str, run_id: str, failed: bool) -> str | None:
    """End the DAG run's MLflow run as FINISHED or FAILED: the one its run workspace names,
    else (Airflow does not see the workspace volume on a cluster) the one tagged with it."""
    folder = Path(project.root) / project.settings.runs_dir / run_key(dag_id, run_id)
    marker = read_marker(folder) or {}
    parent = marker.get("parent_run_id")
    if not project.params.tracking.enabled:
        return None
    client = _client(project)
    if not parent:
        names = {project.params.tracking.experiment, project.params.train.experiment}
        experiments = [found.experiment_id for name in sorted(names) if (found := client.get_experiment_by_name(name))]
        tagged = client.search_runs(
            experiments, filter_string=f"tags.`{DAG_RUN_TAG}` = '{run_key(dag_id, run_id)}'", max_results=1
        )
        parent = str(tagged[0].info.run_id) if tagged else None
    finish_parent_run(project, parent, failed)
    return parent


def list_groups(project: Project, first: int | None, last: int | None) -> list[list[str]]:
    """The fan-out's shard groups over `first`..`last` of the shards the dataset stage pinned
    (its manifest names them). The stages after the fan-out (QC, training) read every shard
    of the dataset, and a run's workspace holds only what the run made: a range that leaves
    shards out is refused here, before any work, not at QC (a dataset of part of a source is
    another dataset, named in the `dataset` section)."""
    source = project.settings.dataset_manifest
    manifest = source if "://" in source else project.root / source
    try:
        names = sorted(load_manifest(manifest).shards)
    except ComponentError as error:
        raise ControlError(str(error)) from error
    try:
        groups = shard_groups(names, project.settings.shard_group_size, first, last)
    except (PipelineError, ValueError) as error:
        raise ControlError(f"{manifest}: {error}") from error
    left_out = sorted(set(names) - {shard for group in groups for shard in group})
    if left_out:
        raise ControlError(
            f"the shard range {first}..{last} leaves out {len(left_out)} of the {len(names)} shards of {manifest} "
            f"({', '.join(left_out[:5])}{'...' if len(left_out) > 5 else ''}), which QC and training read: "
            "build every shard of a dataset (choose the dataset, not a range, to build a smaller one)"
        )
    log.info("%d shard groups: %s", len(groups), ", ".join(group_label(group) for group in groups))
    return groups


def merge(project: Project, groups: list[list[str]] | None = None) -> dict[str, Any]:
    """The fanned-out stages' reports, merged from their shard groups' (what dvc metrics shows)."""
    try:
        return merge_reports(project, groups)
    except ReportError as error:
        raise ControlError(str(error)) from error


def publish(project: Project, parent_run_id: str | None = None) -> dict[str, Any]:
    """Publish the run workspace's dataset version (DVC, git tag, version record); returns what
    the dataset Asset event carries."""
    try:
        record = publish_dataset(project, {"mlflow_run_id": parent_run_id} if parent_run_id else None)
    except (DatasetError, RunError) as error:
        raise ControlError(str(error)) from error
    keep = ("version", "record", "remote", "outs", "commit", "tag", "mlflow_run_id")
    return {key: record[key] for key in keep if key in record}


def checkout(project: Project, version: str) -> dict[str, Any]:
    try:
        return checkout_version(project, version)
    except DatasetError as error:
        raise ControlError(str(error)) from error


def register_stage(project: Project) -> str:
    """The train stage that runs `fgclip register` (the one the promotion gate reads)."""
    found = [stage.name for stage in project.train_stages() if stage.component == "register"]
    if len(found) != 1:
        raise PipelineError(f"the train stages need exactly one `fgclip register` stage; found {found or 'none'}")
    return found[0]


def _tracking_uri(project: Project) -> str:
    """The tracking URI the components used (a relative sqlite store is the checkout's)."""
    return absolute_tracking_uri(tracking_uri(project.params.tracking), project.home_root)


def decision(project: Project, dataset_version: str | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """The registry's promotion decision, read from the register stage's decision file. The new
    model version gets its lineage as tags (the dataset version, its git state and the data
    build's MLflow run, this DAG run's MLflow run), and the run workspace's training state
    (dvc.lock of every stage, params) is committed and tagged model/<name>/v<version>."""
    stage = project.pipeline.stage(register_stage(project))
    relative = stage.option(DECISION_FILE_FLAG)
    if relative is None:
        raise ControlError(
            f"stage {stage.name} has no {DECISION_FILE_FLAG} in its command: the gate cannot read "
            "the registry's decision"
        )
    path = project.root / relative
    if not path.is_file():
        raise ControlError(f"the {stage.name} stage wrote no decision file {path}")
    result = json.loads(path.read_text())
    state: dict[str, str] = {}
    if read_marker(project.root) is not None:
        try:
            dvc(project, "commit", "--force", *[s.name for s in project.train_stages()])
            tag = project.settings.model_tag.format(name=result["name"], version=result["version"])
            reports = [out for train_stage in project.train_stages() for out in train_stage.git_outs]
            message = f"model {result['name']} v{result['version']}"
            state = record_state(project.root, project.settings, message, tag, reports)
        except (RunError, StageFailed) as error:
            raise ControlError(f"could not record the trained model's DVC state: {error}") from error
    tags = {
        DATASET_VERSION_TAG: dataset_version,
        "dataset.commit": _dataset_field(project, dataset_version, "commit"),
        "dataset.mlflow_run": _dataset_field(project, dataset_version, "mlflow_run_id"),
        "pipeline.mlflow_run": parent_run_id,
        "pipeline.commit": state.get("commit"),
        "pipeline.tag": state.get("tag"),
    }
    if project.params.tracking.enabled:
        client = _client(project)
        for key, value in tags.items():
            if value:
                client.set_model_version_tag(result["name"], str(result["version"]), key, str(value))
    log.info(
        "%s v%s: %s (%s); champion: v%s",
        result["name"],
        result["version"],
        result["decision"],
        result["reason"],
        result["champion_after"],
    )
    keep = (
        "name",
        "version",
        "decision",
        "promoted",
        "gate_passed",
        "approval_required",
        "reason",
        "champion_before",
        "champion_after",
        "model_uri",
        "run_id",
        "training_run_id",
    )
    return {**{key: result.get(key) for key in keep}, "dataset_version": dataset_version, **state}


def _dataset_field(project: Project, version: str | None, field: str) -> str | None:
    if not version:
        return None
    try:
        return read_record(project, version).get(field)
    except DatasetError:
        return None


def promote(project: Project, name: str, version: str) -> dict[str, Any]:
    """Move the champion alias to `version` (after a person approved it in Airflow)."""
    client = _client(project)
    alias = project.params.registry.champion_alias
    before = (client.get_registered_model(name).aliases or {}).get(alias)
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), "gate.approved", "true")
    log.info("%s: %s moved from v%s to v%s", name, alias, before, version)
    return {"name": name, "version": str(version), "champion_before": None if before is None else str(before)}


# --------------------------------------------------------------------------- the CLI


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "null") else int(text)


def _optional_json(text: str) -> Any:
    return None if text.strip().lower() in ("", "none", "null") else json.loads(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fgclip.orchestration.control", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workspace", default=".", help="the run workspace (prepare: the project checkout; default: here)"
    )
    parser.add_argument(
        "--xcom-file", default=None, metavar="FILE", help=f"also write the result here (a pod: {POD_XCOM_FILE})"
    )
    sub = parser.add_subparsers(dest="step", required=True)
    start = sub.add_parser("prepare", help="make the DAG run's workspace (git worktree + params) and MLflow run")
    start.add_argument("--dag-id", required=True)
    start.add_argument("--run-id", required=True)
    start.add_argument("--experiment", default=None)
    start.add_argument(
        "--set", dest="values", action="append", default=[], type=parse_override, metavar="SECTION.KEY=VALUE"
    )
    groups = sub.add_parser("shard-groups", help="split the shard source into the fan-out's groups")
    groups.add_argument("--first", type=_optional_int, default=None)
    groups.add_argument("--last", type=_optional_int, default=None)
    merged = sub.add_parser("merge-reports", help="merge the shard groups' reports into each stage's")
    merged.add_argument("--groups", type=_optional_json, default=None, help="JSON list of this run's groups")
    pub = sub.add_parser("publish", help="dvc commit + push the data stages; git tag + version record")
    out = sub.add_parser("checkout", help="check a dataset version out into the run workspace")
    out.add_argument("version")
    gate = sub.add_parser("decision", help="read the registry's decision; record the model's lineage and state")
    gate.add_argument("--dataset-version", default=None)
    for child in (pub, gate):
        child.add_argument("--parent-run-id", default=None)
    up = sub.add_parser("promote", help="move the champion alias to a model version")
    up.add_argument("--name", required=True)
    up.add_argument("--version", required=True)
    return parser


def run(args: argparse.Namespace) -> Any:
    root = Path(args.workspace).resolve()
    if args.step == "prepare":
        return prepare(root, args.dag_id, args.run_id, dict(args.values), experiment=args.experiment)
    project = run_project(root)
    if args.step == "shard-groups":
        return list_groups(project, args.first, args.last)
    if args.step == "merge-reports":
        return merge(project, args.groups)
    if args.step == "publish":
        return publish(project, args.parent_run_id)
    if args.step == "checkout":
        return checkout(project, args.version)
    if args.step == "promote":
        return promote(project, args.name, args.version)
    return decision(project, args.dataset_version, args.parent_run_id)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ControlError, PipelineError, RunError) as error:
        print(f"{args.step}: error: {error}", file=sys.stderr)
        return ExitCode.USER_ERROR
    text = json.dumps(result, sort_keys=True)
    if args.xcom_file:
        write_text_atomic(args.xcom_file, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
