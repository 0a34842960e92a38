"""The package stays easy to read: modules small enough to read at once, every data
component in its own package with the same parts, and every backend name in the config
registered (and the reverse)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import EXTRACTORS
from fgclip.data.detect.interface import DETECTORS
from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.negatives.interface import GENERATORS
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.data.recaption.interface import BACKENDS
from tests.conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "components" / "fgclip"
MAX_LINES = 400
#: A module may be longer when its docstring says why, in a paragraph starting so.
LONG_MODULE_REASON = "Why this module is long:"
#: The parts every data component with pluggable backends has (CONTRIBUTING.md, "Add a component").
COMPONENT_PARTS = ("__init__.py", "config.py", "interface.py", "stage.py", "cli.py", "backends")


def test_modules_are_short_or_say_why() -> None:
    long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        docstring = ast.get_docstring(ast.parse(source)) or ""
        if lines > MAX_LINES and LONG_MODULE_REASON not in docstring:
            long.append(f"{path.relative_to(PACKAGE_DIR)} ({lines} lines)")
    assert not long, f"split these modules, or explain in the docstring ('{LONG_MODULE_REASON} ...'): {long}"


@pytest.mark.parametrize("component", ["recaption", "detect", "negatives"])
def test_each_data_component_has_the_same_parts(component: str) -> None:
    folder = PACKAGE_DIR / "data" / component
    missing = [part for part in COMPONENT_PARTS if not (folder / part).exists()]
    assert not missing, f"fgclip.data.{component} lacks {missing}"


@pytest.mark.parametrize(
    ("registry", "config", "field"),
    [
        (BACKENDS, RecaptionConfig, "backend"),
        (DETECTORS, DetectConfig, "backend"),
        (EXTRACTORS, DetectConfig, "extractor"),
        (GENERATORS, NegativesConfig, "backend"),
    ],
)
def test_every_backend_the_config_offers_is_registered_and_loads(registry, config, field) -> None:
    offered = set(typing.get_args(config.model_fields[field].annotation))
    assert offered == set(registry), (
        f"{config.__name__}.{field} offers {sorted(offered)}, the registry has {sorted(registry)}"
    )
    for name in registry:
        module, _, attribute = registry[name].partition(":")
        path = PACKAGE_DIR.parent / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"backend {name!r}: no module {module}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert any(isinstance(node, ast.FunctionDef) and node.name == attribute for node in tree.body), (
            f"backend {name!r}: {module} has no function {attribute}"
        )


def test_tests_mirror_the_package() -> None:
    """A test folder for every package (so a component's tests are in one place)."""
    packages = {path.parent.relative_to(PACKAGE_DIR) for path in PACKAGE_DIR.rglob("__init__.py")}
    wanted = {Path(*p.parts[:2]) if p.parts[:1] == ("data",) else Path(*p.parts[:1]) for p in packages if p.parts}
    missing = sorted(str(p) for p in wanted if not (REPO_ROOT / "tests" / p).is_dir())
    assert not missing, f"no tests/ folder for fgclip packages {missing}"
