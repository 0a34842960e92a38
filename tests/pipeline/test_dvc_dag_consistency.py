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


def _stage_order(dag, project) -> list[str]:
    """The stages `dag` runs, in its dependency order (control tasks in between skipped)."""
    stage_of = {stage.task_id: stage.name for stage in project.pipeline.stages}
    return [stage_of[task.task_id] for task in dag.topological_sort() if task.task_id in stage_of]


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
    stage_of = {stage.task_id: stage.name for stage in project.pipeline.stages}
    for dag, order in ((dags[DATA_DAG], data), (dags[TRAIN_DAG], train)):
        for name in order:  # every stage DVC runs first is upstream of it in the DAG as well
            task = dag.get_task(project.pipeline.stage(name).task_id)
            upstream = {stage_of.get(task_id) for task_id in task.get_flat_relative_ids(upstream=True)}
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
        expected = shlex.split(dvc_stages[stage.name]["cmd"]) + (["--shards", *shards] if shards else [])
        assert ran[-1] == expected == result["cmd"], stage.name


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
            assert dag.params[titles[key]] == value, f"{dag_id}: {key} default differs from params.yaml"


def test_kubernetes_pods_run_the_dvc_command_too(dvc_stages, project) -> None:
    from fgclip.orchestration.tasks import stages

    for stage in project.pipeline.stages:
        if stage.component == "train":
            continue  # a TrainJob: tests/cluster checks its command
        shards = ["00007"] if stage.fan_out else None
        kwargs = stages._pod_kwargs(project, stage, shards)
        expected = shlex.split(dvc_stages[stage.name]["cmd"]) + (["--shards", *shards] if shards else [])
        assert kwargs["cmds"][0] == expected[0] and kwargs["arguments"] == expected[1:], stage.name
        extra = kwargs["cmds"][1:]  # only global options: --params FILE and --set KEY=VALUE pairs
        assert all(extra[i] in ("--params", "--set") for i in range(0, len(extra), 2)), extra
