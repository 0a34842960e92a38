"""The orchestration core without Airflow: dvc.yaml reading, shard groups, the subprocess
runner, a run's params from the trigger form, form fields and dataset version ids."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from fgclip.config import load_params
from fgclip.orchestration import form, process, runs
from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.dataset import version_id
from fgclip.orchestration.gitrepo import RunError
from fgclip.orchestration.pipeline import PipelineError, group_label, load_pipeline, shard_groups

DVC_YAML = """
stages:
  qc:
    cmd: fgclip qc --images raw --captions caps --out reports/qc
    params: [qc]
    deps: [raw, caps]
    outs:
      - reports/qc/gallery
      - reports/qc/report.json:
          cache: false
  recaption:
    cmd: >-
      fgclip recaption --images raw
      --out caps
    params: [seed, recaption]
    deps: [raw]
    outs: [caps]
  source:
    cmd: fgclip demo-world --out raw
    outs: [raw]
"""


def _project(tmp_path: Path, text: str = DVC_YAML) -> Path:
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def test_stages_come_in_dependency_order_with_their_commands(tmp_path: Path) -> None:
    pipeline = load_pipeline(_project(tmp_path), fan_out=["recaption"])
    assert pipeline.names == ["source", "recaption", "qc"]
    assert pipeline.upstream["qc"] == {"source", "recaption"}
    recaption = pipeline.stage("recaption")
    assert recaption.command(["00000", "00001"]) == [
        "fgclip",
        "recaption",
        "--images",
        "raw",
        "--out",
        "caps",
        "--shards",
        "00000",
        "00001",
    ]
    assert recaption.component == "recaption" and recaption.option("--out") == "caps"
    qc = pipeline.stage("qc")
    assert qc.cached_outs == ("reports/qc/gallery",) and "reports/qc/report.json" in qc.outs
    assert qc.reads_param("qc.sample_size") and not qc.reads_param("qcx")
    head, tail = pipeline.split("recaption")
    assert [s.name for s in head] == ["source", "recaption"] and [s.name for s in tail] == ["qc"]


def test_shards_go_only_to_fanned_out_stages(tmp_path: Path) -> None:
    pipeline = load_pipeline(_project(tmp_path), fan_out=["recaption"])
    with pytest.raises(PipelineError, match="not fanned out"):
        pipeline.stage("qc").command(["00000"])
    with pytest.raises(PipelineError, match="non-empty shard group"):
        pipeline.stage("recaption").command()


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages:\n  a:\n    foreach: ${models}\n    do: {cmd: echo}\n", "literal"),
        ("stages:\n  a:\n    foreach: [1]\n    do:\n      cmd: echo ${item} ${vars.x}\n", "vars"),
        ("stages:\n  a:\n    wdir: sub\n    cmd: echo\n", "not supported"),
        ("stages:\n  a:\n    cmd: fgclip x --n ${n}\n", "templated"),
        ("stages:\n  a:\n    cmd: [echo a, echo b]\n", "one command"),
        ("stages:\n  a: {cmd: x, deps: [b], outs: [a]}\n  b: {cmd: y, deps: [a], outs: [b]}\n", "cycle"),
        ("vars: [x.yaml]\nstages: {}\n", "top-level"),
    ],
)
def test_dvc_features_the_dags_cannot_run_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        load_pipeline(_project(tmp_path, text))


def test_foreach_stages_expand_as_dvc_names_them(tmp_path: Path) -> None:
    pipeline = load_pipeline(
        _project(
            tmp_path,
            """
        stages:
          train:
            foreach: [small, large]
            do: {cmd: "fgclip train --size ${item}", outs: ["models/${item}"]}
          eval:
            foreach:
              small: {split: heldout}
              large: {split: test}
            do:
              cmd: fgclip eval --model models/${key} --split ${item.split}
              deps: ["models/${key}"]
              metrics: [{"reports/${key}.json": {cache: false}}]
    """,
        )
    )
    assert pipeline.names == ["train@small", "train@large", "eval@small", "eval@large"]
    small = pipeline.stage("eval@small")
    assert small.argv == ["fgclip", "eval", "--model", "models/small", "--split", "heldout"]
    assert small.outs == ("reports/small.json",) and pipeline.upstream["eval@small"] == {"train@small"}
    assert (small.task_id, small.base_name) == ("eval_small", "eval")


def test_unknown_fan_out_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="does not have"):
        load_pipeline(_project(tmp_path), fan_out=["detect"])


def test_shard_groups_split_the_range_in_order() -> None:
    shards = [f"{i:05d}" for i in range(7)]
    assert shard_groups(shards, 3) == [shards[0:3], shards[3:6], shards[6:7]]
    assert shard_groups(shards, 2, first=2, last=4) == [["00002", "00003"], ["00004"]]
    assert group_label(["00002", "00003"]) == "00002-00003" and group_label(["00004"]) == "00004"
    with pytest.raises(PipelineError, match="no shards in range"):
        shard_groups(shards, 2, first=10)
    with pytest.raises(PipelineError, match="comes after"):
        shard_groups(shards, 2, first=4, last=2)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "cmd.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_run_command_streams_every_line_and_progress_update(tmp_path: Path, caplog) -> None:
    argv = _script(
        tmp_path,
        """
        import sys
        print("first line")
        sys.stderr.write("progress 1/2\\rprogress 2/2\\n")
        sys.stdout.write("no newline at the end")
    """,
    )
    with caplog.at_level(logging.INFO, logger=process.log.name):
        result = process.run_command(argv, cwd=tmp_path, env=dict(os.environ))
    assert result.returncode == 0
    lines = [record.getMessage() for record in caplog.records]
    for expected in ("first line", "progress 1/2", "progress 2/2", "no newline at the end"):
        assert expected in lines


@pytest.mark.parametrize("code, retryable", [(1, True), (2, False), (3, False), (137, True)])
def test_a_failing_command_says_what_failed_and_whether_to_retry(tmp_path: Path, code: int, retryable: bool) -> None:
    argv = _script(
        tmp_path,
        f"""
        import sys
        print("the reason it failed")
        sys.exit({code})
    """,
    )
    with pytest.raises(process.StageFailed) as failure:
        process.run_command(argv, cwd=tmp_path)
    assert failure.value.returncode == code and failure.value.retryable is retryable
    assert f"exited with code {code}" in str(failure.value) and "the reason it failed" in str(failure.value)


def test_a_killed_task_stops_its_command(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        """
        import os, time
        print("started", os.getpid(), flush=True)
        time.sleep(60)
    """,
    )
    seen: list[int] = []

    class Killed(BaseException):  # what Airflow raises in the task when it is killed
        pass

    class KillOnFirstLine(logging.Logger):
        def info(self, message, *args, **kwargs):
            if args and str(args[0]).startswith("started"):
                seen.append(int(str(args[0]).split()[1]))
                raise Killed()

    with pytest.raises(Killed):
        process.run_command(argv, cwd=tmp_path, logger=KillOnFirstLine("test"), kill_grace_s=2.0)
    [pid] = seen
    with pytest.raises(ProcessLookupError):  # reaped: gone, not orphaned
        os.kill(pid, 0)


def test_programs_resolve_beside_the_interpreter_or_fail_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    python = Path(sys.executable).name
    assert process.resolve_program([python, "-V"])[0] == str(Path(sys.executable).parent / python)
    with pytest.raises(process.StageFailed, match="not on PATH"):
        process.resolve_program(["no-such-program-here"])


def test_command_env_fills_s3_defaults_but_never_overrides_the_environment() -> None:
    settings = OrchestrationConfig.model_validate({"s3": {"endpoint_url": "http://minio:9000", "max_attempts": 9}})
    env = process.command_env(settings, base={"AWS_MAX_ATTEMPTS": "2"})
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_MAX_ATTEMPTS"] == "2" and env["AWS_RETRY_MODE"] == "standard"
    assert "AWS_ACCESS_KEY_ID" not in env


def test_form_values_land_in_the_runs_params_keeping_its_comments(tmp_path: Path) -> None:
    base = "# the knobs\nqc:\n  sample_size: 400  # items\n  max_noise_upper: 0.05\n"
    assert runs.write_params(tmp_path, base, {"qc.sample_size": 400}) == {}
    changed = runs.write_params(tmp_path, base, {"qc.sample_size": 40, "recaption.backend": "demo"})
    assert changed == {"qc.sample_size": 40}
    text = (tmp_path / "params.yaml").read_text()
    assert "# the knobs" in text and "# items" in text
    assert load_params(tmp_path / "params.yaml").qc.sample_size == 40


@pytest.mark.parametrize(
    "values, message", [({"qc.max_noise_upper": 2.0}, "not valid"), ({"qc.no_such_knob": 1}, "no key")]
)
def test_bad_form_values_are_refused_before_anything_is_written(tmp_path: Path, values, message) -> None:
    with pytest.raises(RunError, match=message):
        runs.write_params(tmp_path, "qc:\n  sample_size: 400\n", values)
    assert not (tmp_path / "params.yaml").exists()


def test_an_empty_form_field_keeps_the_committed_value() -> None:
    values = {"recaption_openai_model": None, "recaption_hf_model": None, "qc_sample_size": 9}
    keys = ["recaption.openai.model", "recaption.hf.model", "qc.sample_size"]
    # openai.model is a plain string: empty keeps params.yaml's; hf.model may be null
    assert form.overrides(values, keys) == {"recaption.hf.model": None, "qc.sample_size": 9}
    assert form.drop_empty({"negatives.openai.model": None, "negatives.count": 3}) == {"negatives.count": 3}


def test_form_fields_carry_the_configs_types_choices_and_bounds() -> None:
    params = load_params(None, {"qc.sample_size": 40})
    fields = form.form_fields(["qc.sample_size", "train.recipe", "eval.fgovd_max_items"], params)
    assert fields["qc_sample_size"] == {**fields["qc_sample_size"], "type": "integer", "minimum": 1, "default": 40}
    assert fields["train_recipe"]["enum"] == ["paper", "demo"]
    assert fields["eval_fgovd_max_items"]["type"] == ["integer", "null"]
    assert form.overrides({"qc_sample_size": 7, "other": 1}, ["qc.sample_size"]) == {"qc.sample_size": 7}
    with pytest.raises(PipelineError, match="no key"):
        form.form_fields(["qc.nope"], params)
    with pytest.raises(PipelineError, match="whole section"):
        form.form_fields(["qc"], params)


def test_a_dataset_version_names_the_data_not_the_order() -> None:
    outs = {"data/a": "1" * 32 + ".dir", "data/b": "2" * 32 + ".dir"}
    assert version_id(outs) == version_id(dict(reversed(list(outs.items()))))
    assert version_id(outs) != version_id({**outs, "data/b": "3" * 32 + ".dir"})
    assert version_id(outs).startswith("ds-")


def test_a_command_runs_in_this_process_in_its_folder_with_its_environment(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def main(argv: list[str]) -> int:
        seen.update(argv=argv, cwd=os.getcwd(), env=os.environ.get("FGCLIP_PROBE"))
        return 0 if argv[0] == "ok" else 2

    before = (os.getcwd(), dict(os.environ))
    result = process.run_in_process(
        main, ["fgclip", "ok", "--x"], cwd=tmp_path, env={**os.environ, "FGCLIP_PROBE": "1"}
    )
    assert seen == {"argv": ["ok", "--x"], "cwd": str(tmp_path), "env": "1"}
    assert result.returncode == 0 and (os.getcwd(), dict(os.environ)) == before
    with pytest.raises(process.StageFailed, match="exited with code 2") as failed:
        process.run_in_process(main, ["fgclip", "bad"], cwd=tmp_path, env=dict(os.environ))
    assert failed.value.retryable is False and (os.getcwd(), dict(os.environ)) == before


def test_the_preloaded_modules_exist() -> None:
    from fgclip.orchestration import preload

    assert preload.preload(("fgclip.orchestration.tasks.graph",)) >= 0.0
    for name in preload.PRELOAD:
        assert importlib.util.find_spec(name) is not None, name


def test_a_retried_training_resumes_and_other_stages_run_as_dvc_yaml_says(tmp_path: Path) -> None:
    """A retry of a training task continues from the checkpoints its failed try left: without
    `--resume` the trainer refuses a folder that holds checkpoints, and the retry fails at once."""
    from fgclip.orchestration.pipeline import load_project
    from tests.conftest import REPO_ROOT

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    project = load_project(tmp_path)
    seen: list[list[str]] = []

    def main(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    train, qc = project.pipeline.stage("train_stage1"), project.pipeline.stage("qc")
    for stage, retry in ((train, False), (train, True), (qc, True)):
        result = process.run_stage_locally(project, stage, main=main, retry=retry)
        assert result["cmd"][1:] == seen[-1]
    assert seen[0] == train.argv[1:] and "--resume" not in seen[0]
    assert seen[1] == [*train.argv[1:], "--resume"]
    assert seen[2] == qc.argv[1:]
