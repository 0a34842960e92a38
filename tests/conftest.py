"""Shared test fixtures: the repository root and a way to run the `fgclip` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Fixtures shared across test folders (tiny CLIP models built from config).
pytest_plugins = ["tests.support.tiny_clip"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# DeepSpeed compiles its CPU ops once; every test reuses the same build folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin folder first on PATH (dvc
    stages call `fgclip` and `python` from PATH) and the package importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO_ROOT / 'components'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_cli(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fgclip.cli", *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fgclip {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def dvc_workspace(root: Path, params: dict) -> Path:
    """A fresh DVC project in `root` running this checkout's components: the package,
    dvc.yaml and .dvcignore, the given params, git and dvc initialised (analytics off)."""
    import shutil

    import yaml

    shutil.copytree(
        REPO_ROOT / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # tool_env puts this interpreter's bin folder (its dvc) first on PATH
    shutil.copy(REPO_ROOT / ".gitignore", root / ".gitignore")
    # committed: DAG runs start from the project's HEAD (git worktrees of it)
    identity = ["-c", "user.name=fgclip tests", "-c", "user.email=tests@fgclip.invalid"]
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", *identity, "commit", "-q", "-m", "workspace"],
    ):
        result = subprocess.run(command, cwd=root, env=tool_env(), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return root
