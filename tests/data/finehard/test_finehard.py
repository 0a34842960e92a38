"""FineHARD import/export: exact round trip, bad records rejected, join counts, CLI."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fgclip.data.finehard.cli import add_arguments, command
from fgclip.data.finehard.exporter import export_finehard
from fgclip.data.finehard.importer import import_finehard
from fgclip.data.finehard.records import KINDS
from fgclip.config import load_params
from fgclip.core.join import join_shard
from fgclip.core.schema import validate
from fgclip.core.shards import RawShardReader, annotation_path, list_shards, read_jsonl, write_jsonl_atomic


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def negs(prefix: str, names: list[str] | None = None) -> dict[str, str]:
    names = names if names is not None else [str(i) for i in range(10)]
    return {name: f"{prefix} {name}" for name in names}


def region(bbox: list, short: str = "a red cube", **rest: object) -> dict:
    return {"bbox": bbox, "short_expr": short, "long_expr": f"{short} on the left of the picture", **rest}


# Every case the round trip has to survive; records are images/<i>.jpg.
GOOD = [
    {"f_path": "img/0.jpg", "caption": "A red cube and a blue ball on a table.", "short_caption": "cube and ball",
     "bbox_info": [region([0.1, 0.2, 0.5, 0.6, 0.91], flag_short_neg=1, short_expr_negs=negs("a green cube")),
                   region([0.5, 0.1, 0.9, 0.4, 0.45], "a blue ball", flag_short_neg=1, short_expr_negs=negs("a pink ball"))]},
    # 4-value bbox; no negatives three ways: empty dict, dict absent, flag and dict absent
    {"f_path": "img/1.jpg", "caption": "Three plain boxes.", "short_caption": "boxes",
     "bbox_info": [region([0, 0, 1, 1], "a box", flag_short_neg=0, short_expr_negs={}),
                   region([0.1, 0.1, 0.2, 0.2], "a small box", flag_short_neg=0),
                   region([0.3, 0.3, 0.4, 0.4, 0.5], "a tiny box")]},
    # dict keys not "0".."9", out of order, fewer than 10
    {"f_path": "img/2.jpg", "caption": "A dog.", "short_caption": "dog",
     "bbox_info": [region([0.2, 0.2, 0.8, 0.9, 1], "a dog", flag_short_neg=1, short_expr_negs=negs("a cat", ["a", "b", "c"])),
                   region([0.2, 0.2, 0.3, 0.3, 0], "a collar", flag_short_neg=1, short_expr_negs=negs("a leash", ["1", "0"]))]},
    # unknown top-level and region fields, including names the layout itself uses
    {"f_path": "img/3.jpg", "caption": "Un café crème — naïve 🐕 汉字.", "short_caption": "café 🐕",
     "bbox_info": [region([0.1, 0.1, 0.6, 0.6, 0.7], "un chien brun 🐕", flag_short_neg=1, short_expr_negs=negs("un chat noir 🐈"),
                          label="dog", extra={"order": [1]}, fields=None, order=3)],
     "width": 640, "key": "not-the-sample-key", "source": {"nested": [1, 2.5, None, True]}, "finehard": "x"},
    # floats that do not survive a float32 or a rounding, ints in a bbox, non-canonical key order
    {"bbox_info": [{"short_expr": "a wedge", "bbox": [0.1 + 0.2, 1e-07, 0.7000000000000001, 1, 0.1 + 0.2],
                    "long_expr": "a wedge at the top", "short_expr_negs": negs("a slab"), "flag_short_neg": 1}],
     "short_caption": "wedge", "f_path": "img/4.jpg", "caption": "A wedge."},
    # flags that disagree with the negatives, a bool flag, a 5th value that is no score
    {"f_path": "img/5.jpg", "caption": "Odd flags.", "short_caption": "  padded alt text ",
     "bbox_info": [region([0.1, 0.1, 0.9, 0.9, 37.5], "a bowl", flag_short_neg=0, short_expr_negs=negs("a cup")),
                   region([0.1, 0.1, 0.5, 0.5, 0.2], "a spoon", flag_short_neg=True, short_expr_negs=negs("a fork")),
                   region([0.1, 0.1, 0.4, 0.5, 0.2], "a knife", short_expr_negs=negs("a saw")),
                   region([0.1, 0.1, 0.3, 0.5, 0.2], "a plate", flag_short_neg=1)]},
    {"f_path": "img/6.jpg", "caption": "Nothing boxed.", "short_caption": "empty", "bbox_info": []},
]

# (record, reason) pairs that must be rejected without stopping the import
BAD = [
    ({"f_path": "img/missing.jpg", "caption": "c", "short_caption": "s", "bbox_info": []}, "missing_image"),
    ({"f_path": "img/corrupt.jpg", "caption": "c", "short_caption": "s", "bbox_info": []}, "corrupt_image"),
    ({"f_path": "img/png.jpg", "caption": "c", "short_caption": "s", "bbox_info": []}, "unsupported_image_format"),
    ({"f_path": "../outside.jpg", "caption": "c", "short_caption": "s", "bbox_info": []}, "unsafe_path"),
    ({"f_path": "img/0.jpg", "caption": "c", "short_caption": "s", "bbox_info": [region([0.1, 0.1, 1.2, 0.5])]}, "bbox_out_of_range"),
    ({"f_path": "img/0.jpg", "caption": "c", "short_caption": "s", "bbox_info": [region([0.5, 0.1, 0.5, 0.5])]}, "bbox_degenerate"),
    ({"f_path": "img/0.jpg", "caption": "c", "short_caption": "s", "bbox_info": [region([0.1, 0.1, 0.5])]}, "bad_bbox"),
    ({"f_path": "img/0.jpg", "short_caption": "s", "bbox_info": []}, "missing_field"),
    ({"f_path": "img/0.jpg", "caption": "  ", "short_caption": "s", "bbox_info": []}, "empty_text"),
    ({"f_path": "img/0.jpg", "caption": "c", "short_caption": "s", "bbox_info": [region([0.1, 0.1, 0.5, 0.5], short_expr_negs=["x"])]}, "bad_negatives"),
    ([1, 2, 3], "not_an_object"),
]


def make_images(root: Path, count: int) -> Path:
    (root / "img").mkdir(parents=True)
    for index in range(count):
        (root / "img" / f"{index}.jpg").write_bytes(jpeg_bytes((index * 30 % 256, 80, 160)))
    (root / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    (root / "img" / "png.jpg").write_bytes(png.getvalue())
    return root


def write_finehard(path: Path, records: list, fmt: str) -> Path:
    if fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def load_finehard(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_exact(got: list, expected: list) -> None:
    assert got == expected
    # == ignores key order and 1 == 1.0 == True: the serialisation does not
    assert [json.dumps(r, ensure_ascii=False) for r in got] == [json.dumps(r, ensure_ascii=False) for r in expected]


def folders(out: Path) -> dict[str, Path]:
    return {name: out / name for name in ("images", "captions", "regions", "negatives")}


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    make_images(tmp_path / "src", len(GOOD))
    source = write_finehard(tmp_path / f"finehard.{fmt}", GOOD, fmt)
    summary = import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=3, progress=False)
    assert summary.formats == [fmt] and summary.imported == len(GOOD) and not summary.rejected
    assert summary.shards == ["00000", "00001", "00002"]
    f = folders(tmp_path / "out")
    exported = tmp_path / f"exported.{fmt}"
    counts = export_finehard(f["images"], f["captions"], f["regions"], f["negatives"], exported, fmt=fmt, progress=False)
    assert counts["joined"] == len(GOOD) and counts["missing_captions"] == 0 and counts["missing_negatives"] == 0
    assert exported.read_text(encoding="utf-8").lstrip().startswith("[") == (fmt == "json")
    assert_exact(load_finehard(exported), GOOD)


def test_import_writes_contract_records_and_stable_keys(tmp_path: Path) -> None:
    make_images(tmp_path / "src", len(GOOD))
    source = write_finehard(tmp_path / "finehard.jsonl", GOOD, "jsonl")
    import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=4, key_prefix="fh", progress=False)
    f = folders(tmp_path / "out")
    samples = [s for shard in list_shards(f["images"]) for s in RawShardReader(f["images"] / f"{shard}.tar")]
    assert [s.key for s in samples] == [f"fh{i:09d}" for i in range(len(GOOD))]
    assert samples[0].caption == "cube and ball" and samples[0].meta["f_path"] == "img/0.jpg"
    assert samples[0].image_bytes == (tmp_path / "src/img/0.jpg").read_bytes()  # copied, never re-encoded
    assert (samples[0].width, samples[0].height) == (12, 8)
    assert samples[3].meta["finehard"]["fields"] == {"width": 640, "key": "not-the-sample-key",
                                                     "source": {"nested": [1, 2.5, None, True]}, "finehard": "x"}
    for kind, record_kind in KINDS.items():
        for shard in ("00000", "00001"):
            for record in read_jsonl(annotation_path(f[kind], shard)):
                validate(record_kind, record)
            manifest = json.loads(annotation_path(f[kind], shard, "manifest").read_text())
            validate("manifest", manifest)
            assert manifest["stage"] == f"finehard-import-{kind}"
    regions = {r["key"]: r for r in read_jsonl(annotation_path(f["regions"], "00000"))}
    assert regions["fh000000000"]["regions"][0]["score"] == 0.91
    assert regions["fh000000001"]["regions"][0]["extra"]["bbox"] == [0, 0, 1, 1]  # no 5th value: written back as 4
    negatives = {r["key"]: r for r in read_jsonl(annotation_path(f["negatives"], "00000"))}
    assert negatives["fh000000002"]["regions"][0] == {"short_expr_negs": ["a cat a", "a cat b", "a cat c"], "neg_keys": ["a", "b", "c"]}
    assert negatives["fh000000000"]["regions"][0] == {"short_expr_negs": [f"a green cube {i}" for i in range(10)]}


def test_bad_records_are_rejected_and_the_import_goes_on(tmp_path: Path) -> None:
    make_images(tmp_path / "src", len(GOOD))
    records = [GOOD[0], *[bad for bad, _ in BAD], GOOD[1]]
    source = tmp_path / "finehard.jsonl"
    write_finehard(source, records, "jsonl")
    with open(source, "a", encoding="utf-8") as handle:
        handle.write('{"f_path": "img/2.jpg", "caption": \n')  # a broken line
        handle.write(json.dumps(GOOD[2]) + "\n")
        handle.write('{"f_path": "img/2.jpg", "caption": "\\ud800", "short_caption": "s", "bbox_info": []}\n')  # lone surrogate
    with open(source, "ab") as handle:
        handle.write(b'{"f_path": "img/2.jpg", "caption": "caf\xe9", "short_caption": "s", "bbox_info": []}\n')  # latin-1
    summary = import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=5, progress=False)
    expected_reasons = Counter(reason for _, reason in BAD) + Counter({"bad_json": 1, "bad_text": 2})
    assert summary.rejected == expected_reasons
    assert summary.records == len(records) + 4 and summary.imported == 3
    f = folders(tmp_path / "out")
    rejects = [r for shard in summary.shards for r in read_jsonl(annotation_path(f["captions"], shard, "rejects"))]
    assert Counter(r["reason"] for r in rejects) == expected_reasons
    assert all(r["dropped"] and r["stage"] == "finehard-import" and r["detail"] for r in rejects)
    # keys are record numbers: the broken line is record 13 and the record after it 14
    assert {r["key"] for r in rejects if r["reason"] == "bad_json"} == {"fh000000013"}
    assert summary.stages["captions"]["rejected"] == dict(sorted(expected_reasons.items()))
    assert not (tmp_path / "outside.jpg").exists()
    exported = tmp_path / "exported.jsonl"
    export_finehard(f["images"], f["captions"], f["regions"], f["negatives"], exported, progress=False)
    assert_exact(load_finehard(exported), [GOOD[0], GOOD[1], GOOD[2]])


def test_reimport_skips_finished_annotation_shards_and_is_byte_identical(tmp_path: Path) -> None:
    make_images(tmp_path / "src", len(GOOD))
    source = write_finehard(tmp_path / "finehard.json", GOOD, "json")
    first = import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=3, progress=False)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
    second = import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=3, progress=False)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
    assert before == after
    assert first.stages["regions"]["shards_skipped"] == 0
    assert all(second.stages[kind]["shards_skipped"] == 3 for kind in KINDS)
    # a smaller input leaves no stale shards behind
    write_finehard(source, GOOD[:2], "json")
    import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=3, progress=False)
    for name in ("images", "captions", "regions", "negatives"):
        suffix = ".tar" if name == "images" else ".jsonl"
        assert list_shards(tmp_path / "out" / name, suffix) == ["00000"]


def test_join_tolerates_samples_missing_from_later_stages(tmp_path: Path) -> None:
    make_images(tmp_path / "src", len(GOOD))
    source = write_finehard(tmp_path / "finehard.jsonl", GOOD[:3], "jsonl")
    import_finehard([source], tmp_path / "src", tmp_path / "out", shard_size=10, progress=False)
    f = folders(tmp_path / "out")
    captions = read_jsonl(annotation_path(f["captions"], "00000"))
    write_jsonl_atomic(annotation_path(f["captions"], "00000"), [*captions[1:], {"key": "ghost", "long_caption": "x"}])
    regions = read_jsonl(annotation_path(f["regions"], "00000"))
    write_jsonl_atomic(annotation_path(f["regions"], "00000"), regions[:2])  # fh000000002 has no regions
    negatives = read_jsonl(annotation_path(f["negatives"], "00000"))
    negatives[1]["regions"] = negatives[1]["regions"][:1]  # fh000000001: 1 entry for 3 regions
    write_jsonl_atomic(annotation_path(f["negatives"], "00000"), negatives)
    counts: Counter = Counter()
    joined = {sample.key: record for sample, record in join_shard(f["images"], f["captions"], f["regions"], f["negatives"], "00000", counts=counts)}
    assert list(joined) == ["fh000000001", "fh000000002"]
    assert counts == Counter({"joined": 2, "missing_captions": 1, "missing_regions": 1, "misaligned_negatives": 1, "orphan_captions": 1})
    assert joined["fh000000001"]["key"] == "fh000000001"
    assert len(joined["fh000000001"]["bbox_info"]) == 3
    assert not any(r.get("short_expr_negs") for r in joined["fh000000001"]["bbox_info"])
    assert joined["fh000000002"]["bbox_info"] == []
    # stage 1 joins captions alone; a missing stage file counts every sample as missing
    counts = Counter()
    records = [r for _, r in join_shard(f["images"], f["captions"], None, tmp_path / "nowhere", "00000", counts=counts)]
    assert len(records) == 2 and counts["missing_negatives"] == 0 and counts["missing_regions"] == 0


def test_pipeline_records_export_in_finehard_shape(tmp_path: Path) -> None:
    from fgclip.core.shards import ShardSample, write_image_shard

    images = tmp_path / "images"
    write_image_shard(images, "00007", [ShardSample("k1", jpeg_bytes((1, 2, 3)), "alt text", {"width": 12, "height": 8})])
    write_jsonl_atomic(annotation_path(tmp_path / "captions", "00007"), [{"key": "k1", "long_caption": "long"}])
    write_jsonl_atomic(annotation_path(tmp_path / "regions", "00007"), [{"key": "k1", "width": 12, "height": 8, "regions": [
        {"bbox": [0.1, 0.2, 0.3, 0.4], "score": 0.8, "short_expr": "a", "long_expr": "a b"}]}])
    write_jsonl_atomic(annotation_path(tmp_path / "negatives", "00007"), [{"key": "k1", "regions": [{"short_expr_negs": ["x", "y"]}]}])
    out = tmp_path / "out.json"
    export_finehard(images, tmp_path / "captions", tmp_path / "regions", tmp_path / "negatives", out, progress=False)
    [record] = json.loads(out.read_text())
    validate("finehard_record", record)
    assert record == {"f_path": "00007/k1.jpg", "caption": "long", "short_caption": "alt text", "bbox_info": [
        {"bbox": [0.1, 0.2, 0.3, 0.4, 0.8], "short_expr": "a", "long_expr": "a b", "flag_short_neg": 1,
         "short_expr_negs": {"0": "x", "1": "y"}}]}


def test_cli_import_then_export(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    params = load_params(None, {"tracking.enabled": False})
    make_images(tmp_path / "src", 2)
    source = write_finehard(tmp_path / "in.json", GOOD[:2], "json")
    out = tmp_path / "out"
    args = parser.parse_args(["import", "--annotations", str(source), "--image-root", str(tmp_path / "src"),
                              "--out", str(out), "--shard-size", "1", "--report", str(tmp_path / "import.json")])
    args.no_progress = True
    assert command(args, params) == 0
    assert json.loads((tmp_path / "import.json").read_text())["imported"] == 2
    args = parser.parse_args(["export", "--images", str(out / "images"), "--captions", str(out / "captions"),
                              "--regions", str(out / "regions"), "--negatives", str(out / "negatives"),
                              "--out", str(tmp_path / "back.txt"), "--format", "json"])
    args.no_progress, args.report = True, None
    assert command(args, params) == 0
    assert_exact(json.loads((tmp_path / "back.txt").read_text()), GOOD[:2])
    # a user error is one clear ComponentError, not a traceback
    from fgclip.cli import ComponentError

    args = parser.parse_args(["import", "--annotations", str(tmp_path / "none.json"), "--image-root", str(tmp_path),
                              "--out", str(out), "--shard-size", "1"])
    args.no_progress, args.report = True, None
    with pytest.raises(ComponentError, match="none.json"):
        command(args, params)
