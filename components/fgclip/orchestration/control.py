"""The DAGs' control steps that work on the workspace (params.yaml, dvc.lock, the DVC remote,
the registry's decision). The local runtime calls them in the Airflow task; the kubernetes
runtime runs them in a pod that mounts the shared workspace:

    python -m fgclip.orchestration.control [--workspace DIR] [--xcom-file FILE] STEP ...

which prints the step's result as JSON and, with --xcom-file, writes it where the
KubernetesPodOperator's XCom sidecar reads it. Exit code 2: a user error (no retry helps).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML

from fgclip.config import load_params, parse_override
from fgclip.core.dataset import DatasetManifest
from fgclip.core.storage import read_text, write_text_atomic
from fgclip.core.tracking import tracking_uri
from fgclip.errors import ExitCode
from fgclip.orchestration.dataset import DatasetError, checkout_version
from fgclip.orchestration.dataset import publish as publish_dataset
from fgclip.orchestration.pipeline import (
    PARAMS_FILE,
    PipelineError,
    Project,
    group_label,
    load_project,
    shard_groups,
)

log = logging.getLogger(__name__)

#: Where the KubernetesPodOperator's XCom sidecar picks up a pod's result.
POD_XCOM_FILE = "/airflow/xcom/return.json"
DECISION_FILE_FLAG = "--decision-out"
DATASET_VERSION_TAG = "dataset.version"


class ControlError(RuntimeError):
    """A control step cannot go on; the message says why (a user error, not retried)."""


def apply_params(root: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """Write dotted-key values into root/params.yaml, as `dvc exp run --set-param` does, so
    every stage (and dvc.lock) sees the values the run used; returns the keys that changed.

    The whole file is validated with the new values before it is written, and its layout
    and comments are kept (ruamel round trip)."""
    path = root / PARAMS_FILE
    current = load_params(path).model_dump(mode="json")
    changed: dict[str, Any] = {}
    for key, value in values.items():
        node: Any = current
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ControlError(f"params.yaml has no key {key!r}")
            node = node[part]
        if node != value:
            changed[key] = value
    if not changed:
        return {}
    try:
        load_params(path, changed)
    except ValidationError as error:
        raise ControlError(f"these values are not valid params: {error}") from error
    yaml = YAML()
    yaml.preserve_quotes = True
    document = (yaml.load(path.read_text()) if path.is_file() else None) or {}
    for key, value in changed.items():
        node = document
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out = StringIO()
    yaml.dump(document, out)
    write_text_atomic(path, out.getvalue())
    log.info("params.yaml: %s", ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    return changed


def list_groups(project: Project, first: int | None, last: int | None) -> list[list[str]]:
    """Shard groups of the dataset the dataset stage pinned (its manifest names the shards)."""
    source = project.settings.dataset_manifest
    manifest = source if "://" in source else project.root / source
    try:
        shards = sorted(DatasetManifest.from_json(read_text(manifest), str(manifest)).shards)
        groups = shard_groups(shards, project.settings.shard_group_size, first, last)
    except FileNotFoundError as error:
        raise ControlError(f"{manifest}: no dataset manifest; the dataset stage writes it") from error
    except (PipelineError, ValueError) as error:
        raise ControlError(f"{manifest}: {error}") from error
    log.info("%d shard groups: %s", len(groups), ", ".join(group_label(group) for group in groups))
    return groups


def publish(project: Project, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply the run's params (a pod got them as --set), then publish the dataset version;
    returns what the dataset Asset event carries."""
    if values:
        apply_params(project.root, values)
        project = load_project(project.root)
    try:
        record = publish_dataset(project)
    except DatasetError as error:
        raise ControlError(str(error)) from error
    return {
        "version": record["version"],
        "record": record["record"],
        "remote": record["remote"],
        "outs": record["outs"],
    }


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
    """The tracking URI the components used (they run in the workspace, so a relative
    sqlite path is relative to it)."""
    uri = tracking_uri(project.params.tracking)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str(project.root / uri[len(prefix) :])
    return uri


def decision(project: Project, dataset_version: str | None = None) -> dict[str, Any]:
    """The registry's promotion decision, read from the register stage's decision file;
    the new model version is tagged with the dataset version it was trained on."""
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
    if dataset_version:
        # MLflow only when a step needs it: the DAG files import this module at every parse.
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=_tracking_uri(project)).set_model_version_tag(
            result["name"], str(result["version"]), DATASET_VERSION_TAG, dataset_version
        )
    log.info(
        "%s v%s: %s (%s); champion: v%s",
        result["name"],
        result["version"],
        result["decision"],
        result["reason"],
        result["champion_after"],
    )
    keep = ("name", "version", "decision", "promoted", "reason", "champion_before", "champion_after", "model_uri")
    return {**{key: result.get(key) for key in keep}, "dataset_version": dataset_version}


# --------------------------------------------------------------------------- the CLI


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "null") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fgclip.orchestration.control", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workspace", default=".", help="the DVC project (default: the working directory)")
    parser.add_argument(
        "--xcom-file", default=None, metavar="FILE", help=f"also write the result here (a pod: {POD_XCOM_FILE})"
    )
    sub = parser.add_subparsers(dest="step", required=True)
    groups = sub.add_parser("shard-groups", help="split the shard source into the fan-out's groups")
    groups.add_argument("--first", type=_optional_int, default=None)
    groups.add_argument("--last", type=_optional_int, default=None)
    params = sub.add_parser("apply-params", help="write --set values into params.yaml")
    pub = sub.add_parser("publish", help="dvc commit + push the data stages; record the dataset version")
    for child in (params, pub):
        child.add_argument(
            "--set", dest="values", action="append", default=[], type=parse_override, metavar="SECTION.KEY=VALUE"
        )
    out = sub.add_parser("checkout", help="check a dataset version out of the DVC remote")
    out.add_argument("version")
    gate = sub.add_parser("decision", help="read the registry's promotion decision")
    gate.add_argument("--dataset-version", default=None)
    return parser


def run(args: argparse.Namespace) -> Any:
    root = Path(args.workspace).resolve()
    project = load_project(root)
    if args.step == "shard-groups":
        return list_groups(project, args.first, args.last)
    if args.step == "apply-params":
        return apply_params(root, dict(args.values))
    if args.step == "publish":
        return publish(project, dict(args.values))
    if args.step == "checkout":
        return checkout(project, args.version)
    return decision(project, args.dataset_version)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ControlError, PipelineError) as error:
        print(f"{args.step}: error: {error}", file=sys.stderr)
        return ExitCode.USER_ERROR
    text = json.dumps(result, sort_keys=True)
    if args.xcom_file:
        write_text_atomic(args.xcom_file, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
