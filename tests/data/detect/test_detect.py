"""detect: the core selection (threshold, clipping, size filters, NMS, cap), the demo
teacher's grounding, and the stage over a tiny image shard."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fgclip.core import boxes
from fgclip.data.detect.cli import command
from fgclip.data.detect.interface import build_detector
from fgclip.core import schema
from fgclip.config import load_params
from fgclip.data.detect.config import DetectConfig
from fgclip.demo.config import DemoDetectTeacher
from fgclip.data.detect.backends.demo import DemoTeacherDetector
from fgclip.data.detect.interface import Candidate, DetectContext, Detector, DetectorError
from fgclip.data.detect.selection import select_regions
from fgclip.data.detect.stage import DetectStage
from fgclip.demo.detector import ground
from fgclip.data.detect.expressions import Expression
from fgclip.core.shards import RawSample, ShardSample, annotation_path, read_jsonl, write_image_shard, write_jsonl_atomic
from fgclip.core.stage import run_stage

W, H = 320, 240
CIRCLE = Expression("large red striped circle", "large red striped circle on the left")
STAR = Expression("small blue dotted star", "small blue dotted star near the top right corner")


def config(**overrides: Any) -> DetectConfig:
    return DetectConfig(**overrides)


# ---------------------------------------------------------------- core selection

def test_threshold_keeps_passing_scores_only():
    regions, ignored = select_regions([CIRCLE], [[Candidate((10, 10, 60, 60), 0.39), Candidate((100, 100, 150, 150), 0.4)]],
                                      W, H, config(min_confidence=0.4))
    assert [r["score"] for r in regions] == [0.4]
    assert [reason for reason, _ in ignored] == ["low_confidence"]


def test_invalid_scores_are_ignored_not_written():
    _, ignored = select_regions([CIRCLE], [[Candidate((10, 10, 60, 60), float("nan")), Candidate((10, 10, 60, 60), 1.5)]],
                                W, H, config())
    assert [reason for reason, _ in ignored] == ["invalid_score", "invalid_score"]


def test_boxes_are_clipped_and_normalised():
    regions, _ = select_regions([CIRCLE], [[Candidate((-20, 200, 100, 300), 0.9)]], W, H, config())
    assert regions[0]["bbox"] == pytest.approx([0.0, 200 / H, 100 / W, 1.0])
    assert schema.problems("region", regions[0]) == []


def test_degenerate_outside_and_tiny_boxes_are_dropped_with_reasons():
    candidates = [Candidate((50, 50, 40, 80), 0.9),          # inverted
                  Candidate((400, 10, 450, 60), 0.9),        # right of the image
                  Candidate((10, 10, 12, 80), 0.9),          # 2 px wide
                  Candidate((10, 10, 14, 14), 0.9)]          # 16 px^2 of 76800: below the area fraction
    regions, ignored = select_regions([CIRCLE], [candidates], W, H, config(min_box_side_px=4, min_box_area_fraction=0.0005))
    assert regions == []
    assert [reason for reason, _ in ignored] == ["box_degenerate", "box_outside_image", "box_too_small", "box_too_small"]


def test_nms_is_class_agnostic_across_expressions():
    # the same object boxed for two expressions: one region survives, the better one
    candidates = [[Candidate((10, 10, 100, 100), 0.7)], [Candidate((12, 11, 101, 99), 0.8), Candidate((200, 20, 260, 80), 0.6)]]
    regions, ignored = select_regions([CIRCLE, STAR], candidates, W, H, config(nms_iou=0.5))
    assert [(r["short_expr"], r["score"]) for r in regions] == [("small blue dotted star", 0.8), ("small blue dotted star", 0.6)]
    assert [reason for reason, _ in ignored] == ["nms_suppressed"]


def test_cap_keeps_the_best_regions_in_score_order():
    candidates = [[Candidate((i * 30, 0, i * 30 + 25, 25), 0.5 + i / 100) for i in range(6)]]
    regions, ignored = select_regions([CIRCLE], candidates, W, H, config(max_regions=4))
    assert [r["score"] for r in regions] == [0.55, 0.54, 0.53, 0.52]
    assert [reason for reason, _ in ignored] == ["over_max_regions", "over_max_regions"]
    assert regions[0]["long_expr"] == CIRCLE.long_expr


def test_backend_returning_wrong_number_of_lists_is_an_error():
    with pytest.raises(DetectorError):
        select_regions([CIRCLE, STAR], [[]], W, H, config())


# ---------------------------------------------------------------- demo teacher grounding

OBJECTS = [
    {"id": 0, "shape": "circle", "colour": "red", "pattern": "striped", "size": "large", "bbox": [0.05, 0.3, 0.35, 0.7], "position": "left"},
    {"id": 1, "shape": "star", "colour": "blue", "pattern": "dotted", "size": "small", "bbox": [0.75, 0.05, 0.9, 0.25], "position": "top right"},
    {"id": 2, "shape": "square", "colour": "green", "pattern": "solid", "size": "small", "bbox": [0.45, 0.75, 0.6, 0.95], "position": "bottom"},
    {"id": 3, "shape": "square", "colour": "yellow", "pattern": "checkered", "size": "large", "bbox": [0.62, 0.35, 0.95, 0.7], "position": "right"},
    {"id": 4, "shape": "circle", "colour": "red", "pattern": "striped", "size": "large", "bbox": [0.4, 0.05, 0.6, 0.3], "position": "top"},
]


def grounded(expression: Expression) -> dict[str, Any] | None:
    return ground(expression.short_expr, expression.long_expr, OBJECTS)


def test_ground_by_shape_attributes_then_position():
    assert grounded(Expression("green square", "green square"))["id"] == 2
    assert grounded(Expression("large checkered square", "large checkered square"))["id"] == 3
    # two identical circles: position words decide
    assert grounded(CIRCLE)["id"] == 0
    assert grounded(Expression("large red striped circle", "large red striped circle at the top"))["id"] == 4
    # location words of a relation's object do not count for the subject
    # ("top" would pick circle 4; inside a relation phrase it counts for nothing, so the first listed wins)
    assert grounded(Expression("large red striped circle", "large red striped circle left of the top star"))["id"] == 0
    assert grounded(Expression("large red striped circle", "large red striped circle left of the star at the top"))["id"] == 4
    assert grounded(Expression("blue hexagon", "blue hexagon")) is None


# ---------------------------------------------------------------- the stage over a tiny shard

def jpeg(width: int = W, height: int = H) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


CAPTION = ("On the left there is a large red striped circle. A small blue dotted star sits near the top right "
           "corner, above the green square. At the bottom there is a small green square. A large yellow "
           "checkered square is on the right, and a large red striped circle sits at the top.")


def make_world(tmp_path, captions: dict[str, str], truth_objects: dict[str, list[dict[str, Any]]] | None = None,
               extra_images: Sequence[str] = ()):
    images, caps, truth = tmp_path / "images", tmp_path / "captions", tmp_path / "truth"
    keys = list(captions) + list(extra_images)
    write_image_shard(images, "00000", [ShardSample(k, jpeg(), "alt text", {"width": W, "height": H}) for k in keys])
    write_jsonl_atomic(annotation_path(caps, "00000"), [{"key": k, "long_caption": c} for k, c in captions.items()])
    objects = truth_objects or {}
    write_jsonl_atomic(annotation_path(truth, "00000"),
                       [{"key": k, "width": W, "height": H, "objects": objects.get(k, OBJECTS), "relations": []} for k in keys])
    return images, caps, truth


def error_free() -> DetectConfig:
    return DetectConfig(demo=DemoDetectTeacher(jitter=0.0, miss_rate=0.0, false_positive_rate=0.0, duplicate_rate=1.0))


def test_demo_teacher_error_free_finds_every_truth_object(tmp_path):
    images, caps, truth = make_world(tmp_path, {"k0": CAPTION})
    summary = run_stage(DetectStage(images, caps, truth, error_free(), seed=0), ["00000"], tmp_path / "out", progress=False)
    [record] = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    schema.validate("regions_record", record)
    assert len(record["regions"]) == len(OBJECTS)
    for obj in OBJECTS:
        best = max(boxes.iou(obj["bbox"], r["bbox"]) for r in record["regions"])
        assert best > 0.7, obj
    # the noise the teacher adds really went through the threshold and NMS
    assert summary.ignored["low_confidence"] == len(OBJECTS) * DemoDetectTeacher().sub_threshold_candidates
    assert summary.ignored["nms_suppressed"] >= len(OBJECTS)


def test_demo_teacher_with_default_jitter_stays_close(tmp_path):
    images, caps, truth = make_world(tmp_path, {f"k{i}": CAPTION for i in range(4)})
    cfg = DetectConfig(demo=DemoDetectTeacher(miss_rate=0.0, false_positive_rate=0.0))
    run_stage(DetectStage(images, caps, truth, cfg, seed=1), ["00000"], tmp_path / "out", progress=False)
    ious = [max(boxes.iou(o["bbox"], r["bbox"]) for r in rec["regions"])
            for rec in read_jsonl(annotation_path(tmp_path / "out", "00000")) for o in OBJECTS]
    assert min(ious) > 0.7 and sum(ious) / len(ious) > 0.85


def test_demo_teacher_misses_and_false_positives(tmp_path):
    images, caps, truth = make_world(tmp_path, {"k0": CAPTION})
    missing = DetectConfig(demo=DemoDetectTeacher(miss_rate=1.0, false_positive_rate=0.0))
    summary = run_stage(DetectStage(images, caps, truth, missing, seed=0), ["00000"], tmp_path / "miss", progress=False)
    [record] = read_jsonl(annotation_path(tmp_path / "miss", "00000"))
    assert record["regions"] == [] and summary.ignored["no_regions"] == 1 and summary.items_out == 1
    extra = DetectConfig(demo=DemoDetectTeacher(jitter=0.0, miss_rate=0.0, false_positive_rate=1.0, duplicate_rate=0.0))
    run_stage(DetectStage(images, caps, truth, extra, seed=0), ["00000"], tmp_path / "fp", progress=False)
    [record] = read_jsonl(annotation_path(tmp_path / "fp", "00000"))
    assert len(record["regions"]) > len(OBJECTS)


def test_demo_teacher_is_deterministic_per_seed(tmp_path):
    images, caps, truth = make_world(tmp_path, {"k0": CAPTION, "k1": CAPTION})
    outputs = []
    for run, seed in enumerate((5, 5, 6)):
        run_stage(DetectStage(images, caps, truth, DetectConfig(), seed=seed), ["00000"], tmp_path / f"o{run}", progress=False)
        outputs.append(annotation_path(tmp_path / f"o{run}", "00000").read_bytes())
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_demo_teacher_malformed_truth_is_a_reject(tmp_path):
    broken = [{"id": 0, "shape": "circle", "bbox": [0.1, 0.2]}]
    images, caps, truth = make_world(tmp_path, {"k0": CAPTION, "k1": CAPTION}, truth_objects={"k1": broken})
    summary = run_stage(DetectStage(images, caps, truth, DetectConfig(), seed=0), ["00000"], tmp_path / "out", progress=False)
    assert dict(summary.rejected) == {"detector_failed": 1} and summary.items_out == 1
    [reject] = [r for r in read_jsonl(annotation_path(tmp_path / "out", "00000", "rejects")) if r["dropped"]]
    assert reject["key"] == "k1" and "(bad_truth)" in reject["detail"]


def test_demo_teacher_context_and_missing_truth():
    teacher = DemoTeacherDetector(DetectConfig(), truth_dir=Path("/nonexistent"))
    sample = RawSample("k0", b"", "jpg", W, H, "alt")
    with pytest.raises(DetectorError, match="no_truth"):
        teacher.detect(sample, [CIRCLE], DetectContext("00000", "k0", 0))
    with pytest.raises(ValueError, match="truth"):
        build_detector(DetectConfig(), None)


class FakeDetector(Detector):
    """Returns fixed candidates per short expression; fails for one key."""

    def __init__(self, table: dict[str, list[Candidate]]) -> None:
        self.table = table

    def identity(self) -> dict[str, Any]:
        return {"name": "fake", "version": "1"}

    def detect(self, image, expressions, context):
        if context.key == "broken":
            raise DetectorError("backend timed out")
        return [list(self.table.get(e.short_expr, [])) for e in expressions]


def test_stage_with_fake_backend_writes_records_and_counts(tmp_path):
    captions = {"good": "A red circle is on the left.", "nothing": "A sunny day.", "lost": "A blue star.", "broken": "A red circle."}
    images, caps, truth = make_world(tmp_path, captions, extra_images=["uncaptioned"])
    table = {"red circle": [Candidate((10, 10, 100, 100), 0.9), Candidate((12, 12, 98, 99), 0.85), Candidate((-50, 0, -10, 10), 0.9)],
             "blue star": [Candidate((10, 10, 100, 100), 0.1)]}
    stage = DetectStage(images, caps, None, DetectConfig(), seed=0, detector=FakeDetector(table))
    assert set(stage.shard_inputs("00000")) == {"images", "captions"}  # no truth for a non-teacher backend
    summary = run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    records = {r["key"]: r for r in read_jsonl(annotation_path(tmp_path / "out", "00000"))}
    assert sorted(records) == ["good", "lost", "nothing"]
    assert [r["short_expr"] for r in records["good"]["regions"]] == ["red circle"]
    assert records["good"]["regions"][0]["long_expr"] == "red circle on the left"
    assert records["nothing"]["regions"] == [] and records["lost"]["regions"] == []
    assert dict(summary.rejected) == {"no_caption": 1, "detector_failed": 1}
    assert summary.ignored["nms_suppressed"] == 1 and summary.ignored["box_outside_image"] == 1
    assert summary.ignored["no_expressions"] == 1 and summary.ignored["no_regions"] == 1 and summary.ignored["low_confidence"] == 1
    assert summary.items_in == 5 and summary.items_out == 3
    # a rerun with the same inputs and settings skips the shard
    assert run_stage(stage, ["00000"], tmp_path / "out", progress=False).shards_skipped == 1


def test_command_runs_the_stage_and_writes_the_report(tmp_path):
    images, caps, truth = make_world(tmp_path, {"k0": CAPTION})
    params = load_params(None, {"tracking.enabled": False})
    args = argparse.Namespace(shards=None, images=str(images), captions=str(caps), truth=str(truth), out=str(tmp_path / "out"),
                              report=str(tmp_path / "report.json"), no_progress=True)
    assert command(args, params) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["items_out"] == 1 and report["ignored"]["low_confidence"] > 0


def test_command_reports_missing_truth(tmp_path):
    from fgclip.cli import ComponentError

    images, caps, _ = make_world(tmp_path, {"k0": CAPTION})
    params = load_params(None, {"tracking.enabled": False})
    args = argparse.Namespace(shards=None, images=str(images), captions=str(caps), truth=None, out=str(tmp_path / "out"), report=None, no_progress=True)
    with pytest.raises(ComponentError, match="truth"):
        command(args, params)
    args.truth = str(tmp_path / "elsewhere")
    with pytest.raises(ComponentError, match="missing"):
        command(args, params)


def test_batch_size_does_not_change_records_or_rejects(tmp_path):
    captions = {f"k{i}": CAPTION for i in range(5)} | {"nothing": "A sunny day."}
    images, caps, truth = make_world(tmp_path, captions, extra_images=["uncaptioned"])
    outputs = []
    for size in (1, 3, 16):
        out = tmp_path / f"b{size}"
        run_stage(DetectStage(images, caps, truth, DetectConfig(batch_size=size), seed=2), ["00000"], out, progress=False)
        outputs.append((annotation_path(out, "00000").read_bytes(), annotation_path(out, "00000", "rejects").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


class LosingDetector(FakeDetector):
    """Drops the last image of every batch: must stop the shard, not shift boxes."""

    def detect_batch(self, items):
        return super().detect_batch(items)[:-1]


def test_a_backend_that_loses_images_stops_the_shard(tmp_path):
    images, caps, _ = make_world(tmp_path, {"a": "A red circle.", "b": "A blue star."})
    stage = DetectStage(images, caps, None, DetectConfig(), seed=0, detector=LosingDetector({}))
    with pytest.raises(RuntimeError, match="1 results for 2 images"):
        stage.process_shard("00000")
