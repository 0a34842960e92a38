"""What a small mapped task of the local runtime pays before its work: Airflow parses the DAG
file again in every task process. Reference: the same parse with what the task builders
loaded before (the cncf provider's pod operator and the Kubernetes clients); ours: the parse
as it is now. Each variant runs in fresh processes (the cost is an import cost), `--repeat`
times; printed: CPU and wall seconds per parse, one JSON line per variant, then the ratio.

    .venv/bin/python benchmarks/dag_task_startup.py [--repeat 5] [--dag dags/fgclip_data_build.py]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
        runs = [parse_once(args.dag, preload, env) for _ in range(args.repeat)]
        results[variant] = {
            "variant": variant,
            "cpu_s": round(statistics.median(cpu for cpu, _ in runs), 3),
            "wall_s": round(statistics.median(wall for _, wall in runs), 3),
            "repeat": args.repeat,
        }
        print(json.dumps(results[variant]))
    ratio = {
        "variant": "ratio",
        "of": "ours/reference",
        "cpu": round(results["ours"]["cpu_s"] / results["reference"]["cpu_s"], 3),
    }
    print(json.dumps(ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
