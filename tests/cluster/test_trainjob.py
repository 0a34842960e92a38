"""The TrainJob manifest (NPU and GPU) and the TrainJobOperator that submits and awaits it.

There is no API server here, so the operator gets a fake custom-objects API (the one mock
these tests use): it records what is created and replays a scripted sequence of statuses.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import AirflowException
from kubernetes.client.exceptions import ApiException

from fgclip.config import Params
from fgclip.orchestration.trainjob import (
    JOBSET_NAME_LABEL,
    TrainJobOperator,
    TrainJobTrigger,
    training_component,
    trainjob_manifest,
    trainjob_verdict,
)
from tests.cluster.k8s_schema import validate_trainjob

REPO = Path(__file__).resolve().parents[2]
SETTINGS = Params().kubernetes
STAGE1 = [
    "fgclip",
    "train",
    "--stage",
    "1",
    "--init",
    "models/base",
    "--images",
    "data/demo/train/images",
    "--captions",
    "data/build/captions",
    "--out",
    "models/stage1",
]
STAGE2 = [
    "fgclip",
    "train",
    "--stage",
    "2",
    "--init",
    "models/stage1",
    "--images",
    "data/demo/train/images",
    "--captions",
    "data/build/captions",
    "--regions",
    "data/build/regions",
    "--out",
    "models/stage2",
]


def node_pod(manifest: dict) -> dict:
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    return job["template"]["spec"]["template"]


@pytest.mark.parametrize("pool, resource", [("npu", "huawei.com/Ascend910"), ("gpu", "nvidia.com/gpu")])
def test_trainjob_lands_on_the_pool_with_explicit_processes(pool, resource):
    settings = SETTINGS.model_copy(update={"component_pools": {**SETTINGS.component_pools, "train_stage1": pool}})
    preset = settings.pools[pool]
    manifest = trainjob_manifest(STAGE1, settings, num_nodes=4, name="fgclip-stage1-run7")
    validate_trainjob(manifest)

    trainer = manifest["spec"]["trainer"]
    procs = settings.trainer.procs_per_node
    assert trainer["numNodes"] == 4
    assert trainer["numProcPerNode"] == procs  # explicit: Trainer's "auto" never counts NPUs
    assert trainer["image"] == settings.images[preset.family]
    assert (
        trainer["resourcesPerNode"]["requests"][resource]
        == trainer["resourcesPerNode"]["limits"][resource]
        == str(procs)
    )
    assert trainer["resourcesPerNode"]["requests"]["memory"] == settings.trainer.memory_per_node
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:2] == ["--module", "fgclip.cli"]
    # a TrainJob started again after a failure continues from the last checkpoint
    assert trainer["args"][2:] == ["--params", "/etc/fgclip/params/params.yaml", *STAGE1[1:], "--resume"]
    assert {env["name"]: env["value"] for env in trainer["env"]} == preset.env

    pod = node_pod(manifest)
    assert pod["spec"]["nodeSelector"] == preset.node_selector
    assert [t["key"] for t in pod["spec"]["tolerations"]] == [t.key for t in preset.tolerations]
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # params.yaml holds the train section the trainer turns into the DeepSpeed config.
    assert volumes["params"]["configMap"]["name"] == settings.params_configmap
    assert {m.name for m in preset.host_mounts} <= set(volumes)
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/dev/shm", "/workspace", "/etc/fgclip/params"}
    assert pod["metadata"]["labels"]["fgclip/pool"] == pool
    assert manifest["metadata"]["namespace"] == settings.namespace


def test_npu_trainjob_needs_no_host_mounts_and_tells_910a_from_910b():
    """The driver comes from the npu overlay's `ascend` RuntimeClass, not a hostPath; the pool
    preset picks the chip generation by the device plugin's accelerator-type label."""
    for pool, chip in (("npu", "module-910b-8"), ("npu910a", "module")):
        settings = SETTINGS.model_copy(update={"component_pools": {**SETTINGS.component_pools, "train_stage2": pool}})
        pod = node_pod(trainjob_manifest(STAGE2, settings, 2, "fgclip-stage2"))
        assert not [volume for volume in pod["spec"]["volumes"] if "hostPath" in volume], pool
        assert pod["spec"]["nodeSelector"]["accelerator-type"] == chip
        assert pod["spec"]["nodeSelector"]["accelerator"] == "huawei-Ascend910"


