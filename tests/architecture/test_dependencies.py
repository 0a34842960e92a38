"""Dependencies point one way: the layer contracts of pyproject.toml (import-linter) hold,
no module imports itself in a circle, and imports inside functions are kept for heavy
optional dependencies. Each rule is also shown to catch a deliberate violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.architecture.import_graph import build_graph, function_level_imports, module_cycles
from tests.conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "components" / "fgclip"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: Third-party packages a function may import lazily, and why: each is heavy, optional for
#: some users, or both, and only the code path that needs it should pay for it.
LAZY_ALLOWED = {
    "torch": "devices and backends: the DAG files and the data CLI must not import torch",
    "torch_npu": "Ascend NPUs only",
    "torchvision": "optional (the pinned CPU torch has none); probed where used",
    "transformers": "model backends and tokenizer loading only, not in data loader workers",
    "tokenizers": "demo tokenizer training only",
    "deepspeed": "training only; compiles ops on first use",
    "spacy": "the spacy extractor only",
    "ultralytics": "the yolo_world detector only (not in the CPU lock)",
    "boto3": "s3:// paths only",
    "botocore": "s3:// paths only",
    "mlflow": "tracking only when enabled; DAG parsing must stay light",
    "airflow": "the kubernetes operator's cluster calls only",
    "kubernetes_asyncio": "the TrainJob trigger's API calls only (it runs in Airflow's triggerer)",
    "skimage": "the demo world's photo backgrounds only",
    "safetensors": "checkpoint conversion only",
    "webdataset": "the training stream only",
    "pyarrow": "parquet sidecars only",
    "img2dataset": "ingest's runner script: it runs in img2dataset's own environment, never in ours",
}
#: fgclip modules a function may import lazily, and why.
LAZY_ALLOWED_FGCLIP = {
    "fgclip.model.modeling": "pulls in transformers: data loader workers import the tokenizer module without it",
    "fgclip.orchestration.tasks.pods": "pulls in the cncf provider and Kubernetes clients (~2 s): the local "
    "runtime's DAG parse, which every task process repeats, never needs them",
}


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package to break on purpose; returns the folder holding `fgclip`."""
    shutil.copytree(PACKAGE_DIR, tmp_path / "fgclip", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def add_line(package_parent: Path, module: str, line: str) -> None:
    path = package_parent / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_the_layer_contracts_hold() -> None:
    result = lint_imports(REPO_ROOT / "components")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the core reaching up into a component, from inside a function (a lazy import counts)
        (
            "fgclip.core.boxes",
            "def _sneaky():\n    import fgclip.data.qc.cli",
            "fgclip.core.boxes -> fgclip.data.qc.cli",
        ),
        # an interface importing its own backend: the registry must name it by string
        (
            "fgclip.data.recaption.interface",
            "from fgclip.data.recaption.backends import demo",
            "fgclip.data.recaption.interface -> fgclip.data.recaption.backends.demo",
        ),
        # one data component importing another
        (
            "fgclip.data.detect.stage",
            "import fgclip.data.recaption.stage",
            "fgclip.data.detect.stage -> fgclip.data.recaption.stage",
        ),
    ],
)
def test_a_wrong_import_breaks_the_contracts(package_copy: Path, module: str, line: str, broken: str) -> None:
    add_line(package_copy, module, line)
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout[-4000:]


def test_no_module_cycles() -> None:
    assert module_cycles(build_graph()) == []


def test_a_cycle_through_a_function_level_import_is_found(package_copy: Path, monkeypatch) -> None:
    add_line(package_copy, "fgclip.core.shards", "def _back():\n    from fgclip.core.stage import ShardStage")
    monkeypatch.syspath_prepend(str(package_copy))
    for name in [name for name in sys.modules if name == "fgclip" or name.startswith("fgclip.")]:
        monkeypatch.delitem(sys.modules, name)
    cycles = module_cycles(build_graph())
    assert any({"fgclip.core.shards", "fgclip.core.stage"} <= set(cycle) for cycle in cycles), cycles


def test_function_level_imports_are_only_for_heavy_optional_dependencies() -> None:
    wrong = []
    for file, line, module in function_level_imports(PACKAGE_DIR):
        top = module.split(".")[0]
        allowed = module in LAZY_ALLOWED_FGCLIP if top == "fgclip" else top in LAZY_ALLOWED
        if not allowed:
            wrong.append(f"{file}:{line} imports {module}")
    assert not wrong, "import these at the top of the module (or add a reason to LAZY_ALLOWED): " + "; ".join(wrong)
