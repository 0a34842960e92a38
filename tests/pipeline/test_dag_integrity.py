"""Every DAG in dags/ parses with no import errors, no cluster and no network, on both
runtimes, fast, and has the shape the project promises (form, fan-out, Asset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"
EXPECTED = {"fgclip_data_build", "fgclip_train"}
#: What parsing a DAG file must never pull in: the model stack loads in the tasks only.
HEAVY_MODULES = ("torch", "transformers", "deepspeed", "mlflow", "dvc.repo")
PARSE_BUDGET_S = 20.0  # Airflow's own dagbag_import_timeout is 30 s


@pytest.fixture(scope="module", autouse=True)
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    saved = {name: os.environ.get(name) for name in [*env, "FGCLIP_WORKSPACE", "FGCLIP_RUNTIME"]}
    os.environ.update(env)
    os.environ.pop("FGCLIP_WORKSPACE", None)
    os.environ.pop("FGCLIP_RUNTIME", None)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def dagbag():
    return _dagbag()


def test_every_dag_file_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}, "\n".join(f"{f}:\n{e}" for f, e in dagbag.import_errors.items())
    assert set(dagbag.dags) == EXPECTED
    for path in DAGS_FOLDER.glob("*.py"):
        assert any(dag.fileloc == str(path) for dag in dagbag.dags.values()), f"{path.name} defines no DAG"


def test_dags_parse_fast_without_the_model_stack(tmp_path: Path) -> None:
    script = (
        "import json, sys, time\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "start = time.monotonic()\n"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        "print(json.dumps({'seconds': time.monotonic() - start, 'errors': list(bag.import_errors),\n"
        f"                  'heavy': [m for m in {HEAVY_MODULES!r} if m in sys.modules]}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'components'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert report["heavy"] == [], f"parsing the DAGs imported {report['heavy']}"
    assert report["seconds"] < PARSE_BUDGET_S


def test_trigger_forms_have_typed_validated_fields(dagbag) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    for dag in dagbag.dags.values():
        assert dag.params, f"{dag.dag_id} has no trigger form"
        assert dag.description, f"{dag.dag_id} has no description"
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("type"), f"{dag.dag_id}.{name} has no type"
            assert param.schema.get("title") and param.description, f"{dag.dag_id}.{name} is not labelled"
            assert param.schema.get("section"), f"{dag.dag_id}.{name} is in no form section"
            param.resolve(suppress_exception=False)  # the default passes its own schema
    data = dagbag.dags["fgclip_data_build"].params
    with pytest.raises(ParamValidationError):
        data.get_param("qc_max_noise_upper").resolve(value=1.5)
    with pytest.raises(ParamValidationError):
        data.get_param("recaption_backend").resolve(value="no-such-backend")
    train = dagbag.dags["fgclip_train"].params
    assert {"dataset_version", "num_nodes", "train_recipe", "registry_require_approval"} <= set(train)
    with pytest.raises(ParamValidationError):
        train.get_param("num_nodes").resolve(value=0)
    with pytest.raises(ParamValidationError):
        train.get_param("dataset_version").resolve(value="v1; rm -rf /")


def test_the_form_submits_as_it_opens_whatever_backend_is_chosen(dagbag) -> None:
    """The fields of unselected backends (an endpoint's model name, a hub id) may stay empty,
    and every section of the data form shows."""
    data = dagbag.dags["fgclip_data_build"].params
    for name in ("recaption_openai_model", "negatives_openai_model", "recaption_hf_model", "detect_owlv2_model"):
        param = data.get_param(name)
        assert "null" in param.schema["type"], f"{name} cannot be left empty"
        assert param.resolve(value=None, suppress_exception=False) is None
    sections = {data.get_param(name).schema["section"] for name in data}
    assert {"Data source", "Recaption backend", "Detect backend", "Negatives backend", "Quality control"} <= sections


def _task_ids(dag, prefix: str = "") -> set[str]:
    return {task.task_id for task in dag.tasks if task.task_id.startswith(prefix)}


def test_data_build_flows_each_shard_group_through_its_own_task_group(dagbag) -> None:
    dag = dagbag.dags["fgclip_data_build"]
    group = dag.task_group.children["shard_group"]
    assert type(group).__name__ == "MappedTaskGroup", "the fanned-out stages are not one mapped task group"
    inside = {"shard_group.recaption", "shard_group.detect", "shard_group.negatives"}
    assert _task_ids(dag, "shard_group.") == inside
    for task_id in inside:
        assert dag.get_task(task_id).map_index_template, f"{task_id} mapped tasks are not labelled in the UI"
    # within a group, each stage waits only for the one before it in the same group
    # (shard_groups feeds every mapped task its group)
    assert dag.get_task("shard_group.detect").upstream_task_ids - {"shard_groups"} == {"shard_group.recaption"}
    assert dag.get_task("shard_group.negatives").upstream_task_ids - {"shard_groups"} == {"shard_group.detect"}
    assert dag.get_task("merge_reports").upstream_task_ids >= {"shard_group.negatives"}
    assert "merge_reports" in dag.get_task("qc").upstream_task_ids
    publish = dag.get_task("publish")
    assert [outlet.name for outlet in publish.outlets] == ["fgclip_dataset"]
    assert dag.schedule is None and dag.max_active_runs > 1  # runs work in their own workspaces
    pools = {dag.get_task(task_id).pool for task_id in inside}
    assert pools <= {"fgclip-npu", "fgclip-gpu", "fgclip-cpu"} and "fgclip-gpu" in pools, pools


def test_train_edges_follow_the_stages_dependencies(dagbag) -> None:
    dag = dagbag.dags["fgclip_train"]
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["fgclip_dataset"]
    resolve = dag.get_task("resolve_dataset")
    assert [inlet.name for inlet in resolve.inlets] == ["fgclip_dataset"]
    # eval of stage 1 runs beside stage 2, not after it
    assert dag.get_task("eval_stage1").upstream_task_ids == {"train_stage1"}
    assert dag.get_task("train_stage2").upstream_task_ids == {"train_stage1"}
    assert dag.get_task("eval_stage2").upstream_task_ids == {"train_stage2"}
    assert "eval_stage1" not in dag.get_task("train_stage2").get_flat_relative_ids(upstream=True)
    gate = dag.get_task("promotion_gate")
    assert {t.task_id for t in gate.downstream_list} == {"champion_promoted", "champion_kept", "approve_champion"}
    assert type(dag.get_task("approve_champion")).__name__ == "ApprovalOperator"
    assert dag.get_task("promote_champion").upstream_task_ids == {"approve_champion", "registry_decision"}
    assert "register" in gate.get_flat_relative_ids(upstream=True)
    assert dag.on_success_callback and dag.on_failure_callback, "the run's MLflow run is never closed"


def test_the_kubernetes_runtime_parses_without_a_cluster(monkeypatch) -> None:
    monkeypatch.setenv("FGCLIP_RUNTIME", "kubernetes")
    bag = _dagbag()
    assert bag.import_errors == {}, "\n".join(bag.import_errors.values())
    data = bag.dags["fgclip_data_build"]
    kinds = {task.task_id: type(task).__name__ for task in data.tasks}
    for stage in ("dataset", "qc", "prepare", "publish"):
        assert "KubernetesPod" in kinds[stage], kinds
    for stage in ("recaption", "detect", "negatives"):
        assert kinds[f"shard_group.{stage}"] == "ShardGroupPodOperator", kinds
    train = bag.dags["fgclip_train"]
    assert type(train.get_task("train_stage1")).__name__ == "TrainJobOperator"


def test_kubernetes_pods_work_in_the_runs_workspace(monkeypatch) -> None:
    """Every stage pod runs `fgclip -C <the run's workspace>` (its params.yaml holds the form's
    values); the prepare pod gets the form's values as valid --set flags."""
    from fgclip.config import load_params, parse_override

    monkeypatch.setenv("FGCLIP_RUNTIME", "kubernetes")
    dag = _dagbag().dags["fgclip_data_build"]
    form = {name: dag.params[name] for name in dag.params}
    form["qc_max_noise_upper"] = 0.125  # what a person typed into the form
    env = dag.get_template_env()
    context = {"params": form, "dag": dag, "run_id": "manual__2026-01-02T03:04:05+00:00", **dag.user_defined_macros}
    qc = [env.from_string(part).render(**context) for part in dag.get_task("qc").arguments]
    assert qc[:2] == ["-C", "/workspace/.fgclip/runs/fgclip_data_build/manual__2026-01-02T03_04_05_00_00"], qc
    assert "--params" not in qc and "--set" not in qc
    prepare = [env.from_string(part).render(**context) for part in dag.get_task("prepare").arguments]
    overrides = dict(parse_override(prepare[i + 1]) for i, word in enumerate(prepare) if word == "--set")
    assert overrides["qc.max_noise_upper"] == 0.125 and overrides["qc.sample_size"] == form["qc_sample_size"]
    load_params(REPO_ROOT / "params.yaml", {k: v for k, v in overrides.items() if v is not None})
