"""Run workspaces (git worktrees with the run's params and the shared DVC cache), the state a
run records with git and DVC, and the fanned-out stages' merged reports. No Airflow here:
the DAG runs themselves are in tests/pipeline."""

from __future__ import annotations

import json
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from fgclip.core.dataset import DatasetManifest
from fgclip.orchestration import control, reports, runs
from fgclip.orchestration.gitrepo import RunError, committed_params
from fgclip.orchestration.pipeline import load_project
from tests.conftest import tool_env

DVC_YAML = """
stages:
  make:
    cmd: python -c "import pathlib; p = pathlib.Path('out'); p.mkdir(exist_ok=True); (p / 'a').write_text('x' * 99)"
    params: [qc.sample_size]
    outs: [out]
  count:
    cmd: fgclip recaption --images out --out caps --report reports/recaption.json
    params: [recaption]
    deps: [out]
    outs: [caps]
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        env=tool_env(),
    ).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text(textwrap.dedent(DVC_YAML))
    params = {"qc": {"sample_size": 40}, "orchestration": {"fan_out": ["count"], "data_last_stage": "count"}}
    (root / "params.yaml").write_text("# committed\n" + yaml.safe_dump(params))
    (root / ".gitignore").write_text("/.fgclip/\n")
    (root / ".dvcignore").write_text(".fgclip/\n")
    _git(root, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=tool_env())
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "project")
    return root


def _settings(root: Path):
    return load_project(root, committed=True).settings


def test_committed_params_ignore_edits_of_the_working_copy(project: Path) -> None:
    (project / "params.yaml").write_text("qc:\n  sample_size: 7\n")
    assert committed_params(project).qc.sample_size == 40
    assert load_project(project, committed=True).params.qc.sample_size == 40


def test_a_run_workspace_holds_the_runs_values_and_leaves_the_checkout_alone(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    made = runs.create_run_workspace(project, _settings(project), "dag", "manual__1", {"qc.sample_size": 5})
    root = Path(made["run_dir"])
    assert root == project / ".fgclip" / "runs" / "dag" / "manual__1"
    assert made["changed"] == {"qc.sample_size": 5}
    assert yaml.safe_load((root / "params.yaml").read_text())["qc"]["sample_size"] == 5
    assert "# committed" in (root / "params.yaml").read_text()  # the committed file, edited
    assert (project / "params.yaml").read_text() == before
    assert _git(project, "status", "--porcelain") == ""
    assert runs.home_of(root) == project.resolve()
    workspace = control.run_project(root)
    assert workspace.home_root == project.resolve() and workspace.params.qc.sample_size == 5
    # a retry of the step reuses the workspace
    again = runs.create_run_workspace(project, _settings(project), "dag", "manual__1", {"qc.sample_size": 5})
    assert again["run_dir"] == made["run_dir"] and again["base_commit"] == made["base_commit"]


def test_runs_at_once_get_their_own_workspaces_and_share_one_cache(project: Path) -> None:
    settings = _settings(project)
    with ThreadPoolExecutor(max_workers=3) as pool:
        made = list(
            pool.map(
                lambda n: runs.create_run_workspace(project, settings, "dag", f"run{n}", {"qc.sample_size": n}),
                (1, 2, 3),
            )
        )
    roots = [Path(m["run_dir"]) for m in made]
    assert len(set(roots)) == 3
    for n, root in enumerate(roots, start=1):
        assert yaml.safe_load((root / "params.yaml").read_text())["qc"]["sample_size"] == n
        subprocess.run(["dvc", "repro", "-q", "make"], cwd=root, check=True, env=tool_env())
        subprocess.run(["dvc", "commit", "-q", "-f", "make"], cwd=root, check=True, env=tool_env())
    files = [root / "out" / "a" for root in roots]
    # one object in the shared cache, linked (not copied) into every workspace
    assert len({file.stat().st_ino for file in files}) == 1
    assert (project / ".dvc" / "cache" / "files" / "md5").is_dir()


def test_a_recorded_state_is_a_commit_and_a_tag_anyone_can_check_out(project: Path) -> None:
    settings = _settings(project)
    root = Path(runs.create_run_workspace(project, settings, "dag", "r", {"qc.sample_size": 3})["run_dir"])
    subprocess.run(["dvc", "repro", "-q", "make"], cwd=root, check=True, env=tool_env())
    state = runs.record_state(root, settings, "dataset ds-1", "dataset/ds-1")
    assert state["tag"] == "dataset/ds-1"
    assert _git(project, "rev-parse", "dataset/ds-1^{commit}").strip() == state["commit"]
    lock = yaml.safe_load(_git(project, "show", "dataset/ds-1:dvc.lock"))
    assert lock["stages"]["make"]["params"]["params.yaml"]["qc.sample_size"] == 3
    assert "fgclip pipeline" in _git(project, "log", "-1", "--format=%an", "dataset/ds-1")
    # the same state again keeps the tag; the checkout never moved
    assert runs.record_state(root, settings, "dataset ds-1", "dataset/ds-1")["commit"] == state["commit"]
    assert _git(project, "status", "--porcelain") == ""
    clone = project.parent / "clone"
    _git(project.parent, "clone", "-q", str(project), str(clone))
    _git(clone, "checkout", "-q", "dataset/ds-1")
    assert yaml.safe_load((clone / "params.yaml").read_text())["qc"]["sample_size"] == 3


def test_a_project_that_is_no_git_checkout_gets_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(DVC_YAML))
    (tmp_path / "params.yaml").write_text("orchestration:\n  fan_out: [count]\n  data_last_stage: count\n")
    with pytest.raises(RunError, match="not a git checkout"):
        runs.create_run_workspace(tmp_path, _settings(tmp_path), "dag", "r", {})


def test_run_keys_are_safe_folder_names() -> None:
    assert runs.run_key("fgclip_data_build", "manual__2026-01-02T03:04:05.6+00:00") == (
        "fgclip_data_build/manual__2026-01-02T03_04_05.6_00_00"
    )
    assert runs.run_key("d", "../../etc") == "d/etc"


def test_group_reports_add_up_to_the_stages_report(project: Path) -> None:
    root = Path(runs.create_run_workspace(project, _settings(project), "dag", "r", {})["run_dir"])
    workspace = control.run_project(root)
    stage = workspace.pipeline.stage("count")
    groups = [["00000", "00001"], ["00002"]]
    counts = [
        {"shards": 2, "shards_skipped": 1, "items_in": 128, "items_out": 120, "rejected_total": 8,
         "rejected": {"bad_image": 8}, "ignored": {}, "seconds": 2.0, "items_per_second": 32.0},
        {"shards": 1, "shards_skipped": 0, "items_in": 64, "items_out": 63, "rejected_total": 1,
         "rejected": {"bad_image": 1}, "ignored": {"extra": 2}, "seconds": 1.0, "items_per_second": 64.0},
    ]  # fmt: skip
    for group, count in zip(groups, counts):
        argv = stage.command(group)
        report = root / argv[argv.index("--report") + 1]
        assert report != root / "reports" / "recaption.json", "groups would overwrite the stage's report"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(count))
    merged = reports.merge_stage_report(workspace, stage, groups)
    on_disk = json.loads((root / "reports" / "recaption.json").read_text())
    assert on_disk == merged
    assert merged["shards"] == 3 and merged["items_in"] == 192 and merged["items_out"] == 183
    assert merged["rejected"] == {"bad_image": 9} and merged["ignored"] == {"extra": 2}
    assert merged["items_per_second"] == pytest.approx((32.0 * 2 + 64.0) / 3, abs=0.01)
    with pytest.raises(reports.ReportError, match="wrote no report"):
        reports.merge_stage_report(workspace, stage, [*groups, ["00009"]])


def test_a_shard_range_that_leaves_shards_out_is_refused_before_any_work(project: Path) -> None:
    root = Path(runs.create_run_workspace(project, _settings(project), "dag", "r", {})["run_dir"])
    workspace = control.run_project(root)
    manifest = root / workspace.settings.dataset_manifest
    manifest.parent.mkdir(parents=True)
    pins = {shard: {"size": 0, "etag": shard} for shard in ("00000", "00001", "00002")}
    manifest.write_text(DatasetManifest(name="d", source="shards", images="images", shards=pins).to_json())
    assert control.list_groups(workspace, 0, None) == [["00000", "00001"], ["00002"]]
    with pytest.raises(control.ControlError, match="leaves out 2 of the 3 shards"):
        control.list_groups(workspace, 1, 1)
