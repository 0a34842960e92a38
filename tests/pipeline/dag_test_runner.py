"""Run one DAG with `dag.test()` and print what happened as JSON (the last stdout line).

    python tests/pipeline/dag_test_runner.py DAG_ID [RUN_CONF_JSON]

The DAG tests start this in a subprocess so that Airflow, which reads its home and
database once per process, gets the test's own AIRFLOW_HOME whatever else the test
session imported before.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_id = sys.argv[1]
    conf = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    bag = DagBag()  # the configured dags folder
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    run = bag.dags[dag_id].test(run_conf=conf)
    with create_session() as session:
        tasks = [
            {"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state), "label": ti.rendered_map_index}
            for ti in run.get_task_instances(session=session)
        ]
        xcoms = (
            session.query(XComModel)
            .filter(XComModel.run_id == run.run_id, XComModel.dag_id == dag_id, XComModel.key == "return_value")
            .all()
        )
        results = [{"task_id": x.task_id, "map_index": x.map_index, "value": x.value} for x in xcoms]
        events = [
            {"source_dag_id": e.source_dag_id, "source_run_id": e.source_run_id, "extra": e.extra}
            for e in session.query(AssetEvent).order_by(AssetEvent.id).all()
        ]
    print(
        json.dumps(
            {"state": str(run.state), "run_id": run.run_id, "tasks": tasks, "results": results, "asset_events": events},
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
