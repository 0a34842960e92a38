"""git, as the run workspaces and the DAG files use it: the committed state of the project."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from fgclip.config import Params, load_params

PARAMS_FILE = "params.yaml"


class RunError(RuntimeError):
    """A run workspace cannot be made or recorded; the message says why (not retried)."""


def git(root: str | Path, *args: str, identity: str | None = None) -> str:
    """Run one git command in `root`; its stdout. `identity` ("Name <email>") authors commits."""
    env = dict(os.environ)
    if identity:
        name, _, email = identity.partition("<")
        env.update(
            GIT_AUTHOR_NAME=name.strip(),
            GIT_AUTHOR_EMAIL=email.rstrip(">").strip(),
            GIT_COMMITTER_NAME=name.strip(),
            GIT_COMMITTER_EMAIL=email.rstrip(">").strip(),
        )
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RunError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def is_git_checkout(root: str | Path) -> bool:
    try:
        git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    except (RunError, FileNotFoundError):
        return False
    return True


def committed_text(root: str | Path, path: str, revision: str = "HEAD") -> str | None:
    """A file as `revision` has it (None when it is not there, or `root` is no git checkout)."""
    try:
        return git(root, "show", f"{revision}:{path}")
    except (RunError, FileNotFoundError):
        return None


def committed_params(root: str | Path) -> Params:
    """params.yaml as committed (the working copy when the project is no git checkout)."""
    text = committed_text(root, PARAMS_FILE)
    if text is None:
        return load_params(Path(root) / PARAMS_FILE)
    return Params.model_validate(yaml.safe_load(text) or {})
