"""Modules the local runtime's task processes should find loaded already.

Airflow's LocalExecutor forks every task's process from its worker, which it forked from the
scheduler, and every Airflow process imports `airflow_local_settings` (airflow_settings/, on
PYTHONPATH via `make airflow`). Importing these there once means a task's process starts with
the DAG builders, the component CLIs of the fanned-out stages and MLflow in memory: its DAG
parse and its command (run in the task's own process, `orchestration.fan_out_in_process`) no
longer import them again, which was most of a small mapped task's time.
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger(__name__)

PRELOAD = (
    "mlflow",
    "fgclip.orchestration.tasks.graph",
    "fgclip.core.stage_command",
    "fgclip.data.recaption.cli",
    "fgclip.data.detect.cli",
    "fgclip.data.negatives.cli",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import `modules` (a missing one is a broken install: it raises); returns the seconds."""
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    seconds = time.perf_counter() - started
    log.debug("preloaded %d modules in %.1f s", len(modules), seconds)
    return seconds