def test_trainjob_has_its_own_deadline_and_works_in_the_runs_workspace():
    manifest = trainjob_manifest(
        STAGE1, SETTINGS, 2, "fgclip-s1", workdir="/workspace/.fgclip/runs/d/r", env={"FGCLIP_MLFLOW_PARENT_RUN": "abc"}
    )
    validate_trainjob(manifest)
    assert manifest["spec"]["activeDeadlineSeconds"] == int(SETTINGS.trainer.timeout_s)
    args = manifest["spec"]["trainer"]["args"]
    assert args[2:4] == ["-C", "/workspace/.fgclip/runs/d/r"] and "--params" not in args
    assert {"name": "FGCLIP_MLFLOW_PARENT_RUN", "value": "abc"} in manifest["spec"]["trainer"]["env"]


def test_each_try_gets_a_trainjob_of_its_own_name():
    """A retry must never attach to the TrainJob that failed: the name holds the try number."""
    from jinja2 import Environment

    from fgclip.orchestration.tasks.pods import TRAINJOB_NAME
    from fgclip.orchestration.trainjob import check_trainjob_name

    template = Environment().from_string(TRAINJOB_NAME.format(stage="train-stage2"))
    run = SimpleNamespace(run_after=datetime(2026, 12, 3, 10, 0, 0, 123456))
    names = {template.render(dag_run=run, ti=SimpleNamespace(try_number=n)) for n in (1, 2, 3)}
    assert len(names) == 3
    for name in names:
        check_trainjob_name(name)
    other = SimpleNamespace(run_after=datetime(2026, 12, 3, 10, 0, 0, 123457))
    assert template.render(dag_run=other, ti=SimpleNamespace(try_number=1)) not in names


def test_trainjob_references_the_runtime_k8s_installs():
    runtime = yaml.safe_load((REPO / "k8s/base/training-runtime.yaml").read_text())
    ref = trainjob_manifest(STAGE1, SETTINGS, 1, "fgclip-s1")["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"]) == (runtime["kind"], runtime["metadata"]["name"])
    assert runtime["spec"]["mlPolicy"]["torch"]


def test_stage_and_name_checks():
    assert training_component(STAGE1) == "train_stage1"
    assert training_component(["train", "--stage=2"]) == "train_stage2"
    with pytest.raises(ValueError, match="--stage"):
        training_component(["fgclip", "train", "--init", "x"])
    with pytest.raises(ValueError, match="not an `fgclip train`"):
        trainjob_manifest(["fgclip", "qc"], SETTINGS, 1, "fgclip-qc")
    with pytest.raises(ValueError, match="DNS label"):
        trainjob_manifest(STAGE1, SETTINGS, 1, "Stage_1")
    with pytest.raises(ValueError, match="num_nodes"):
        trainjob_manifest(STAGE1, SETTINGS, 0, "fgclip-s1")


def test_broken_manifest_fails_the_schema():
    manifest = trainjob_manifest(STAGE1, SETTINGS, 1, "fgclip-s1")
    node_pod(manifest)["spec"]["schedulerName"] = "volcano"  # not a patchable field
    with pytest.raises(Exception, match="schedulerName"):
        validate_trainjob(manifest)


# --- the operator ------------------------------------------------------------------------------


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


