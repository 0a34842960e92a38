"""dvc.yaml and the DAGs stay one pipeline: the same stages (components), in the same
order, running the same commands, with the same params.

DVC itself reads dvc.yaml here (not our reader), so a dvc.yaml feature the DAGs would
misread shows up as a difference.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DATA_DAG, TRAIN_DAG = "fgclip_data_build", "fgclip_train"


@pytest.fixture(scope="module")
def dvc_stages(tmp_path_factory) -> dict[str, dict]:
    """{stage: {cmd, deps, outs, params, upstream}} as DVC reads the project's dvc.yaml."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("dvc_view")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    repo = Repo.init(str(root), no_scm=True)
    try:
        graph = repo.index.graph
        return {
            stage.name: {
                "cmd": stage.cmd,
                "deps": [dep.def_path for dep in stage.deps if not hasattr(dep, "params")],
                "params": [key for dep in stage.deps if hasattr(dep, "params") for key in dep.params],
                "outs": [out.def_path for out in stage.outs],
                "cached": [out.def_path for out in stage.outs if out.use_cache],
                "upstream": {other.name for other in graph.successors(stage)},
            }
            for stage in repo.index.stages
        }
    finally:
        repo.close()


@pytest.fixture(scope="module")
def project():
    from fgclip.orchestration.pipeline import load_project

    return load_project(REPO_ROOT)


@pytest.fixture(scope="module")
def dags(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    saved = {name: os.environ.pop(name, None) for name in ("FGCLIP_WORKSPACE", "FGCLIP_RUNTIME")}
    from airflow.dag_processing.dagbag import DagBag

    try:
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags


def _stage_of(task_id: str, project) -> str | None:
    """The stage a task runs (a fanned-out stage's task sits in the shard-group task group)."""
    names = {stage.task_id: stage.name for stage in project.pipeline.stages}
    return names.get(task_id.rsplit(".", 1)[-1])


def _task_id(dag, project, name: str) -> str:
    return next(task.task_id for task in dag.tasks if _stage_of(task.task_id, project) == name)


def _stage_order(dag, project) -> list[str]:
    """The stages `dag` runs, in its dependency order (control tasks in between skipped)."""
    return [_stage_of(task.task_id, project) for task in dag.topological_sort() if _stage_of(task.task_id, project)]


def _dvc_command(dvc_stages, stage, shards) -> list[str]:
    """DVC's command of the stage, as a shard group runs it: its shards appended, its counts
    in the group's own report (merged into the stage's by merge_reports)."""
    from fgclip.orchestration.pipeline import group_report

    argv = shlex.split(dvc_stages[stage.name]["cmd"])
    if not shards:
        return argv
    if "--report" in argv:
        argv[argv.index("--report") + 1] = group_report(stage.name, shards)
    return [*argv, "--shards", *shards]


def test_our_reader_sees_dvc_yaml_as_dvc_does(dvc_stages, project) -> None:
    ours = {stage.name: stage for stage in project.pipeline.stages}
    assert set(ours) == set(dvc_stages)
    for name, theirs in dvc_stages.items():
        stage = ours[name]
        assert stage.argv == shlex.split(theirs["cmd"]), name
        assert list(stage.deps) == theirs["deps"], name
        assert sorted(stage.outs) == sorted(theirs["outs"]), name
        assert sorted(stage.cached_outs) == sorted(theirs["cached"]), name
        assert list(stage.params) == theirs["params"], name
        assert set(project.pipeline.upstream[name]) == theirs["upstream"], name


def test_every_stage_runs_in_exactly_one_dag_in_dvc_order(dags, dvc_stages, project) -> None:
    names = set(dvc_stages)
    data, train = _stage_order(dags[DATA_DAG], project), _stage_order(dags[TRAIN_DAG], project)
    assert data == [s.name for s in project.data_stages()]
    assert train == [s.name for s in project.train_stages()]
    assert sorted(data + train) == sorted(names), "a dvc.yaml stage is in no DAG, or in both"
    for dag, order in ((dags[DATA_DAG], data), (dags[TRAIN_DAG], train)):
        for name in order:  # every stage DVC runs first is upstream of it in the DAG as well
            task = dag.get_task(_task_id(dag, project, name))
            upstream = {_stage_of(task_id, project) for task_id in task.get_flat_relative_ids(upstream=True)}
            assert dvc_stages[name]["upstream"] & set(order) <= upstream, f"{dag.dag_id}.{name}"
    # the train DAG's stages read only what the data DAG's stages (or they themselves) write
    for name in train:
        assert dvc_stages[name]["upstream"] <= names


def test_the_local_runtime_runs_exactly_the_dvc_command(dvc_stages, project, monkeypatch) -> None:
    from fgclip.orchestration import process

    ran: list[list[str]] = []
    monkeypatch.setattr(
        process, "run_command", lambda argv, **kw: ran.append(list(argv)) or process.CommandResult(list(argv), 0, 0.0)
    )
    for stage in project.pipeline.stages:
        shards = ["00003", "00004"] if stage.fan_out else None
        result = process.run_stage_locally(project, stage, shards)
        assert ran[-1] == _dvc_command(dvc_stages, stage, shards) == result["cmd"], stage.name


def test_fanned_out_stages_take_a_shard_group(project) -> None:
    from fgclip.cli import build_parser

    parser = build_parser()
    fanned = [stage for stage in project.data_stages() if stage.fan_out]
    assert [stage.name for stage in fanned] == list(project.settings.fan_out)
    for stage in fanned:
        args = parser.parse_args(stage.command(["00000", "00001"])[1:])
        assert args.shards == ["00000", "00001"], stage.name
    assert str(Path(project.settings.dataset_manifest).parent) in fanned[0].deps


def test_the_trigger_forms_set_params_their_stages_track(dags, dvc_stages, project) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for dag_id, keys in ((DATA_DAG, project.settings.data_form), (TRAIN_DAG, project.settings.train_form)):
        dag = dags[dag_id]
        stages = [project.pipeline.stage(name) for name in _stage_order(dag, project)]
        titles = {dag.params.get_param(name).schema.get("title"): name for name in dag.params}
        for key in keys:
            assert key in titles, f"{dag_id}: form has no field for {key}"
            assert any(stage.reads_param(key) for stage in stages), (
                f"{dag_id}: no stage of the DAG tracks {key}, so DVC would not see the form's value"
            )
            value = params
            for part in key.split("."):
                value = value[part]
            # an empty committed text opens as an empty (null) field
            assert dag.params[titles[key]] == (None if value == "" else value), f"{dag_id}: {key} default differs"


def test_kubernetes_pods_run_the_dvc_command_too(dvc_stages, project) -> None:
    from fgclip.orchestration.tasks.pods import stage_pod_kwargs, workdir

    for stage in project.pipeline.stages:
        if stage.component == "train":
            continue  # a TrainJob: tests/cluster checks its command
        shards = ["00007"] if stage.fan_out else None
        kwargs = stage_pod_kwargs(project, stage, shards)
        expected = _dvc_command(dvc_stages, stage, shards)
        # the image's entrypoint is `fgclip`; it runs in the DAG run's workspace (its params.yaml)
        assert expected[0] == "fgclip" and "cmds" not in kwargs, stage.name
        assert kwargs["arguments"] == ["-C", workdir(project), *expected[1:]], stage.name
