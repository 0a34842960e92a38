"""The Airflow pools the stage tasks take slots of (orchestration.pools), in the format of
`airflow pools import`:

    python -m fgclip.orchestration.pools [--params params.yaml] > pools.json
    airflow pools import pools.json

`make airflow` does this before it starts Airflow; on a cluster run it once after the chart
is installed (k8s/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fgclip.config import load_params
from fgclip.orchestration.config import OrchestrationConfig


def pool_file(settings: OrchestrationConfig) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "slots": slots,
            "description": f"fgclip stage tasks of the {name.removeprefix('fgclip-')} family (orchestration.pools)",
            "include_deferred": False,
        }
        for name, slots in sorted(settings.pools.items())
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fgclip.orchestration.pools", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    print(json.dumps(pool_file(load_params(args.params).orchestration), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
