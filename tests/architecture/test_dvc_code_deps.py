"""dvc.yaml's code dependencies follow from the import graph: a stage depends on its
component package and on every fgclip package that package imports (backends, named by
string in a registry, included), so editing any code a stage runs reruns it, and editing
code it never runs does not. And Python rewriting bytecode never makes a stage stale."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fgclip.cli import COMPONENTS
from tests.architecture.import_graph import build_graph
from tests.conftest import REPO_ROOT, dvc_workspace, tool_env

CODE_ROOT = "components/"
TOP_LEVEL_MODULES = ("fgclip.errors",)


def unit_of(module: str) -> str:
    """The code unit a stage depends on: a data component (fgclip.data.<name>), another
    package (fgclip.<name>) or a top-level module (fgclip.errors)."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[1] == "data" and len(parts) > 2 else parts[:2])


def unit_path(unit: str) -> str:
    return CODE_ROOT + unit.replace(".", "/") + (".py" if unit in TOP_LEVEL_MODULES else "")


def code_closure(graph: Any, component_module: str) -> set[str]:
    """Paths of the units a component needs: its own, then every unit any module of an
    included unit imports, to a fixed point (whole units, so string-registered backends
    and their imports are in)."""
    units: set[str] = set()
    todo = [unit_of(component_module)]
    while todo:
        unit = todo.pop()
        if unit in units:
            continue
        units.add(unit)
        for module in graph.modules:
            if module == unit or module.startswith(unit + "."):
                todo += [unit_of(imported) for imported in graph.find_modules_directly_imported_by(module)]
    return {unit_path(unit) for unit in units}


def stage_component(cmd: str) -> str:
    argv = shlex.split(cmd)
    assert argv[0] == "fgclip" and argv[1] in COMPONENTS, f"not an fgclip component command: {cmd}"
    return COMPONENTS[argv[1]]


def dependency_problems(stages: dict[str, Any], graph: Any) -> dict[str, dict[str, list[str]]]:
    """Per stage: code it runs that dvc.yaml leaves out, and code dvc.yaml names it never runs."""
    problems = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        wanted = code_closure(graph, stage_component(body["cmd"]))
        declared = {dep for dep in body.get("deps", []) if dep.startswith(CODE_ROOT)}
        if wanted != declared:
            problems[name] = {"missing": sorted(wanted - declared), "not run": sorted(declared - wanted)}
    return problems


@pytest.fixture(scope="module")
def stages() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def graph() -> Any:
    return build_graph()


def test_every_stage_depends_on_exactly_the_code_it_runs(stages, graph) -> None:
    assert dependency_problems(stages, graph) == {}


def test_a_missing_or_extra_code_dependency_is_caught(stages, graph) -> None:
    wrong = copy.deepcopy(stages)
    deps = wrong["recaption"]["deps"]
    deps.remove("components/fgclip/demo")  # the demo caption teacher writes the captions
    deps.append("components/fgclip/train")  # recaption never runs the trainer
    assert dependency_problems(wrong, graph) == {
        "recaption": {"missing": ["components/fgclip/demo"], "not run": ["components/fgclip/train"]}
    }


@pytest.mark.slow
def test_rewritten_bytecode_leaves_dvc_status_up_to_date(tmp_path: Path) -> None:
    params = {
        # the dataset stage reads these sections (DVC refuses a stage whose params are missing)
        "dataset": {"source": "demo"},
        "ingest": {"resolution": 224},
        "demo": {"train_shards": 1, "heldout_shards": 1, "samples_per_shard": 2},
        "tracking": {"enabled": False},
    }
    root = dvc_workspace(tmp_path / "project", params)
    env = {**tool_env(), "PYTHONPATH": str(root / "components")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # this test is about bytecode being written

    def run(*argv: str) -> str:
        result = subprocess.run(list(argv), cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    run("dvc", "repro", "dataset")
    assert "up to date" in run("dvc", "status", "dataset")
    # every module imported: Python writes __pycache__/*.pyc into the code folders
    run(
        sys.executable,
        "-c",
        "import compileall, importlib, pkgutil, fgclip\n"
        "for m in pkgutil.walk_packages(fgclip.__path__, 'fgclip.'): importlib.import_module(m.name)\n"
        "compileall.compile_dir(fgclip.__path__[0], quiet=1, force=True)",
    )
    assert any((root / "components" / "fgclip" / "demo").rglob("*.pyc"))
    assert "up to date" in run("dvc", "status", "dataset")
