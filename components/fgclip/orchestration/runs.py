"""Run workspaces: every DAG run works in a DVC workspace of its own, never in the checkout.

A run workspace is a git worktree of the project (`<project>/<orchestration.runs_dir>/<dag>/<run>`)
at the commit the run started from, holding that commit's dvc.yaml and code and the run's
own params.yaml: the committed values plus the trigger form's. Its DVC cache is the
project's (one content-addressed store; outputs are linked into each workspace, never
copied), so two data builds and two trainings run side by side without touching each other
or the checkout, and whatever a run records (`dvc commit`, a git commit and a tag) is a DVC
state anyone can check out again: `git checkout <tag> && dvc checkout`.

A marker file in the run workspace names the project it belongs to (relative, so it holds on
any mount point), the DAG run and the commit it started from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML

from fgclip.config import Params
from fgclip.core.storage import write_text_atomic
from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.gitrepo import RunError, committed_text, git, is_git_checkout
from fgclip.orchestration.process import command_env, run_command

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
MARKER_FILE = ".fgclip-run.json"
#: DVC links outputs from the shared cache (hardlinks; symlinks across file systems); never
#: `copy` (a second copy of every file on the volume), nor `reflink` first: DVC 3.67 falls back
#: to a copy when reflinks are not supported, instead of trying the next type.
#: would put a second copy of every file on the volume.
CACHE_TYPES = "hardlink,symlink"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_key(dag_id: str, run_id: str) -> str:
    """`<dag>/<run>` with what a path or a git ref cannot hold replaced: the run's folder."""
    return f"{_UNSAFE.sub('_', dag_id)}/{_UNSAFE.sub('_', run_id).strip('._') or 'run'}"


def run_dir(home: str | Path, settings: OrchestrationConfig, dag_id: str, run_id: str) -> Path:
    return Path(home) / settings.runs_dir / run_key(dag_id, run_id)


