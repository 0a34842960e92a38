"""Run one DAG with `dag.test()` on the `kubernetes` runtime, every KubernetesPodOperator's
pod run by podman (rehearsal.podman.LocalNamespace) instead of a cluster's API server:

    python -m rehearsal.dag_runner NAMESPACE_JSON DAG_ID [RUN_CONF_JSON]

The operator builds its pod exactly as on a cluster (`build_pod_request_obj`, templates
rendered, XCom sidecar added); only creating, watching and reading the pod is done by the
engine. A pod that fails fails its task with the pod's name and the cause. Prints what
happened as JSON (the last stdout line), like tests/pipeline/dag_test_runner.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: How long one pod may run in the rehearsal (its tiny demo world takes seconds).
POD_TIMEOUT_S = 1800


def result_of(summary: dict[str, Any], task_id: str) -> Any:
    """The XCom of an unmapped task in what main() printed (None if it pushed none)."""
    return next((r["value"] for r in summary["results"] if r["task_id"] == task_id and r["map_index"] == -1), None)


def namespace_from(path: Path) -> Any:
    from rehearsal.podman import LocalNamespace

    spec = json.loads(path.read_text())
    return LocalNamespace(
        Path(spec["workdir"]),
        configmaps=spec["configmaps"],
        network=spec["network"],
        image_stand_ins=spec["image_stand_ins"],
        keep_failed=spec.get("keep_failed", False),
    )


def run_pods_with(namespace: Any) -> None:
    """Make every KubernetesPodOperator run its pod in `namespace`."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowException

    from fgclip.orchestration.kubernetes import to_dict
    from rehearsal.podman import PodFailed, tail

    def execute(self: KubernetesPodOperator, context: Any) -> Any:
        self.name = self._set_name(self.name)
        spec = to_dict(self.build_pod_request_obj(context))
        self.log.info(
            "pod %s (image %s): %s",
            spec["metadata"]["name"],
            spec["spec"]["containers"][0]["image"],
            " ".join(spec["spec"]["containers"][0].get("command", []) + spec["spec"]["containers"][0].get("args", [])),
        )
        try:
            result = namespace.run_pod(spec, timeout_s=POD_TIMEOUT_S)
        except PodFailed as error:
            if error.logs:
                self.log.error("last lines of pod %s:\n%s", error.pod, tail(error.logs))
            raise AirflowException(str(error)) from error
        self.log.info("pod %s succeeded in %.1f s; last lines:\n%s", result.name, result.seconds, tail(result.logs, 12))
        return result.xcom if self.do_xcom_push else None

    KubernetesPodOperator.execute = execute


def main() -> int:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run_pods_with(namespace_from(Path(sys.argv[1])))
    dag_id = sys.argv[2]
    conf = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    bag = DagBag()
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    run = bag.dags[dag_id].test(run_conf=conf)
    with create_session() as session:
        tis: list[TaskInstance] = run.get_task_instances(session=session)
        tasks = [
            {"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state), "label": ti.rendered_map_index}
            for ti in tis
        ]
        xcoms = (
            session.query(XComModel)
            .filter(XComModel.run_id == run.run_id, XComModel.dag_id == dag_id, XComModel.key == "return_value")
            .all()
        )
        results = [{"task_id": x.task_id, "map_index": x.map_index, "value": x.value} for x in xcoms]
        events = [
            {"source_dag_id": e.source_dag_id, "extra": e.extra}
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