class FakeTrainer:
    """CustomObjectsApi stand-in: stores created objects, replays scripted statuses."""

    def __init__(self, statuses: list[dict], exists: bool = False):
        self.statuses = statuses
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.gets = 0
        self.exists = exists

    def create_namespaced_custom_object(self, *, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        assert namespace == body["metadata"]["namespace"]
        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, *, group, version, namespace, plural, name):
        status = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}

    def delete_namespaced_custom_object(self, *, group, version, namespace, plural, name):
        self.deleted.append(name)


class FakeCore:
    def __init__(self):
        self.selectors: list[str] = []

    def list_namespaced_pod(self, *, namespace, label_selector):
        self.selectors.append(label_selector)
        return SimpleNamespace(
            items=[SimpleNamespace(metadata=SimpleNamespace(name=f"fgclip-s1-node-0-{i}")) for i in (1, 0)]
        )

    def read_namespaced_pod_log(self, *, name, namespace, container, tail_lines):
        return f"{name}: step 10/10 loss 0.5"


def operator(api, core=None, **kwargs) -> TrainJobOperator:
    manifest = trainjob_manifest(STAGE1, SETTINGS, 2, "fgclip-s1")
    return TrainJobOperator(
        task_id="train_stage1",
        manifest=manifest,
        custom_objects_api=api,
        core_api=core or FakeCore(),
        poll_interval_s=0.01,
        **{"deferrable": False, **kwargs},
    )


def test_operator_creates_and_waits_until_complete(capsys):
    api = FakeTrainer(
        [
            {},
            {"conditions": [{"type": "Created", "status": "True"}]},
            {"conditions": [condition("Complete", "JobsCompleted", "all nodes finished")]},
        ]
    )
    core = FakeCore()
    task = operator(api, core, timeout_s=5)
    assert task.execute(context={}) == "fgclip-s1"
    assert api.created == [task.manifest] and api.gets == 3 and not api.deleted
    assert core.selectors == [f"{JOBSET_NAME_LABEL}=fgclip-s1"]
    task_log = capsys.readouterr().out  # Airflow's task logger writes to stdout
    assert f"kubectl logs -n fgclip -l {JOBSET_NAME_LABEL}=fgclip-s1" in task_log
    assert "fgclip-s1-node-0-0: step 10/10" in task_log


def test_operator_raises_with_the_failure_message():
    api = FakeTrainer([{"conditions": [condition("Failed", "JobsFailed", "node-0 exited with code 1: NCCL timeout")]}])
    with pytest.raises(AirflowException, match="JobsFailed: node-0 exited with code 1: NCCL timeout") as error:
        operator(api, timeout_s=5).execute(context={})
    assert "kubectl logs" in str(error.value)
    assert not api.deleted  # a failed job stays for inspection


def test_operator_times_out_and_deletes_the_job():
    api = FakeTrainer([{"conditions": [{"type": "Created", "status": "True"}]}])
    with pytest.raises(AirflowException, match="did not finish within 0.05 s"):
        operator(api, timeout_s=0.05).execute(context={})
    assert api.deleted == ["fgclip-s1"] and api.gets >= 2


def test_operator_attaches_to_an_existing_job(capsys):
    api = FakeTrainer([{"conditions": [condition("Complete")]}], exists=True)
    assert operator(api, timeout_s=5).execute(context={}) == "fgclip-s1"
    assert not api.created and "already exists" in capsys.readouterr().out


def test_operator_reports_other_create_errors():
    class Forbidden(FakeTrainer):
        def create_namespaced_custom_object(self, **kwargs):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(AirflowException, match="403 Forbidden"):
        operator(Forbidden([{}]), timeout_s=5).execute(context={})


def test_operator_from_settings_uses_the_trainer_timing():
    task = TrainJobOperator.for_command(task_id="t", argv=STAGE2, settings=SETTINGS, num_nodes=3, name="fgclip-s2")
    assert task.manifest["spec"]["trainer"]["numNodes"] == 3
    assert task.timeout_s == SETTINGS.trainer.timeout_s and task.poll_interval_s == SETTINGS.trainer.poll_interval_s


