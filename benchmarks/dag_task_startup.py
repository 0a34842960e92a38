"""What a small mapped task of the local runtime pays before its work, two parts:

1. `parse`: Airflow parses the DAG file again in every task process. Reference: the parse
   with what the task builders loaded before (the cncf provider's pod operator and the
   Kubernetes clients); ours: the parse as it is now, in a fresh process.
2. `command`: one shard group's command (`fgclip recaption --shards 00000` on a demo world of
   64 images a shard, tracked in a SQLite MLflow store). Reference: a new interpreter per
   command, as the tasks ran it before; ours: the command in a process forked from one that
   preloaded what `airflow_local_settings` preloads (how the LocalExecutor starts a task),
   run in that process (orchestration.fan_out_in_process).

Each variant runs `--repeat` times; printed: median CPU and wall seconds, one JSON line per
variant, and a ratio line per part.

    .venv/bin/python benchmarks/dag_task_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What the local runtime's DAG parse imported before: the provider's pod operator, which
#: pulls in the kubernetes and kubernetes_asyncio clients.
REFERENCE_PRELOAD = "import airflow.providers.cncf.kubernetes.operators.pod"
PROBE = """
import resource, runpy, sys, time
start = time.perf_counter()
{preload}
runpy.run_path(sys.argv[1])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime, time.perf_counter() - start)
"""


def parse_once(dag: Path, preload: str, env: dict[str, str]) -> tuple[float, float]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(preload=preload), str(dag)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    cpu, wall = result.stdout.split()[-2:]
    return float(cpu), float(wall)


FORKED = """
import os, resource, sys, time
from fgclip.orchestration.preload import preload
preload()
from fgclip.cli import main
from fgclip.orchestration.process import run_in_process
start = time.perf_counter()
before = resource.getrusage(resource.RUSAGE_CHILDREN)
pid = os.fork()
if pid == 0:
    run_in_process(main, sys.argv[1:], cwd=os.getcwd(), env=dict(os.environ))
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
after = resource.getrusage(resource.RUSAGE_CHILDREN)
print(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.perf_counter() - start)
"""


def command_once(argv: list[str], cwd: Path, env: dict[str, str], forked: bool) -> tuple[float, float]:
    if forked:
        result = subprocess.run(
            [sys.executable, "-c", FORKED, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        cpu, wall = result.stdout.split()[-2:]
        return float(cpu), float(wall)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fgclip.cli", *argv[1:]], cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.perf_counter() - start


def _summary(variant: str, part: str, runs: list[tuple[float, float]]) -> dict[str, object]:
    return {
        "variant": variant,
        "part": part,
        "cpu_s": round(statistics.median(cpu for cpu, _ in runs), 3),
        "wall_s": round(statistics.median(wall for _, wall in runs), 3),
        "repeat": len(runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dag", type=Path, default=REPO / "dags" / "fgclip_data_build.py")
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'components'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "FGCLIP_RUNTIME": "local",
    }
    results = {}
    for variant, preload in (("reference", REFERENCE_PRELOAD), ("ours", "")):
        results[variant] = _summary(variant, "parse", [parse_once(args.dag, preload, env) for _ in range(args.repeat)])
        print(json.dumps(results[variant]))
    print(json.dumps({"variant": "ratio", "part": "parse", "of": "ours/reference",
                      "cpu": round(results["ours"]["cpu_s"] / results["reference"]["cpu_s"], 3)}))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fgclip-startup-") as folder:
        work = Path(folder)
        world = ["--set", "demo.train_shards=1", "--set", "demo.heldout_shards=1", "--set", "tracking.enabled=false"]
        subprocess.run([sys.executable, "-m", "fgclip.cli", *world, "--no-progress", "demo-world", "--out", "data"],
                       cwd=work, env=env, check=True, capture_output=True, timeout=600)  # fmt: skip
        argv = ["fgclip", "--no-progress", "recaption", "--images", "data/train/images", "--truth", "data/train/truth",
                "--out", "caps", "--report", "report.json", "--shards", "00000"]  # fmt: skip
        command_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        command_once(argv, work, command_env, forked=False)  # creates the MLflow store once
        commands = {}
        for variant, forked in (("reference", False), ("ours", True)):
            runs = []
            for _ in range(args.repeat):
                shutil.rmtree(work / "caps", ignore_errors=True)  # the work itself every time, not a skip
                runs.append(command_once(argv, work, command_env, forked))
            commands[variant] = _summary(variant, "command", runs)
            print(json.dumps(commands[variant]))
        work_s = json.loads((work / "report.json").read_text())["seconds"]
    print(json.dumps({"variant": "ratio", "part": "command", "of": "ours/reference",
                      "cpu": round(commands["ours"]["cpu_s"] / commands["reference"]["cpu_s"], 3),
                      "wall": round(commands["ours"]["wall_s"] / commands["reference"]["wall_s"], 3),
                      "work_s": work_s}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
