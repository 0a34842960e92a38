"""Fixtures of the cluster rehearsal (run it with `make rehearse`).

It needs podman (images/engine/install-host.sh) and the CPU image (`make image-cpu`): both
missing is a failure with the command that fixes it, never a skip. Each test adds its
figures to build/rehearsal/report.json, printed at the end of the session.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rehearsal.dag_runner import result_of
from rehearsal.podman import BASE_IMAGE, REPO, LocalNamespace, Podman
from rehearsal.world import DVC_BUCKET, make_workspace, namespace_objects, rehearsal_params

REPORT = REPO / "build" / "rehearsal" / "report.json"
_figures: dict[str, Any] = {}


@pytest.fixture(scope="session")
def report() -> dict[str, Any]:
    """Figures of the rehearsal (sizes, times, losses, faults), written at the end of the session."""
    return _figures


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _figures:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(_figures, indent=2, sort_keys=True, default=str) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _figures:
        terminalreporter.write_sep("=", "cluster rehearsal figures")
        terminalreporter.write_line(json.dumps(_figures, indent=2, sort_keys=True, default=str))
        terminalreporter.write_line(f"(also in {REPORT.relative_to(REPO)})")


@pytest.fixture(scope="session")
def podman() -> Podman:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run images/engine/install-host.sh (or `make rehearse`)")
    return Podman()


@pytest.fixture(scope="session")
def params() -> dict[str, Any]:
    return rehearsal_params()


@pytest.fixture(scope="session")
def cpu_image(podman: Podman, params: dict[str, Any], report: dict[str, Any]) -> str:
    image = params["kubernetes"]["images"]["cpu"]
    for needed in (image, BASE_IMAGE):
        if not podman.exists("image", needed):
            pytest.fail(f"image {needed} is missing: build it with `make image-cpu`")
    built = REPO / "build" / "images" / "cpu.json"
    if built.is_file():
        report["image_cpu"] = json.loads(built.read_text())
    return image


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearsal")


@pytest.fixture(scope="session")
def servers(scratch: Path) -> Iterator[tuple[Any, str]]:
    """A real S3 server (rclone) and a real MLflow server (artifacts on that S3), on loopback;
    the data pods reach them over the host network."""
    from tests.support.servers import mlflow_server, s3_server

    with s3_server(scratch / "s3") as s3:
        s3.bucket(DVC_BUCKET)
        s3.bucket("fgclip-mlflow")
        with mlflow_server(scratch / "mlflow", "s3://fgclip-mlflow/artifacts", s3.env()) as tracking:
            yield s3, tracking


@pytest.fixture(scope="session")
def namespace(
    scratch: Path, servers: tuple[Any, str], params: dict[str, Any], podman: Podman, cpu_image: str
) -> Iterator[LocalNamespace]:
    """The namespace the data pods run in: ConfigMaps, the S3 Secret, host network."""
    from tests.support.servers import S3_KEY, S3_SECRET

    s3, tracking = servers
    configmaps, secrets = namespace_objects(
        s3_endpoint=s3.endpoint,
        s3_keys=(S3_KEY, S3_SECRET),
        tracking_uri=tracking,
        params_yaml=yaml.safe_dump(params, sort_keys=False),
    )
    workdir = scratch / "namespace"
    workdir.mkdir()
    space = LocalNamespace(
        workdir, configmaps=configmaps, secrets=secrets, network="host", image_stand_ins={"alpine:3.24.2": BASE_IMAGE}
    )
    space.apply_secrets()
    space.reset_configmap_volumes()
    yield space
    space.remove_secrets()
    space.reset_configmap_volumes()


@pytest.fixture(scope="session")
def workspace(scratch: Path, params: dict[str, Any]) -> Path:
    """The project checkout the workspace volume starts from (and the DAGs are parsed from)."""
    return make_workspace(scratch / "checkout", params)


@pytest.fixture(scope="session")
def timer() -> Any:
    class Timer:
        def __init__(self) -> None:
            self.started = time.monotonic()

        def seconds(self) -> float:
            return round(time.monotonic() - self.started, 1)

    return Timer


# ------------------------------------------------------------------ the data build, once


class DataBuild:
    """What the data build rehearsal left: the DAG run's summary, the workspace volume's files
    afterwards, the `dvc repro` reference built from the same params, and timings.

    The DAG run works in its own run workspace on the volume (a git worktree made by the
    `prepare` pod): `run_workdir` is that folder as pods see it, `run_files` its exported copy."""

    def __init__(
        self,
        summary: dict[str, Any],
        volume_files: Path,
        reference: Path,
        claim: str,
        seconds: float,
        reference_seconds: float,
        workspace_path: str,
    ) -> None:
        self.summary, self.volume_files, self.reference, self.claim = summary, volume_files, reference, claim
        self.seconds, self.reference_seconds = seconds, reference_seconds
        self.prepared: dict[str, Any] = result_of(summary, "prepare") or {}
        self.run_workdir = str(self.prepared.get("run_dir", ""))
        relative = Path(self.run_workdir).relative_to(workspace_path) if self.run_workdir else None
        self.run_files = volume_files / relative if relative else volume_files / "no-run-workspace"


def airflow_env(scratch: Path, workspace: Path, extra: dict[str, str]) -> dict[str, str]:
    """Environment of a DAG run on the kubernetes runtime: its own Airflow home, the DAGs of
    this checkout parsed from `workspace`, a kubeconfig that names no reachable cluster (the
    operators build pods from it; the rehearsal runs them)."""
    from fgclip.orchestration.kubernetes import _OFFLINE_KUBECONFIG
    from tests.conftest import tool_env

    home = scratch / "airflow"
    home.mkdir(exist_ok=True)
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(_OFFLINE_KUBECONFIG)
    env = {
        **tool_env(),
        **extra,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "FGCLIP_WORKSPACE": str(workspace),
        "FGCLIP_RUNTIME": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
    }
    env["PYTHONPATH"] = f"{REPO}:{env['PYTHONPATH']}"
    return env


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 1800, log: Path | None = None) -> str:
    """Run a command; its output goes to `log` (if given); a failure shows the output's end."""
    import subprocess

    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(result.stdout + "\n----- stderr -----\n" + result.stderr)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    return result.stdout


