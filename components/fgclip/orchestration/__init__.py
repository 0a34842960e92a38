"""Orchestration: the dvc.yaml stages as Airflow DAGs, on a local or a Kubernetes runtime.

- pipeline.py: dvc.yaml -> ordered stage specs (the one definition of every command),
  the project (workspace, params, pipeline), shard groups for the fan-out.
- form.py: the trigger form's fields, from the typed config.
- process.py: a stage command run as a plain subprocess (the `local` runtime).
- kubernetes.py, trainjob.py: the `kubernetes` runtime: a component's pod on its node-pool
  preset; multi-node training as a Kubeflow Trainer TrainJob and its operator.
- runs.py, gitrepo.py: each DAG run's own workspace (a git worktree with the run's params,
  the shared DVC cache) and the git states a run records (dataset/..., model/... tags).
- dataset.py: dataset versions with DVC (commit, push, version record, checkout);
  reports.py: the fanned-out stages' reports merged from their shard groups';
  control.py: the control steps (`python -m fgclip.orchestration.control`);
  pools.py: the Airflow pools (`python -m fgclip.orchestration.pools`).
- trainjob_status.py: a TrainJob's verdict and the trigger that waits for it in the triggerer.
- tasks/: the Airflow task builders the DAG files in dags/ are wired from (graph.py: the two
  DAGs' shape; stages.py and pods.py: stage tasks on either runtime; control.py: control
  tasks, forms, the dataset Asset, the approval; common.py: what every task shares).

Only tasks/, kubernetes.py, trainjob.py and trainjob_status.py import Airflow; the rest
loads without it (the control pods and `dvc repro` need no Airflow).
"""