def test_operator_takes_the_node_count_at_run_time():
    api = FakeTrainer([{"conditions": [condition("Complete")]}])
    task = TrainJobOperator.for_command(
        task_id="t",
        argv=STAGE1,
        settings=SETTINGS,
        name="fgclip-s1",
        num_nodes="{{ params.num_nodes }}",
        custom_objects_api=api,
        core_api=FakeCore(),
        deferrable=False,
    )
    assert "num_nodes" in task.template_fields
    task.num_nodes = "5"  # what Airflow renders the template to
    task.execute(context={})
    assert api.created[0]["spec"]["trainer"]["numNodes"] == 5
    validate_trainjob(api.created[0])
    task.num_nodes = "0"
    with pytest.raises(AirflowException, match=">= 1"):
        task.execute(context={})


def test_verdict_ignores_false_and_unfinished_conditions():
    assert trainjob_verdict({}) is None
    assert trainjob_verdict({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}) is None
    assert trainjob_verdict({"status": {"conditions": [condition("Complete")]}}) == ("Complete", "no message")


def test_templated_name_is_checked_once_rendered():
    api = FakeTrainer([{"conditions": [condition("Complete")]}])
    task = TrainJobOperator.for_command(
        task_id="t",
        argv=STAGE1,
        settings=SETTINGS,
        num_nodes=1,
        name="fgclip-s1-{{ ti.try_number }}",
        custom_objects_api=api,
        core_api=FakeCore(),
        deferrable=False,
    )
    task.manifest["metadata"]["name"] = "fgclip-s1-2"  # rendered
    assert task.execute(context={}) == "fgclip-s1-2"
    task.manifest["metadata"]["name"] = "fgclip_s1_2"
    with pytest.raises(AirflowException, match="DNS label"):
        task.execute(context={})


def test_the_wait_is_deferred_so_no_worker_slot_is_held(capsys):
    from airflow.sdk.exceptions import TaskDeferred

    api = FakeTrainer([{"conditions": [condition("Complete", "JobsCompleted", "done")]}])
    task = operator(api, timeout_s=3600, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context={})
    assert api.created == [task.manifest] and api.gets == 0  # created, then handed to the triggerer
    trigger = deferred.value.trigger
    assert isinstance(trigger, TrainJobTrigger) and deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout.total_seconds() == 3600
    classpath, kwargs = trigger.serialize()
    assert classpath == "fgclip.orchestration.trainjob_status.TrainJobTrigger" and kwargs["name"] == "fgclip-s1"
    # back from the trigger
    assert task.execute_complete({}, {"state": "Complete", "detail": "done"}) == "fgclip-s1"
    with pytest.raises(AirflowException, match="failed: JobsFailed: NCCL timeout"):
        task.execute_complete({}, {"state": "Failed", "detail": "JobsFailed: NCCL timeout"})


def test_the_trigger_polls_until_the_trainjob_finishes():
    statuses = [{}, {"conditions": [{"type": "Created", "status": "True"}]}, {"conditions": [condition("Failed", "X")]}]
    seen: list[str] = []

    async def fetch(name: str, namespace: str) -> dict:
        seen.append(name)
        return {"status": statuses[min(len(seen) - 1, len(statuses) - 1)]}

    async def first_event(trigger: TrainJobTrigger):
        async for event in trigger.run():
            return event.payload

    trigger = TrainJobTrigger("fgclip-s1", "fgclip", poll_interval_s=0.01, fetch=fetch)
    assert asyncio.run(first_event(trigger)) == {
        "state": "Failed",
        "detail": "X",
        "name": "fgclip-s1",
        "namespace": "fgclip",
    }
    assert len(seen) == 3

    async def broken(name: str, namespace: str) -> dict:
        raise ConnectionError("api server unreachable")

    event = asyncio.run(first_event(TrainJobTrigger("fgclip-s1", "fgclip", fetch=broken)))
    assert event["state"] == "Error" and "unreachable" in event["detail"]