@pytest.fixture(scope="session")
def data_build(
    namespace: LocalNamespace,
    workspace: Path,
    scratch: Path,
    params: dict[str, Any],
    servers: tuple[Any, str],
    timer: Any,
) -> DataBuild:
    """The data build DAG on the kubernetes runtime, its pods run by podman on a volume made
    from the checkout; and `dvc repro` of the same stages on this machine as the reference."""
    import sys

    from tests.conftest import tool_env

    s3, tracking = servers
    claim = params["kubernetes"]["workspace_claim"]
    namespace.create_volume(claim, workspace)

    reference = scratch / "reference"
    shutil.copytree(workspace, reference, symlinks=True)
    clock = timer()
    run(["dvc", "repro", params["orchestration"]["data_last_stage"]], cwd=reference, env=tool_env())
    reference_seconds = clock.seconds()

    spec = {
        "workdir": str(namespace.workdir),
        "configmaps": namespace.configmaps,
        "network": namespace.network,
        "image_stand_ins": namespace.image_stand_ins,
    }
    namespace_file = scratch / "namespace.json"
    namespace_file.write_text(json.dumps(spec))
    env = airflow_env(scratch, workspace, {**s3.env(), "MLFLOW_TRACKING_URI": tracking})
    airflow = str(Path(sys.executable).parent / "airflow")
    run([airflow, "db", "migrate"], cwd=workspace, env=env)
    # the stage tasks' pools, imported as on a cluster once the chart is installed (k8s/README.md)
    pools = scratch / "pools.json"
    pools.write_text(run([sys.executable, "-m", "fgclip.orchestration.pools"], cwd=workspace, env=env))
    run([airflow, "pools", "import", str(pools)], cwd=workspace, env=env)
    clock = timer()
    out = run(
        [sys.executable, "-m", "rehearsal.dag_runner", str(namespace_file), "fgclip_data_build"],
        cwd=REPO,
        env=env,
        timeout=3600,
        log=scratch / "data_build.log",
    )
    seconds = clock.seconds()
    summary = json.loads(out.strip().splitlines()[-1])
    summary["log"] = str(scratch / "data_build.log")
    files = namespace.export_volume(claim, scratch / "volume-after-data-build")
    workspace_path = params["kubernetes"]["workspace_path"]
    return DataBuild(summary, files, reference, claim, seconds, reference_seconds, workspace_path)
