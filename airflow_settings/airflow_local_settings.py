"""Airflow imports this module in each of its processes (it is on PYTHONPATH under `make
airflow`): the scheduler loads the modules every task needs once, and the task processes,
forked from it, start with them in memory (fgclip.orchestration.preload)."""

from __future__ import annotations

from fgclip.orchestration.preload import preload

preload()

# Airflow copies every public name of this module into airflow.settings: there are none.
__all__: list[str] = []
