"""Orchestration: the dvc.yaml stages as Airflow DAGs, on a local or a Kubernetes runtime.

- pipeline.py: dvc.yaml -> ordered stage specs (the one definition of every command),
  the project (workspace, params, pipeline), shard groups for the fan-out.
- form.py: the trigger form's fields, from the typed config.
- process.py: a stage command run as a plain subprocess (the `local` runtime).
- kubernetes.py, trainjob.py: the `kubernetes` runtime: a component's pod on its node-pool
  preset; multi-node training as a Kubeflow Trainer TrainJob and its operator.
- dataset.py: dataset versions with DVC (commit, push, version record, checkout);
  control.py: the control steps (`python -m fgclip.orchestration.control`).
- tasks/: the Airflow task builders the DAG files in dags/ are wired from (stage tasks on
  either runtime, control tasks, the dataset Asset).

Only tasks/, kubernetes.py and trainjob.py import Airflow; the rest loads without it
(the control pods and `dvc repro` need no Airflow).
"""
