"""Dataset versions with DVC: publish what the data build made, check a version out again.

Publishing records the data stages' outputs in dvc.lock and the DVC cache (`dvc commit`,
exactly what `dvc repro` would have recorded), pushes them to the configured remote (a
folder on the embedded default, s3://... on a cluster) and writes a small version record
next to them: `<remote>/versions/<version>.json`, holding the dvc.lock entries of the data
stages. The version id is a digest of the DVC hashes of the data outputs (every data
stage's but the QC gate's reports), so the same shards always get the same id. Any machine
with the remote can check a version out again (`checkout_version`: the record's lock entries + `dvc pull`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fgclip.core.storage import is_s3, read_text, s3_settings, write_text_atomic
from fgclip.orchestration.pipeline import PARAMS_FILE, Project, StageSpec
from fgclip.orchestration.process import CommandResult, StageFailed, command_env, resolve_program, run_command
from fgclip.orchestration.runs import read_marker, record_state, restore_files, write_params

log = logging.getLogger(__name__)

LOCK_FILE = "dvc.lock"
VERSION_PREFIX = "ds-"
VERSION_DIGITS = 12
VERSIONS_FOLDER = "versions"
RECORD_SCHEMA = "fgclip-dataset-version/1"


class DatasetError(RuntimeError):
    """A dataset version cannot be published or checked out; the message says why."""


def dvc(project: Project, *args: str) -> CommandResult:
    """Run one `dvc` command in the project, its output in the task log."""
    return run_command(
        ["dvc", *args], cwd=project.root, env=command_env(project.settings), kill_grace_s=project.settings.kill_grace_s
    )


def _read_lock(project: Project) -> dict[str, Any]:
    path = project.root / LOCK_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def remote_url(project: Project) -> str | None:
    """The DVC remote's URL: $FGCLIP_DVC_REMOTE_URL, else orchestration.dvc_remote_url
    (a relative folder is taken from the project root); None: as .dvc/config has it."""
    url = os.environ.get("FGCLIP_DVC_REMOTE_URL") or project.settings.dvc_remote_url
    if url and "://" not in url and not Path(url).is_absolute():
        url = str((project.home_root / url).resolve())  # one remote for every run workspace
    return url


def ensure_remote(project: Project) -> str:
    """Point the remote named orchestration.dvc_remote at the configured URL (in the
    project's .dvc/config.local: machine-specific, never committed); return the URL."""
    name = project.settings.dvc_remote
    url = remote_url(project)
    if url is None:
        return _configured_remote(project, name)
    dvc(project, "remote", "add", "--local", "--force", name, url)
    if is_s3(url):
        endpoint = s3_settings(project.settings.s3).endpoint_url
        if endpoint:
            dvc(project, "remote", "modify", "--local", name, "endpointurl", endpoint)
    return url


def _configured_remote(project: Project, name: str) -> str:
    result = subprocess.run(
        resolve_program(["dvc", "remote", "list"]),
        cwd=project.root,
        capture_output=True,
        text=True,
        env=command_env(project.settings),
        check=False,
    )
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            return parts[1]
    raise DatasetError(
        f"no DVC remote {name!r} is configured in {project.root} and orchestration.dvc_remote_url "
        f"is null: set FGCLIP_DVC_REMOTE_URL (e.g. s3://bucket/dvc) or run `dvc remote add {name} URL`"
    )


def _dataset_paths(project: Project) -> list[str]:
    """The dataset a version names: the cached outputs of the data stages before the last
    one (that one is the QC gate; its outputs are reports about the data, not data)."""
    last = project.settings.data_last_stage
    return [out for stage in project.data_stages() if stage.name != last for out in stage.cached_outs]


def _lock_outs(lock: dict[str, Any], stages: list[StageSpec]) -> dict[str, str]:
    outs: dict[str, str] = {}
    entries = lock.get("stages") or {}
    for stage in stages:
        for out in (entries.get(stage.name) or {}).get("outs") or []:
            if out.get("md5"):
                outs[os.path.normpath(out["path"])] = out["md5"]
    return outs


def version_id(outs: dict[str, str]) -> str:
    """ds-<digest of the sorted (path, DVC md5) pairs>: the same data, the same id."""
    payload = json.dumps(sorted(outs.items()), separators=(",", ":")).encode()
    return VERSION_PREFIX + hashlib.sha256(payload).hexdigest()[:VERSION_DIGITS]


def current_version(project: Project) -> tuple[str, dict[str, str]] | None:
    """(version, {path: md5}) the project's dvc.lock records for the dataset, or None."""
    paths = [os.path.normpath(p) for p in _dataset_paths(project)]
    outs = _lock_outs(_read_lock(project), project.data_stages())
    if not all(path in outs for path in paths):
        return None
    chosen = {path: outs[path] for path in paths}
    return version_id(chosen), chosen


def record_url(remote: str, version: str) -> str:
    return f"{remote.rstrip('/')}/{VERSIONS_FOLDER}/{version}.json"


def publish(project: Project, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit, push and record the data stages' outputs; returns the version record
    (`extra`: more fields for it, e.g. the DAG run's MLflow run)."""
    names = [stage.name for stage in project.data_stages()]
    dvc(project, "commit", "--force", *names)
    current = current_version(project)
    if current is None:
        raise DatasetError(f"dvc commit left no hashes for the dataset outputs {_dataset_paths(project)} in dvc.lock")
    version, outs = current
    state: dict[str, str] = {}
    if read_marker(project.root) is not None:  # a run workspace: the version is a git state too
        tag = project.settings.dataset_tag.format(version=version)
        reports = [out for stage in project.data_stages() for out in stage.git_outs]
        state = record_state(project.root, project.settings, f"dataset {version}", tag, reports)
    remote = ensure_remote(project)
    dvc(project, "push", "--remote", project.settings.dvc_remote, *names)
    lock = _read_lock(project)
    record = {
        "schema": RECORD_SCHEMA,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "outs": outs,
        "remote": remote,
        **state,
        **(extra or {}),
        "lock": {"schema": lock.get("schema"), "stages": {name: lock["stages"][name] for name in names}},
    }
    where = record_url(remote, version)
    write_text_atomic(where, json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("published dataset %s (%d outputs) to %s; record %s", version, len(outs), remote, where)
    return {**record, "record": where}


def read_record(project: Project, version: str) -> dict[str, Any]:
    remote = ensure_remote(project)
    where = record_url(remote, version)
    try:
        return dict(json.loads(read_text(where)))
    except FileNotFoundError as error:
        raise DatasetError(
            f"dataset version {version} was never published to {remote} (no {where}); "
            f"run the data build DAG, or pick a version listed under {remote}/{VERSIONS_FOLDER}/"
        ) from error


def _recorded_params(stages: dict[str, Any]) -> dict[str, Any]:
    """The params.yaml values the data stages ran with (dvc.lock keeps them per stage)."""
    values: dict[str, Any] = {}
    for entry in stages.values():
        values.update((entry.get("params") or {}).get(PARAMS_FILE) or {})
    return values


def checkout_version(project: Project, version: str) -> dict[str, Any]:
    """Make the (run) workspace hold dataset `version`: its data stages' dvc.lock entries and
    the params they ran with (so `dvc status` holds for them and the state a training records
    is whole), their outputs linked from the shared DVC cache, pulled from the remote for
    whatever the cache lacks. A workspace that records the version already is only checked
    for files that differ (training never reads a half-built dataset)."""
    names = [stage.name for stage in project.data_stages()]
    current = current_version(project)
    if current is not None and current[0] == version:
        dvc(project, "checkout", "--force", *names)
        return {"version": version, "outs": current[1], "pulled": False}
    record = read_record(project, version)
    stages = record["lock"]["stages"]
    write_params(project.root, (project.root / PARAMS_FILE).read_text(), _recorded_params(stages))
    lock = _read_lock(project) or {"schema": record["lock"].get("schema") or "2.0"}
    lock.setdefault("stages", {}).update(stages)
    write_text_atomic(project.root / LOCK_FILE, yaml.safe_dump(lock, sort_keys=False))
    if record.get("commit") and read_marker(project.root) is not None:
        # the reports and the QC gate DVC leaves to git come from the version's commit
        restore_files(project.root, record["commit"], [out for s in project.data_stages() for out in s.git_outs])
    pulled = False
    try:
        dvc(project, "checkout", "--force", *stages)
    except StageFailed:  # the shared cache lacks some of it: fetch from the remote
        try:
            dvc(project, "pull", "--force", "--remote", project.settings.dvc_remote, *stages)
        except StageFailed as error:
            raise DatasetError(f"could not pull dataset {version} from {record['remote']}: {error}") from error
        pulled = True
    current = current_version(project)
    if current is None or current[0] != version:
        raise DatasetError(
            f"after checking out {version} the workspace records {current and current[0]}: the data "
            f"stages in dvc.yaml write other outputs than when {version} was published"
        )
    return {"version": version, "outs": current[1], "pulled": pulled, "commit": record.get("commit")}
