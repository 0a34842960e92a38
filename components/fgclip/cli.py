"""`fgclip <component> ...`: one console command, a subcommand per component.

Each component module supplies `HELP`, `add_arguments(parser)` and
`command(args, params) -> exit code`; this file only wires them up, so the same code
runs from a shell, a `dvc repro` stage, an Airflow task or a Kubernetes pod.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from fgclip.config import load_params, parse_override
from fgclip.errors import ComponentError, ExitCode

COMPONENTS: dict[str, str] = {
    "dataset": "fgclip.datasets.cli",
    "demo-world": "fgclip.demo.cli",
    "ingest": "fgclip.data.ingest.cli",
    "recaption": "fgclip.data.recaption.cli",
    "detect": "fgclip.data.detect.cli",
    "negatives": "fgclip.data.negatives.cli",
    "qc": "fgclip.data.qc.cli",
    "finehard": "fgclip.data.finehard.cli",
    "init-model": "fgclip.train.init_model",
    "train": "fgclip.train.command",
    "register": "fgclip.registry.cli",
    "eval": "fgclip.eval.cli",
    "eval-table": "fgclip.eval.table",
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `fgclip` parser. When `argv` names a component, only that component's module
    is imported (some import torch or MLflow, seconds a command should not pay for
    another component); otherwise all are, so `fgclip --help` lists them with their help."""
    parser = argparse.ArgumentParser(
        prog="fgclip", description="FG-CLIP data building, training and evaluation components"
    )
    parser.add_argument(
        "-C",
        "--chdir",
        default=None,
        metavar="DIR",
        help="run in DIR, as if started there (a DAG run's workspace: its params.yaml and paths)",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml; missing -> defaults)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param, e.g. --set qc.max_noise_upper=0.1 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="component", required=True, metavar="component")
    chosen = next((word for word in argv if word in COMPONENTS), None)
    for name, module_name in COMPONENTS.items():
        if chosen is not None and name != chosen:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(child)
        child.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads (torch's CPU ops) sleep instead of spinning. Spinning threads
    # burn the cores that DataLoader workers and other processes need: on 2 shared cores a
    # demo training step took 5x the CPU time. Read once, when torch loads: components
    # import torch only after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.chdir:
        os.chdir(args.chdir)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        try:
            params = load_params(args.params, dict(parse_override(item) for item in args.overrides))
        except (ValueError, yaml.YAMLError) as error:  # pydantic's ValidationError is a ValueError
            raise ComponentError(f"invalid params ({args.params}, --set): {error}") from error
        return int(args._module.command(args, params) or 0)
    except ComponentError as error:
        logging.getLogger("fgclip").error("%s", error)
        print(f"fgclip {args.component}: error: {error}", file=sys.stderr)
        return ExitCode.USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
