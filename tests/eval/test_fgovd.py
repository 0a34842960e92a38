"""The FG-OVD benchmark reader: the published files, bad lines, image resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fgclip.eval.fgovd import FGOVD_FILES, load_fgovd, read_fgovd_file, resolve_images

REPO_ROOT = Path(__file__).resolve().parents[2]
FGOVD_DIR = Path(os.environ.get("FGCLIP_FGOVD_DIR", REPO_ROOT.parent / "shared" / "benchmarks" / "fgovd"))
EXPECTED_LINES = {"hard": 3545, "medium": 2968, "easy": 1299, "trivial": 3545}


def good_line(**changes: object) -> dict:
    record = {
        "img_path": "val2017/000000000139.jpg",
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "pos_expression": ["A red wooden chair."],
        "neg_expression": [f"A blue wooden chair {i}." for i in range(10)],
        "width": 200,
        "height": 100,
        "test_type": "1_attributes",
    }
    record.update(changes)
    return record


@pytest.mark.skipif(
    not FGOVD_DIR.is_dir(), reason=f"FG-OVD benchmark folder {FGOVD_DIR} does not exist (set FGCLIP_FGOVD_DIR)"
)
def test_reads_the_published_files_completely_with_valid_boxes() -> None:
    splits = load_fgovd(FGOVD_DIR)
    assert set(splits) == set(FGOVD_FILES)
    for difficulty, split in splits.items():
        assert split.lines == EXPECTED_LINES[difficulty]
        assert len(split.items) == EXPECTED_LINES[difficulty], split.reject_counts()
        assert split.rejects == []
        for item in split.items:
            x1, y1, x2, y2 = item.box
            assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0
            assert item.image_name.endswith(".jpg") and item.positive
            assert 1 <= len(item.negatives) <= 10 and item.candidates[0] == item.positive
    # The difficulty files differ in what their negatives change, not in their boxes.
    assert splits["hard"].items[0].test_type == "1_attributes"
    assert splits["medium"].items[0].test_type == "2_attributes"
    assert splits["easy"].items[0].test_type == "3_attributes"


def test_converts_pixel_xywh_to_normalised_xyxy_and_clips(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    lines = [good_line(), good_line(bbox=[190.0, -10.0, 30.0, 40.0])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    split = read_fgovd_file(path, "hard")
    assert [item.box for item in split.items] == [
        pytest.approx((0.05, 0.2, 0.2, 0.6)),
        pytest.approx((0.95, 0.0, 1.0, 0.3)),
    ]
    assert split.clipped_boxes == 1
    assert split.items[0].image_name == "000000000139.jpg" and split.items[0].line == 1


def test_bad_lines_are_counted_rejects_not_crashes(tmp_path: Path) -> None:
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps(good_line(bbox=[1, 2, 0, 5])),
        json.dumps(good_line(bbox=[1, 2, "3", 5])),
        json.dumps(good_line(bbox=[500, 500, 10, 10])),
        json.dumps(good_line(width=0)),
        json.dumps(good_line(pos_expression=[])),
        json.dumps(good_line(neg_expression=["fine", ""])),
        json.dumps(good_line(img_path=None)),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text(
        "\n".join([json.dumps(good_line()), *bad, json.dumps(good_line(neg_expression=["only one"]))]) + "\n"
    )
    split = read_fgovd_file(path, "medium")
    assert split.lines == len(bad) + 2
    assert [item.line for item in split.items] == [1, len(bad) + 2]
    assert len(split.items[1].candidates) == 2  # fewer negatives are kept (the published files have some)
    assert split.reject_counts() == {
        "bad_bbox": 2,
        "bad_expression": 2,
        "bad_image_path": 1,
        "bad_image_size": 1,
        "bad_json": 2,
        "box_outside_image": 1,
    }
    assert all(r.stage == "fgovd" and r.key.startswith("line") and r.detail for r in split.rejects)


def test_missing_difficulty_file_and_unknown_difficulty_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="h_attributes_llava.jsonl"):
        load_fgovd(tmp_path, ["hard"])
    with pytest.raises(ValueError, match="unknown FG-OVD difficulties"):
        load_fgovd(tmp_path, ["impossible"])


def test_images_resolve_by_file_name_and_missing_ones_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    lines = [good_line(), good_line(img_path="val2017/000000000285.jpg"), good_line(img_path="other/000000000632.jpg")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = tmp_path / "coco" / "val2017"
    images.mkdir(parents=True)
    (images / "000000000139.jpg").write_bytes(b"x")
    (images / "000000000632.jpg").write_bytes(b"x")
    resolution = resolve_images(read_fgovd_file(path, "easy").items, tmp_path / "coco")
    assert set(resolution.found) == {"000000000139.jpg", "000000000632.jpg"}
    assert resolution.missing == ["000000000285.jpg"]
    assert resolution.message() == f"1 of 3 images not found under {tmp_path / 'coco'}"
