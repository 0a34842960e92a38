"""The Airflow UI as a person uses it, and runs side by side, against a real `airflow standalone`
(scheduler, API server, DAG processor, triggerer) on loopback, driven by a real browser:
playwright with Debian's chromium (`.ci/install-browser.sh`; no browser download).

- The trigger form opens with its defaults in sections and submits as it opens.
- Two data builds of different datasets run at once, trainings start on their dataset
  versions, and a third data build runs beside a training: each run finishes with its own
  outputs in its own workspace, the checkout's params.yaml is untouched, and in every run's
  workspace `dvc status` holds for the stages it ran and `dvc metrics show` counts every
  shard group.
- The mapped tasks' time in Airflow against the time of their command is printed (the
  process start-up a small task pays).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, dvc_workspace, tool_env
from tests.pipeline.test_dags_run import _tiny_params
from tests.support.servers import free_port, program

# Airflow's start, three data builds and their trainings on 2 CPU cores: about 20 minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

CHROMIUM = Path(os.environ.get("FGCLIP_CHROMIUM", "/usr/bin/chromium"))
PASSWORD = "fgclip-ui-test"
START_TIMEOUT_S = 300
RUNS_TIMEOUT_S = 1800
DATA, TRAIN = "fgclip_data_build", "fgclip_train"
FAN_OUT = ("recaption", "detect", "negatives")


class Airflow:
    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url, self.env = url, env
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            body = json.dumps({"username": "admin", "password": PASSWORD}).encode()
            request = urllib.request.Request(
                f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                self._token = json.loads(response.read())["access_token"]
        return self._token

    def api(self, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method or ("POST" if body is not None else "GET"),
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api(f"/dags/{dag_id}/dagRuns?order_by=start_date&limit=50")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api(f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def tasks(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.api(f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=200")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.api(f"{path}?map_index={map_index}&deserialize=true")["value"]


def _wait(what: str, check: Any, timeout_s: float, every_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    params = _tiny_params()
    params["orchestration"].pop("dvc_remote_url")  # the embedded default: a folder remote in the project
    return dvc_workspace(tmp_path_factory.mktemp("workspace"), params)


@pytest.fixture(scope="module")
def airflow(workspace: Path, tmp_path_factory) -> Iterator[Airflow]:
    if not CHROMIUM.is_file():
        pytest.fail(f"no chromium at {CHROMIUM}: run .ci/install-browser.sh (Debian's chromium package)")
    home = tmp_path_factory.mktemp("airflow_home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (home / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
    env = {
        **tool_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "FGCLIP_WORKSPACE": str(workspace),
    }
    # as `make airflow` does: the task processes start with the modules they need (preload.py)
    env["PYTHONPATH"] = f"{REPO_ROOT / 'airflow_settings'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("FGCLIP_RUNTIME", None)
    for command in (
        [program("airflow"), "db", "migrate"],
        [sys.executable, "-m", "fgclip.orchestration.pools", "--params", str(workspace / "params.yaml")],
    ):
        result = subprocess.run(command, env=env, cwd=workspace, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    (home / "pools.json").write_text(result.stdout)
    subprocess.run([program("airflow"), "pools", "import", str(home / "pools.json")], env=env, check=True, timeout=300)
    log = home / "standalone.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [program("airflow"), "standalone"], env=env, cwd=workspace, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Airflow(url, env)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"airflow standalone exited:\n{log.read_text()[-4000:]}")
            try:
                return {dag["dag_id"] for dag in server.api("/dags")["dags"]} >= {DATA, TRAIN}
            except (urllib.error.URLError, ConnectionError, KeyError):
                return False

        _wait("Airflow and both DAGs", ready, START_TIMEOUT_S)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _trigger_in_the_browser(airflow: Airflow, dag_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{airflow.url}/dags/{dag_id}")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"**/dags/{dag_id}**", timeout=60_000)
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            for section in ("Data source", "Recaption backend", "Negatives backend", "Quality control"):
                dialog.get_by_text(section, exact=True).wait_for(timeout=30_000)
            dialog.get_by_text("Negatives backend", exact=True).click()
            dialog.get_by_text("negatives.openai.model", exact=True).wait_for(timeout=30_000)
            submit = dialog.get_by_role("button", name="Trigger")
            assert submit.is_enabled(), "the trigger form cannot be submitted with its defaults"
            submit.click()
            page.get_by_role("dialog").wait_for(state="detached", timeout=60_000)
        finally:
            browser.close()


def _when(text: str | None) -> float:
    return datetime.fromisoformat(text).timestamp() if text else float("inf")


def _done(airflow: Airflow, dag_id: str, count: int) -> list[dict[str, Any]] | None:
    runs = airflow.runs(dag_id)
    finished = [run for run in runs if run["state"] in ("success", "failed")]
    return runs if len(runs) >= count and len(finished) == len(runs) else None


def test_the_form_submits_and_runs_go_side_by_side(airflow: Airflow, workspace: Path) -> None:
    committed = (workspace / "params.yaml").read_text()
    _trigger_in_the_browser(airflow, DATA)
    [first] = _wait("the run the form triggered", lambda: airflow.runs(DATA), 60)
    assert not first["conf"] or first["conf"].get("demo_seed") == 1234  # the committed defaults
    second = airflow.trigger(DATA, {"demo_seed": 99})  # another dataset, at the same time
    training = _wait(
        "a training on a published dataset",
        lambda: [run for run in airflow.runs(TRAIN) if run["state"] == "running"],
        RUNS_TIMEOUT_S,
    )[0]
    third = airflow.trigger(DATA, {"demo_seed": 7, "demo_train_shards": 1})

    data_runs = _wait("every data build", lambda: _done(airflow, DATA, 3), RUNS_TIMEOUT_S)
    train_runs = _wait("every training", lambda: _done(airflow, TRAIN, 2), RUNS_TIMEOUT_S)
    states = {run["dag_run_id"]: run["state"] for run in [*data_runs, *train_runs]}
    assert set(states.values()) == {"success"}, states

    by_id = {run["dag_run_id"]: run for run in [*data_runs, *train_runs]}
    a, b, c = by_id[first["dag_run_id"]], by_id[second], by_id[third]
    assert _when(a["start_date"]) < _when(b["end_date"]) and _when(b["start_date"]) < _when(a["end_date"]), (
        "the two data builds did not run at once"
    )
    t = by_id[training["dag_run_id"]]
    assert _when(c["start_date"]) < _when(t["end_date"]), "the third data build did not run beside a training"

    # the checkout is untouched; each run has its own outputs, recorded by DVC
    assert (workspace / "params.yaml").read_text() == committed
    env = tool_env()
    expected_shards = {first["dag_run_id"]: 2, second: 2, third: 1}
    versions = set()
    for run_id, shards in expected_shards.items():
        prepared = airflow.xcom(DATA, run_id, "prepare")
        run_dir = Path(prepared["run_dir"])
        status = json.loads(_dvc(["status", "--json"], run_dir, env))
        assert not set(status) & {"dataset", *FAN_OUT, "qc"}, f"{run_id}: {status}"
        for stage in FAN_OUT:
            report = json.loads((run_dir / "reports" / f"{stage}.json").read_text())
            assert report["shards"] == report["groups"] == shards, f"{run_id} {stage}: {report}"
        metrics = json.loads(_dvc(["metrics", "show", "--json"], run_dir, env))
        assert f'"shards": {shards}' in json.dumps(metrics)
        versions.add(airflow.xcom(DATA, run_id, "publish")["version"])
    assert len(versions) == 3, "different datasets must make different dataset versions"
    for run in train_runs:
        decision = airflow.xcom(TRAIN, run["dag_run_id"], "registry_decision")
        assert decision["dataset_version"] in versions and decision["tag"].startswith("model/")

    _report_task_overhead(airflow, first["dag_run_id"])


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([program("dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _report_task_overhead(airflow: Airflow, run_id: str) -> None:
    """Each mapped stage task's time in Airflow against its command's own time (printed: a
    figure for the README, not a pass/fail threshold)."""
    rows = []
    for task in airflow.tasks(DATA, run_id):
        if not task["task_id"].startswith("shard_group.") or task["duration"] is None:
            continue
        command = airflow.xcom(DATA, run_id, task["task_id"], task["map_index"])["seconds"]
        rows.append((task["task_id"], task["map_index"], float(task["duration"]), float(command)))
    assert rows
    task_s = sum(row[2] for row in rows) / len(rows)
    command_s = sum(row[3] for row in rows) / len(rows)
    print(
        f"\nmapped stage tasks: {len(rows)}, mean task duration {task_s:.2f} s, mean command {command_s:.2f} s, "
        f"outside the command {task_s - command_s:.2f} s per task"
    )
