"""Bad image shards: RawShardReader keeps every good sample and rejects the rest with a
reason code; a stage writes those rejects and counts them."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fgclip.core.shards import RawShardReader, annotation_path, read_jsonl
from fgclip.core.stage import ShardResult, ShardStage, run_stage


def jpeg(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sample(key: str, caption: bytes = b"a photo", meta: dict[str, Any] | None = None) -> list[tuple[str, bytes]]:
    members = [(f"{key}.jpg", jpeg()), (f"{key}.txt", caption)]
    if meta is not None:
        members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


def read(tmp_path: Path, data: bytes, name: str = "00000.tar") -> tuple[list, list]:
    path = tmp_path / name
    path.write_bytes(data)
    reader = RawShardReader(path)
    samples = list(reader)
    return samples, reader.rejects


def reasons(rejects: list) -> list[tuple[str | None, str, bool]]:
    return [(r.key, r.reason, r.dropped) for r in rejects]


# (members of the bad sample, key of the reject, reason); each is put between two good samples
BAD_SAMPLES = {
    "corrupt_jpeg": ([("bad.jpg", b"\xff\xd8\xff\xe0 garbage"), ("bad.txt", b"x")], "bad", "corrupt_image"),
    "truncated_jpeg": ([("bad.jpg", jpeg(size=(64, 48))[:200]), ("bad.txt", b"x")], "bad", "corrupt_image"),
    "no_image": ([("bad.txt", b"caption only")], "bad", "missing_image"),
    "no_caption": ([("bad.jpg", jpeg())], "bad", "missing_caption"),
    "empty_caption": ([("bad.jpg", jpeg()), ("bad.txt", b" \n\t")], "bad", "empty_caption"),
    "non_utf8_caption": ([("bad.jpg", jpeg()), ("bad.txt", "café".encode("latin-1"))], "bad", "caption_not_utf8"),
    "key_with_dots": ([("bad.v2.jpg", jpeg()), ("bad.v2.txt", b"x")], "bad.v2", "dotted_key"),
    "invalid_key": ([("bad key.jpg", jpeg()), ("bad key.txt", b"x")], "bad key", "invalid_key"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_sample_is_rejected_and_neighbours_kept(tmp_path: Path, case: str) -> None:
    members, key, reason = BAD_SAMPLES[case]
    samples, rejects = read(tmp_path, tar_bytes([*sample("a"), *members, *sample("b")]))
    assert [s.key for s in samples] == ["a", "b"]
    assert reasons(rejects) == [(key, reason, True)]  # exactly one reject per bad sample
    assert rejects[0].detail and rejects[0].shard == "00000"


def test_good_samples_decode(tmp_path: Path) -> None:
    samples, rejects = read(tmp_path, tar_bytes([*sample("a", b"  two words \n", {"width": 16})]))
    assert rejects == []
    [only] = samples
    assert (only.caption, only.width, only.height, only.image_ext) == ("two words", 16, 12, "jpg")
    assert only.open_image().size == (16, 12)


def test_empty_file_and_tar_without_members(tmp_path: Path) -> None:
    samples, rejects = read(tmp_path, b"", "00000.tar")
    assert samples == [] and reasons(rejects) == [(None, "empty_shard", True)]
    samples, rejects = read(tmp_path, tar_bytes([]), "00001.tar")
    assert samples == [] and reasons(rejects) == [(None, "empty_shard", True)]


def _member_offsets(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: m for m in archive.getmembers()}


@pytest.mark.parametrize("where", ["inside_data", "inside_header", "at_member_boundary", "inside_own_member"])
def test_truncated_tar_keeps_the_samples_before_the_cut(tmp_path: Path, where: str) -> None:
    data = tar_bytes([*sample("a"), *sample("b"), *sample("c")])
    members = _member_offsets(data)
    cut = {
        "inside_data": members["b.jpg"].offset_data + 50,  # b's image is cut: a is whole
        "inside_header": members["b.jpg"].offset + 100,  # tarfile alone would end silently here
        "at_member_boundary": members["b.jpg"].offset,  # ... and here
        "inside_own_member": members["b.txt"].offset_data + 2,  # b's caption is cut: b is lost
    }[where]
    samples, rejects = read(tmp_path, data[:cut])
    assert [s.key for s in samples] == ["a"]
    found = reasons(rejects)
    assert "truncated_tar" in {reason for _, reason, _ in found}
    if where in ("inside_data", "inside_own_member"):
        assert found == [("b", "truncated_tar", True)]


def test_intact_tar_without_padding_is_not_truncated(tmp_path: Path) -> None:
    data = tar_bytes(sample("a"))
    members = _member_offsets(data)
    end = members["a.txt"].offset_data + 512 + 2 * tarfile.BLOCKSIZE  # the two end-of-archive blocks, no record padding
    samples, rejects = read(tmp_path, data[:end])
    assert [s.key for s in samples] == ["a"] and rejects == []


def test_duplicate_keys_keep_the_first_copy(tmp_path: Path) -> None:
    first = sample("a", b"first")
    samples, rejects = read(tmp_path, tar_bytes([*first, *sample("b"), *sample("a", b"second")]))
    assert [(s.key, s.caption) for s in samples] == [("a", "first"), ("b", "a photo")]
    assert reasons(rejects) == [("a", "duplicate_key", True)]


def test_unknown_member_is_ignored_and_sample_kept(tmp_path: Path) -> None:
    samples, rejects = read(tmp_path, tar_bytes([*sample("a"), ("a.xyz", b"?"), *sample("b")]))
    assert [s.key for s in samples] == ["a", "b"]
    assert reasons(rejects) == [("a", "unknown_member", False)]


def test_unknown_json_fields_are_kept(tmp_path: Path) -> None:
    meta = {"key": "a", "width": 16, "exif": {"Make": "x"}, "similarity": 0.31, "new_field": [1, None]}
    samples, rejects = read(tmp_path, tar_bytes(sample("a", meta=meta)))
    assert rejects == [] and samples[0].meta == meta


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_bad_json_is_ignored_and_sample_kept(tmp_path: Path, payload: bytes) -> None:
    samples, rejects = read(
        tmp_path, tar_bytes([("a.jpg", jpeg()), ("a.txt", b"cap"), ("a.json", payload), *sample("b")])
    )
    assert [s.key for s in samples] == ["a", "b"] and samples[0].meta == {}
    assert reasons(rejects) == [("a", "bad_metadata", False)]


def test_unsafe_member_names_are_never_extracted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "escaped.txt"
    absolute = tmp_path / "absolute.jpg"
    data = tar_bytes(
        [
            *sample("a"),
            ("../escaped.txt", b"pwned"),
            ("x/../../escaped.jpg", jpeg()),
            (str(absolute), jpeg()),
            *sample("b"),
        ]
    )
    assert str(absolute) in _member_offsets(data)  # the name really is absolute inside the tar
    samples, rejects = read(work, data)
    assert [s.key for s in samples] == ["a", "b"]
    assert [(r.reason, r.member) for r in rejects] == [
        ("unsafe_member_path", "../escaped.txt"),
        ("unsafe_member_path", "x/../../escaped.jpg"),
        ("unsafe_member_path", str(absolute)),
    ]
    assert not outside.exists() and not absolute.exists() and not (tmp_path / "escaped.jpg").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00000.tar", "work"]


# ---------------------------------------------------------------- rejects through a stage


class CaptionCopy(ShardStage):
    """The smallest real stage: the alt text as the long caption."""

    name = "caption-copy"
    record_kind = "caption_record"

    def __init__(self, images: Path) -> None:
        self.images = images

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        return {"images": self.images / f"{shard}.tar"}

    def settings(self) -> dict[str, Any]:
        return {"backend": {"name": "copy", "version": "1"}}

    def process_shard(self, shard: str) -> ShardResult:
        reader = RawShardReader(self.images / f"{shard}.tar")
        records = [{"key": s.key, "long_caption": s.caption} for s in reader]
        return ShardResult(records, reader.rejects, items_in=len(records) + sum(r.dropped for r in reader.rejects))


def test_stage_writes_reader_rejects_with_counts(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "00000.tar").write_bytes(
        tar_bytes(
            [
                *sample("a"),
                *BAD_SAMPLES["corrupt_jpeg"][0],
                *sample("b"),
                ("b.xyz", b"?"),
                ("c.txt", b"no image"),
                *sample("a", b"again"),
                ("../up.txt", b"x"),
            ]
        )
    )
    (images / "00001.tar").write_bytes(b"")
    summary = run_stage(CaptionCopy(images), ["00000", "00001"], tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert [r["key"] for r in read_jsonl(annotation_path(out, "00000"))] == ["a", "b"]
    written = read_jsonl(annotation_path(out, "00000", "rejects"))
    assert [(r["key"], r["reason"], r["dropped"]) for r in written] == [
        ("bad", "corrupt_image", True),
        ("b", "unknown_member", False),
        ("c", "missing_image", True),
        (None, "unsafe_member_path", True),
        ("a", "duplicate_key", True),
    ]
    manifest = json.loads(annotation_path(out, "00000", "manifest").read_text())
    assert manifest["counts"] == {
        "in": 6,
        "out": 2,
        "rejected": {"corrupt_image": 1, "duplicate_key": 1, "missing_image": 1, "unsafe_member_path": 1},
    }
    assert read_jsonl(annotation_path(out, "00001", "rejects"))[0]["reason"] == "empty_shard"
    counts = summary.as_dict()
    assert counts["rejected"] == {
        "corrupt_image": 1,
        "duplicate_key": 1,
        "empty_shard": 1,
        "missing_image": 1,
        "unsafe_member_path": 1,
    }
    assert counts["ignored"] == {"unknown_member": 1}
    assert (counts["items_out"], counts["rejected_total"]) == (2, 5)
    # a rerun skips both shards and still reports the same rejects
    again = run_stage(CaptionCopy(images), ["00000", "00001"], out, progress=False).as_dict()
    assert (
        again["shards_skipped"] == 2
        and again["rejected"] == counts["rejected"]
        and again["ignored"] == counts["ignored"]
    )
    assert Counter(r["reason"] for r in written) == Counter(
        {"corrupt_image": 1, "unknown_member": 1, "missing_image": 1, "duplicate_key": 1, "unsafe_member_path": 1}
    )
