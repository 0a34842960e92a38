"""A light lint of images/*/Dockerfile: pinned base images, a non-root user, no
secret-looking build settings, installs from the wheelhouse only (no package index reached
from a build), the `fgclip` entrypoint, and agreement with the `kubernetes` config and the
project's pins. The CPU and GPU images are also built for real by `make images` (and the
CPU one by the cluster rehearsal, rehearsal/); the NPU one is checked only here."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from fgclip.config import Params

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
FAMILIES = ("cpu", "gpu", "npu")
SETTINGS = Params().kubernetes
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerfiles() -> list[Path]:
    return sorted(IMAGES.glob("*/Dockerfile"))


def test_one_dockerfile_per_family():
    assert {path.parent.name for path in dockerfiles()} >= set(FAMILIES)


def base_images(steps: list[tuple[str, str]]) -> list[str]:
    """The FROM images, a `${ARG}` base resolved to the default of an ARG declared before it."""
    defaults: dict[str, str] = {}
    bases = []
    for word, args in steps:
        if word == "ARG" and not bases:
            name, _, default = args.partition("=")
            defaults[name.strip()] = default.strip()
        elif word == "FROM":
            base = next(token for token in args.split() if not token.startswith("--"))
            bases.append(re.sub(r"\$\{?(\w+)\}?", lambda match: defaults.get(match.group(1)) or match.group(0), base))
    return bases


def lint(path: Path) -> list[str]:
    """What is wrong with a Dockerfile, as readable problems (none: fine)."""
    steps = instructions(path)
    problems = []
    bases = base_images(steps)
    if not bases:
        problems.append("no FROM")
    for base in bases:
        tag = base.rpartition("/")[2].partition(":")[2]
        if not tag or tag == "latest" or "$" in base:
            problems.append(f"base image {base!r} is not pinned by a tag")
    users = [args for word, args in steps if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image must end as a non-root user")
    for word, args in steps:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]:
                if SECRET_NAME.search(name):
                    problems.append(f"{word} {name}: credentials are never baked into an image")
    return problems


def index_reaching_installs(steps: list[tuple[str, str]]) -> list[str]:
    """`pip install`s of RUN steps that may reach a package index (no --no-index)."""
    installs = [
        install.strip() for word, args in steps if word == "RUN" for install in re.findall(r"pip install [^&;]*", args)
    ]
    return [install for install in installs if "--no-index" not in install]


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: path.parent.name)
def test_dockerfile_lint(path):
    assert lint(path) == []


def test_lint_finds_the_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "ARG BASE=python:latest\nFROM ${BASE}\nFROM --platform=linux/arm64 ubuntu AS build\n"
        "ENV AWS_SECRET_ACCESS_KEY=abc \\\n    OTHER=1\nARG HF_TOKEN\nUSER root\n"
    )
    problems = lint(bad)
    assert len(problems) == 5, problems
    assert any("'python:latest'" in p for p in problems) and any("'ubuntu'" in p for p in problems)
    assert any("non-root" in p for p in problems)
    assert any("AWS_SECRET_ACCESS_KEY" in p for p in problems) and any("HF_TOKEN" in p for p in problems)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_images_run_every_component_as_the_configured_user(family):
    steps = instructions(IMAGES / family / "Dockerfile")
    (entrypoint,) = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert entrypoint == ["fgclip"]
    workdirs = [args for word, args in steps if word == "WORKDIR"]
    assert workdirs[-1] == SETTINGS.workspace_path
    assert [args for word, args in steps if word == "USER"][-1] == f"{SETTINGS.run_as_user}:{SETTINGS.run_as_user}"
    copies = " ".join(args for word, args in steps if word == "COPY")
    assert "requirements.lock" in copies and "pyproject.toml" in copies and "components" in copies
    torch_pin = next(
        dep
        for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if dep.startswith("torch==")
    )
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in [f"{w} {a}" for w, a in steps]
    assert SETTINGS.images[family].split(":")[0].endswith(f"fgclip-{family}")


def test_a_base_from_a_build_argument_needs_a_pinned_default(tmp_path):
    good = tmp_path / "Dockerfile"
    good.write_text("ARG BASE_IMAGE=python:3.11.14-slim-bookworm\nFROM ${BASE_IMAGE}\nUSER 1000:1000\n")
    assert lint(good) == []
    good.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 1000:1000\n")
    assert lint(good) == ["base image '${BASE_IMAGE}' is not pinned by a tag"]


def test_installs_that_may_reach_an_index_are_found():
    steps = [("RUN", "pip install --no-index --find-links /wheels torch && pip install boto3"), ("RUN", "echo pip")]
    assert index_reaching_installs(steps) == ["pip install boto3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_images_install_from_their_wheelhouse(family):
    steps = instructions(IMAGES / family / "Dockerfile")
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert index_reaching_installs(steps) == []
    assert installs and all(
        f"--mount=type=bind,source=build/wheelhouse/{family},target=/wheels" in args for args in installs
    )
    # the same lock filter as images/wheelhouse.sh, shipped into the build
    assert any(word == "COPY" and "images/lock-filter.txt" in args for word, args in steps)
    assert f"{family})" in (IMAGES / "wheelhouse.sh").read_text()


def test_npu_image_has_torch_npu_on_cann():
    steps = instructions(IMAGES / "npu" / "Dockerfile")
    assert any(word == "FROM" and "cann" in args for word, args in steps)
    assert any(word == "RUN" and "torch-npu==" in args for word, args in steps)
    assert "Not built by this project's CI" in (IMAGES / "npu" / "Dockerfile").read_text()  # the reason, written down


def test_dockerignore_sends_only_what_installs_the_project():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {
        "pyproject.toml",
        "requirements.lock",
        "requirements-img2dataset.lock",
        "README.md",
        "components",
        "images/lock-filter.txt",
        "build/wheelhouse",
    }