@contextmanager
def repository_lock(home: str | Path) -> Iterator[None]:
    """One git writer at a time across runs (worktrees, commits and tags share the refs)."""
    common = Path(git(home, "rev-parse", "--git-common-dir").strip())
    lock_file = (Path(home) / common if not common.is_absolute() else common) / "fgclip-runs.lock"
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_marker(root: str | Path) -> dict[str, Any] | None:
    marker = Path(root) / MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def update_marker(root: str | Path, **fields: Any) -> None:
    """Add fields to the run workspace's marker (e.g. the DAG run's MLflow run)."""
    marker = {**(read_marker(root) or {}), **fields}
    write_text_atomic(Path(root) / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def home_of(root: str | Path) -> Path:
    """The project a run workspace belongs to (the workspace itself when it is none)."""
    marker = read_marker(root)
    return (Path(root) / marker["home"]).resolve() if marker else Path(root).resolve()


def write_params(root: Path, base_text: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """root/params.yaml = `base_text` with the dotted-key `values` set (layout and comments
    kept); validated as a whole before it is written. Returns the values that differ."""
    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(base_text) or {}
    current = Params.model_validate(_plain(document)).model_dump(mode="json")
    changed: dict[str, Any] = {}
    for key, value in values.items():
        node: Any = current
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise RunError(f"params.yaml has no key {key!r}")
            node = node[part]
        if node != value:
            changed[key] = value
    for key, value in changed.items():
        node = document
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        Params.model_validate(_plain(document))
    except ValidationError as error:
        raise RunError(f"these values are not valid params: {error}") from error
    out = StringIO()
    yaml.dump(document, out)
    write_text_atomic(root / PARAMS_FILE, out.getvalue())
    return changed


def _plain(document: Any) -> Any:
    """ruamel's round-trip nodes as plain Python values (what pydantic validates)."""
    out = StringIO()
    YAML().dump(document, out)
    return yaml.safe_load(out.getvalue()) or {}


def shared_cache(home: Path, settings: OrchestrationConfig) -> Path:
    configured = settings.dvc_cache_dir
    return (home / configured).resolve() if configured else (home / ".dvc" / "cache").resolve()


def configure_dvc(root: Path, home: Path, settings: OrchestrationConfig) -> None:
    """The run workspace's DVC config (config.local: never committed): the shared cache,
    linked rather than copied."""
    env = command_env(settings)
    cache = shared_cache(home, settings)
    cache.mkdir(parents=True, exist_ok=True)
    for key, value in (("cache.dir", str(cache)), ("cache.type", CACHE_TYPES), ("core.analytics", "false")):
        run_command(["dvc", "config", "--local", key, value], cwd=root, env=env, logger=log)


def create_run_workspace(
    home: Path,
    settings: OrchestrationConfig,
    dag_id: str,
    run_id: str,
    values: Mapping[str, Any],
    *,
    base: str = "HEAD",
) -> dict[str, Any]:
    """The DAG run's workspace at `base` with its params; made once, reused by a retry."""
    home = home.resolve()
    if not is_git_checkout(home):
        raise RunError(
            f"{home} is not a git checkout with a commit: DAG runs work in git worktrees of the project "
            "(clone it, or `git init && git add -A && git commit`)"
        )
    root = run_dir(home, settings, dag_id, run_id)
    with repository_lock(home):
        marker = read_marker(root)
        if marker is None:
            commit = git(home, "rev-parse", f"{base}^{{commit}}").strip()
            root.parent.mkdir(parents=True, exist_ok=True)
            if root.exists():  # a half-made workspace of an interrupted try
                git(home, "worktree", "remove", "--force", str(root))
            git(home, "worktree", "add", "--detach", str(root), commit)
            marker = {
                "home": os.path.relpath(home, root),
                "dag_id": dag_id,
                "run_id": run_id,
                "base_commit": commit,
            }
    base_text = committed_text(home, PARAMS_FILE, marker["base_commit"])
    if base_text is None:
        raise RunError(f"commit {marker['base_commit']} has no {PARAMS_FILE}")
    changed = write_params(root, base_text, values)
    configure_dvc(root, home, settings)
    write_text_atomic(root / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    _exclude(root, MARKER_FILE)
    log.info("run workspace %s at %s; params changed: %s", root, marker["base_commit"][:12], changed or "none")
    return {"run_dir": str(root), "base_commit": marker["base_commit"], "changed": changed}


def _exclude(root: Path, name: str) -> None:
    """Keep a file out of `git status` of this worktree only."""
    info = Path(git(root, "rev-parse", "--git-path", "info/exclude").strip())
    info = info if info.is_absolute() else root / info
    info.parent.mkdir(parents=True, exist_ok=True)
    lines = info.read_text().splitlines() if info.is_file() else []
    if f"/{name}" not in lines:
        info.write_text("\n".join([*lines, f"/{name}"]) + "\n")


def record_state(
    root: Path, settings: OrchestrationConfig, message: str, tag: str, files: Sequence[str] = ()
) -> dict[str, str]:
    """Commit what DVC recorded in the run workspace (dvc.lock, params.yaml, the .gitignore
    entries of its outputs, and `files`: the outputs DVC leaves to git, such as reports and
    metrics) and tag it; the tag names a state anyone can check out. An existing tag on the
    same tree is kept (the same data, the same version)."""
    home = home_of(root)
    with repository_lock(home):
        changed = [
            line[3:]
            for line in git(root, "status", "--porcelain", "--untracked-files=all").splitlines()
            if line[3:] in (PARAMS_FILE, "dvc.lock") or line[3:].endswith(".gitignore")
        ]
        present = [name for name in files if (root / name).exists()]
        if changed or present:
            git(root, "add", "--", *changed)
            if present:
                git(root, "add", "--force", "--", *present)
            if git(root, "diff", "--cached", "--name-only").strip():
                git(root, "commit", "--quiet", "--no-verify", "-m", message, identity=settings.git_identity)
        commit = git(root, "rev-parse", "HEAD").strip()
        existing = git(home, "tag", "--list", tag).strip()
        if existing:
            tagged = git(home, "rev-parse", f"{tag}^{{tree}}").strip()
            if tagged != git(root, "rev-parse", "HEAD^{tree}").strip():
                log.warning("tag %s exists on another tree; keeping it (this state is commit %s)", tag, commit)
            return {"commit": commit, "tag": tag}
        git(home, "tag", "--annotate", "--message", message, tag, commit, identity=settings.git_identity)
    log.info("recorded %s as commit %s, tag %s", root, commit[:12], tag)
    return {"commit": commit, "tag": tag}


def restore_files(root: Path, commit: str, files: Sequence[str]) -> list[str]:
    """Take `files` (outputs DVC leaves to git) as `commit` has them; returns those it had."""
    present = [name for name in files if committed_text(root, name, commit) is not None]
    if present:
        git(root, "checkout", commit, "--", *present)
    return present
