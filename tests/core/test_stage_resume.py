"""Resume semantics of stage.run_stage: interrupted runs finish byte-identical to
uninterrupted ones, stale outputs are redone or removed, temp files never count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fgclip.core import stage as stage_module
from fgclip.core.shards import Reject, annotation_path, read_jsonl
from fgclip.core.stage import ShardResult, ShardStage, run_stage

SHARDS = ["00000", "00001", "00002", "00003"]


class Interrupted(RuntimeError):
    pass


class UpperCase(ShardStage):
    """Tiny stage: one caption record per input line; lines starting with '!' are rejected."""

    name = "upper-case"
    record_kind = "caption_record"

    def __init__(self, inputs: Path, *, style: str = "upper", fail_on: str | None = None) -> None:
        self.inputs = inputs
        self.style = style
        self.fail_on = fail_on
        self.processed: list[str] = []

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        return {"text": self.inputs / f"{shard}.txt"}

    def settings(self) -> dict[str, Any]:
        return {"style": self.style, "backend": {"name": "str", "version": "1"}}

    def process_shard(self, shard: str) -> ShardResult:
        if shard == self.fail_on:
            raise Interrupted(f"killed while processing {shard}")
        self.processed.append(shard)
        lines = (self.inputs / f"{shard}.txt").read_text(encoding="utf-8").splitlines()
        records, rejects = [], []
        for number, line in enumerate(lines):
            key = f"s{shard}-{number}"
            if line.startswith("!"):
                rejects.append(Reject(shard, key, "bang_line", f"line {number} starts with '!'", stage=self.name))
            else:
                records.append({"key": key, "long_caption": line.upper() if self.style == "upper" else line.title()})
        return ShardResult(records, rejects, items_in=len(lines))


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, shard in enumerate(SHARDS):
        lines = [f"shard {shard} line {n} ünïcode" for n in range(3)] + ["!bad line"] * (index % 2)
        (folder / f"{shard}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run(inputs: Path, out: Path, **options: Any) -> tuple[UpperCase, dict[str, Any]]:
    stage = UpperCase(inputs, **options)
    return stage, run_stage(stage, SHARDS, out, progress=False).as_dict()


@pytest.fixture()
def reference(tmp_path: Path, inputs: Path) -> dict[str, bytes]:
    """The outputs of one uninterrupted run."""
    run(inputs, tmp_path / "reference")
    return snapshot(tmp_path / "reference")


def test_uninterrupted_run_writes_three_files_per_shard(
    tmp_path: Path, inputs: Path, reference: dict[str, bytes]
) -> None:
    assert sorted(reference) == sorted(
        f"{s}{suffix}" for s in SHARDS for suffix in (".jsonl", ".rejects.jsonl", ".manifest.json")
    )
    manifest = json.loads(reference["00001.manifest.json"])
    assert manifest["counts"] == {"in": 4, "out": 3, "rejected": {"bang_line": 1}}


def test_process_crash_then_rerun_matches_an_uninterrupted_run(
    tmp_path: Path, inputs: Path, reference: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    stage = UpperCase(inputs, fail_on="00002")
    with pytest.raises(Interrupted):
        run_stage(stage, SHARDS, out, progress=False)
    assert stage.processed == ["00000", "00001"]
    assert not annotation_path(out, "00002").exists()
    resumed, counts = run(inputs, out)
    assert resumed.processed == ["00002", "00003"]
    assert counts["shards_skipped"] == 2 and counts["shards"] == 4
    assert snapshot(out) == reference
    keys = [r["key"] for s in SHARDS for r in read_jsonl(annotation_path(out, s))]
    assert len(keys) == len(set(keys)) == 12
    assert counts["items_out"] == 12 and counts["rejected"] == {"bang_line": 2}  # skipped shards' rejects still count


def test_crash_between_records_and_manifest_redoes_the_shard(
    tmp_path: Path, inputs: Path, reference: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_write = stage_module.write_text_atomic

    def dies_at_third_manifest(path: Any, text: str) -> None:
        if Path(path).name == "00002.manifest.json":
            raise Interrupted("killed before the manifest")
        real_write(path, text)

    monkeypatch.setattr(stage_module, "write_text_atomic", dies_at_third_manifest)
    with pytest.raises(Interrupted):
        run(inputs, out)
    assert annotation_path(out, "00002").exists() and not annotation_path(out, "00002", "manifest").exists()
    monkeypatch.setattr(stage_module, "write_text_atomic", real_write)
    resumed, counts = run(inputs, out)
    assert resumed.processed == ["00002", "00003"] and counts["shards_skipped"] == 2
    assert snapshot(out) == reference


def test_changed_settings_redo_every_shard(tmp_path: Path, inputs: Path, reference: dict[str, bytes]) -> None:
    out = tmp_path / "out"
    run(inputs, out)
    changed, counts = run(inputs, out, style="title")
    assert changed.processed == SHARDS and counts["shards_skipped"] == 0
    after = snapshot(out)
    assert all(after[f"{s}.manifest.json"] != reference[f"{s}.manifest.json"] for s in SHARDS)
    assert read_jsonl(annotation_path(out, "00000"))[0]["long_caption"] == "Shard 00000 Line 0 Ünïcode"
    again, counts = run(inputs, out, style="title")
    assert again.processed == [] and counts["shards_skipped"] == 4


def test_changed_input_redoes_only_its_shard(tmp_path: Path, inputs: Path) -> None:
    out = tmp_path / "out"
    run(inputs, out)
    (inputs / "00003.txt").write_text("new line\n", encoding="utf-8")
    redo, counts = run(inputs, out)
    assert redo.processed == ["00003"] and counts["shards_skipped"] == 3
    assert [r["long_caption"] for r in read_jsonl(annotation_path(out, "00003"))] == ["NEW LINE"]


@pytest.mark.parametrize("damage", ["records_edited", "rejects_edited", "records_deleted", "manifest_garbled"])
def test_corrupted_output_redoes_that_shard(
    tmp_path: Path, inputs: Path, reference: dict[str, bytes], damage: str
) -> None:
    out = tmp_path / "out"
    run(inputs, out)
    target = {
        "records_edited": annotation_path(out, "00001"),
        "rejects_edited": annotation_path(out, "00001", "rejects"),
        "records_deleted": annotation_path(out, "00001"),
        "manifest_garbled": annotation_path(out, "00001", "manifest"),
    }[damage]
    if damage == "records_deleted":
        target.unlink()
    elif damage == "manifest_garbled":
        target.write_bytes(target.read_bytes()[:40])
    else:
        target.write_bytes(target.read_bytes() + b'{"key": "s00001-0", "long_caption": "DUPLICATE"}\n')
    redo, counts = run(inputs, out)
    assert redo.processed == ["00001"] and counts["shards_skipped"] == 3
    assert snapshot(out) == reference


def test_removed_input_shard_has_its_outputs_removed(tmp_path: Path, inputs: Path) -> None:
    out = tmp_path / "out"
    run(inputs, out)
    (inputs / "00003.txt").unlink()
    stage = UpperCase(inputs)
    counts = run_stage(stage, SHARDS[:3], out, progress=False).as_dict()
    assert stage.processed == [] and counts["shards"] == 3 and counts["shards_skipped"] == 3
    assert not any(name.startswith("00003") for name in snapshot(out))
    assert counts["items_out"] == 9


def test_leftover_temp_files_are_never_outputs(tmp_path: Path, inputs: Path, reference: dict[str, bytes]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # what a writer killed mid-rename leaves: temp files beside the targets, never renamed
    fake_records = b'{"key": "s00002-0", "long_caption": "HALF"}\n'
    leftovers = {
        ".00002.jsonl.k1ll3d.tmp": fake_records,
        ".00002.manifest.json.k1ll3d.tmp": reference["00002.manifest.json"],
        ".00009.manifest.json.zz.tmp": reference["00002.manifest.json"],
    }
    for name, data in leftovers.items():
        (out / name).write_bytes(data)
    stage, counts = run(inputs, out)
    assert stage.processed == SHARDS and counts["shards_skipped"] == 0 and counts["items_out"] == 12
    after = snapshot(out)
    assert {name: after[name] for name in reference} == reference
    # left alone (another worker may own them) and still not taken for a finished shard
    assert {name: after[name] for name in leftovers} == leftovers
    again, counts = run(inputs, out)
    assert again.processed == [] and counts["shards_skipped"] == 4 and counts["shards"] == 4


def test_fan_out_groups_share_one_output_folder(tmp_path: Path, inputs: Path, reference: dict[str, bytes]) -> None:
    """Shard groups run one by one (as mapped Airflow tasks do) without pruning each
    other's outputs, and together equal one run over every shard."""
    out = tmp_path / "out"
    for group in (SHARDS[:2], SHARDS[2:]):
        run_stage(UpperCase(inputs), group, out, progress=False, prune=False)
    assert snapshot(out) == reference
