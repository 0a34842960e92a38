"""Server faults rehearsed: the MLflow tracking server and the S3 server (real ones, on
loopback, MLflow's artifacts on that S3) killed and kept down for 30 s in the middle of a data
stage (once its first shard is written) and in the middle of a training run (once it has
logged a few steps), then started again on the same ports and data. Both must finish;
afterwards every metric point, param and artifact of their MLflow runs is there exactly
once; the logs say what happened; and the training loop did not wait for the tracker (it
kept stepping while the server was down).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from rehearsal.servers import RestartableServer, mlflow_server, outage, s3_env, s3_server
from rehearsal.world import make_workspace, rehearsal_params

OUTAGE_S = 30.0
ARTIFACTS_BUCKET = "fgclip-mlflow"
STAGE_TIMEOUT_S = 900
#: The training loop must not pause between two steps for a large part of the outage (waiting
#: for the tracker would take all of it), and must step while the servers are down at no
#: less than this share of its pace before and after (a loaded shared machine is noisy).
MAX_STEP_GAP_SHARE_OF_OUTAGE = 0.5
MIN_PACE_WHILE_DOWN = 0.5


def _fault_params() -> dict[str, Any]:
    """A demo world and a stage-1 recipe that outlast the outage on 2 CPU cores."""
    params = rehearsal_params()
    params["demo"].update(train_shards=16, samples_per_shard=64)
    params["train"].update(checkpoint_every=1000, log_every=1)
    # 5 epochs (320 steps): with one epoch (under 10 s on an idle machine) the loop ended inside
    # the outage before the buffer's stall warning (10 s) was due, and the log had nothing to say
    params["train"]["demo"]["stage1"].update(batch_size=16, epochs=5, warmup_steps=4)
    return params


@pytest.fixture(scope="module")
def fault_servers(scratch: Path) -> Iterator[tuple[RestartableServer, RestartableServer]]:
    with s3_server(scratch / "fault-s3") as s3:
        (scratch / "fault-s3" / ARTIFACTS_BUCKET).mkdir()
        with mlflow_server(scratch / "fault-mlflow", f"s3://{ARTIFACTS_BUCKET}/artifacts", s3_env(s3)) as tracking:
            yield s3, tracking


@pytest.fixture(scope="module")
def fault_workspace(scratch: Path) -> tuple[Path, dict[str, str]]:
    """The demo world, its captions and the starting model, made with tracking off."""
    from tests.conftest import tool_env

    root = make_workspace(scratch / "faults", _fault_params())
    env = tool_env()
    for args in (
        ["demo-world", "--out", "data/demo"],
        [
            "recaption",
            "--images",
            "data/demo/train/images",
            "--truth",
            "data/demo/train/truth",
            "--out",
            "data/build/captions",
        ],
        [
            "init-model",
            "--out",
            "models/base",
            "--corpus",
            "data/build/captions",
            "--corpus-images",
            "data/demo/train/images",
        ],
    ):
        subprocess.run(
            [sys.executable, "-m", "fgclip.cli", "--set", "tracking.enabled=false", "--no-progress", *args],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
            timeout=STAGE_TIMEOUT_S,
        )
    return root, env


def _run_through_outage(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    servers: list[RestartableServer],
    started_when: Any,
) -> tuple[int, float, dict[str, float]]:
    """Start `command`, stop the servers for OUTAGE_S once `started_when()` says it is under
    way, start them again; returns (exit code, seconds it ran, the outage record)."""
    began = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not started_when():
                if process.poll() is not None:
                    raise AssertionError(f"{command[3:5]} ended before the outage:\n{log.read_text()[-3000:]}")
                if time.monotonic() - began > STAGE_TIMEOUT_S:
                    raise AssertionError(f"{command[3:5]} did not get under way:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)  # the stage must still be running when the servers go
            record = outage(servers, OUTAGE_S)
            code = process.wait(timeout=STAGE_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
    return code, time.monotonic() - began, record


def _only_run(client: mlflow.MlflowClient, experiment: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, f"{experiment}: expected one run, found {len(runs)}"
    return runs[0]


def _duplicates(client: mlflow.MlflowClient, run: Any) -> dict[str, int]:
    """Metric points stored more than once, per key (a point: its step and value)."""
    found = {}
    for key in run.data.metrics:
        points = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        if len(points) != len(set(points)) or len({step for step, _ in points}) != len(points):
            found[key] = len(points) - len({step for step, _ in points})
    return found


def test_a_data_stage_survives_both_servers_stopping(
    fault_servers: Any, fault_workspace: Any, report: dict[str, Any], scratch: Path
) -> None:
    s3, tracking = fault_servers
    root, base_env = fault_workspace
    out = root / "data" / "build" / "captions-fault"
    report_file = root / "reports" / "recaption-fault.json"
    env = {**base_env, **s3_env(s3), "MLFLOW_TRACKING_URI": tracking.url}
    command = [
        sys.executable,
        "-m",
        "fgclip.cli",
        "recaption",
        "--images",
        "data/demo/train/images",
        "--truth",
        "data/demo/train/truth",
        "--out",
        str(out),
        "--report",
        str(report_file),
    ]
    log = scratch / "fault-recaption.log"
    code, seconds, record = _run_through_outage(
        command,
        cwd=root,
        env=env,
        log=log,
        servers=[s3, tracking],
        started_when=lambda: any(out.glob("*.manifest.json")),
    )
    text = log.read_text()
    assert code == 0, f"the stage failed after the outage:\n{text[-4000:]}"

    shards = sorted(p.name.split(".")[0] for p in (root / "data" / "demo" / "train" / "images").glob("*.tar"))
    assert sorted(p.name.split(".")[0] for p in out.glob("*.manifest.json")) == shards
    keys = [
        json.loads(line)["key"]
        for path in sorted(out.glob("[0-9]*.jsonl"))
        if "rejects" not in path.name
        for line in path.read_text().splitlines()
    ]
    counts = json.loads(report_file.read_text())
    assert len(keys) == len(set(keys)) == counts["items_out"]

    client = mlflow.MlflowClient(tracking_uri=tracking.url)
    run = _only_run(client, "fgclip-data")
    assert run.info.status == "FINISHED"
    from fgclip.core.tracking import flatten

    # every count of the report is a metric of the run (rejects and ignored members by reason)
    expected = {
        key: float(value)
        for key, value in flatten("", counts).items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and key not in ("seconds", "items_per_second")
    }
    lost = [key for key, value in expected.items() if run.data.metrics.get(key) != value]
    assert not lost, f"metrics lost or wrong: {lost}"
    duplicates = _duplicates(client, run)
    assert not duplicates, f"metric points stored twice: {duplicates}"
    artifacts = [item.path for item in client.list_artifacts(run.info.run_id)]
    assert report_file.name in artifacts, f"the report artifact is missing: {artifacts}"
    fetched = Path(client.download_artifacts(run.info.run_id, report_file.name, str(scratch / "fault-artifacts")))
    assert fetched.read_bytes() == report_file.read_bytes()
    stored = list((scratch / "fault-s3" / ARTIFACTS_BUCKET).rglob(report_file.name))
    assert len(stored) == 1, f"the artifact is not on the S3 server once: {stored}"
    assert "MLflow" in text and ("waits for MLflow" in text or "Retrying" in text), (
        f"the log does not say the tracker waited:\n{text[-3000:]}"
    )
    report.setdefault("server_faults", {})["data_stage"] = {
        "stage": "recaption",
        "seconds": round(seconds, 1),
        "exit_code": code,
        **record,
        "metrics_checked": len(expected),
        "metrics_lost": len(lost),
        "artifacts_lost": 0,
        "duplicate_metric_points": sum(duplicates.values()),
        "records_out": len(keys),
    }


def _train(
    root: Path, env: dict[str, str], out: str, log: Path, servers: list[RestartableServer], tracking_url: str
) -> tuple[int, float, dict[str, float]]:
    command = [
        sys.executable,
        "-m",
        "fgclip.cli",
        "--no-progress",
        "train",
        "--stage",
        "1",
        "--init",
        "models/base",
        "--images",
        "data/demo/train/images",
        "--captions",
        "data/build/captions",
        "--out",
        out,
    ]
    client = mlflow.MlflowClient(tracking_uri=tracking_url)

    def stepping() -> bool:  # a few steps logged: the loop is under way
        experiment = client.get_experiment_by_name("fgclip-train")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 5

    return _run_through_outage(command, cwd=root, env=env, log=log, servers=servers, started_when=stepping)


def test_training_does_not_wait_for_the_tracker_and_loses_nothing(
    fault_servers: Any, fault_workspace: Any, report: dict[str, Any], scratch: Path
) -> None:
    s3, tracking = fault_servers
    root, base_env = fault_workspace
    env = {**base_env, **s3_env(s3), "MLFLOW_TRACKING_URI": tracking.url}
    log = scratch / "fault-train.log"
    code, seconds, record = _train(root, env, "models/stage1-fault", log, [s3, tracking], tracking.url)
    text = log.read_text()
    assert code == 0, f"training failed after the outage:\n{text[-4000:]}"
    summary = json.loads((root / "models" / "stage1-fault" / "training.json").read_text())
    steps = summary["steps"]

    client = mlflow.MlflowClient(tracking_uri=tracking.url)
    run = _only_run(client, "fgclip-train")
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    logged = sorted(m.step for m in history)
    lost = sorted(set(range(1, steps + 1)) - set(logged))
    assert not lost, f"loss points lost: steps {lost}"
    duplicates = _duplicates(client, run)
    assert not duplicates, f"metric points stored twice: {duplicates}"
    for key in ("lr", "images_per_s", "train_seconds"):
        assert key in run.data.metrics, f"metric {key} lost"
    assert run.data.params.get("stage") == "1" and run.data.tags.get("final_model")

    # the loop kept stepping while the servers were down: the points' times are when each
    # step logged (the buffer stamps them), not when the server took them
    times = sorted(m.timestamp / 1000 for m in history)
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    down_from, down_to = record["began"], record["began"] + record["mlflow_down_s"]
    during = [t for t in times if down_from <= t <= down_to]
    assert len(during) >= 2, "fewer than two steps while the servers were down: did the outage miss the run?"
    pace_down = (len(during) - 1) / (during[-1] - during[0])
    outside = [t for t in times if t < down_from or t > down_to]
    pace_up = (len(outside) - 1) / (times[-1] - times[0] - (during[-1] - during[0]))
    assert max(gaps) < MAX_STEP_GAP_SHARE_OF_OUTAGE * record["mlflow_down_s"], (
        f"the training loop stalled for {max(gaps):.1f} s during a {record['mlflow_down_s']} s outage"
    )
    assert pace_down >= MIN_PACE_WHILE_DOWN * pace_up, (
        f"steps/s fell from {pace_up:.2f} to {pace_down:.2f} while the servers were down"
    )
    assert "MLflow has not taken run data" in text and "took the buffered run data again" in text, (
        f"the log does not say what happened:\n{text[-3000:]}"
    )
    report.setdefault("server_faults", {})["training"] = {
        "stage": 1,
        "steps": steps,
        "exit_code": code,
        **record,
        "seconds_with_outage": round(seconds, 1),
        "steps_while_down": len(during),
        "steps_per_s_while_down": round(pace_down, 3),
        "steps_per_s_while_up": round(pace_up, 3),
        "longest_pause_between_steps_s": round(max(gaps), 2),
        "metric_points_lost": len(lost),
        "duplicate_metric_points": sum(duplicates.values()),
    }
