"""Orchestration: the dvc.yaml stages as Airflow DAGs, on a local or a Kubernetes runtime.

- pipeline.py: dvc.yaml -> ordered stage specs (the one definition of every command),
  the project (workspace, params, pipeline), shard groups for the fan-out.
- form.py: the trigger form's fields, from the typed config.
- runtime.py: where a stage command runs: a subprocess on the worker (`local`) or a pod on
  a node-pool preset (`kubernetes`, built by kubernetes.py).
- dataset.py: dataset versions with DVC (commit, push, version record, checkout).
- tasks.py: the control tasks and the dataset Asset the DAG files in dags/ are wired from.

Nothing here imports Airflow at module level: the package loads without it, and only the
DAG files and the task factories need it.
"""
