"""detect backends `owlv2` and `grounding_dino`: tiny random models saved by the test go
through the real AutoProcessor / AutoModelForZeroShotObjectDetection `from_pretrained`
path. Random weights give random boxes, so the tests check mechanics: one candidate list
per expression, batch == loop, the core's threshold, box checks and NMS applied,
normalised boxes in [0, 1], per-image failures counted, identity and throughput."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pytest
from PIL import Image

from fgclip.core import boxes
from fgclip.core import schema
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.interface import DetectContext, DetectItem, DetectorError, build_detector
from fgclip.data.detect.stage import DetectStage
from fgclip.data.detect.expressions import Expression
from fgclip.core.shards import RawSample, ShardSample, annotation_path, read_jsonl, write_image_shard, write_jsonl_atomic
from fgclip.core.stage import run_stage
from tests.support.tiny_vision_models import save_tiny_grounding_dino, save_tiny_owlv2

BUILDERS = {"owlv2": save_tiny_owlv2, "grounding_dino": save_tiny_grounding_dino}
CIRCLE = Expression("red circle", "red circle on the left")
STAR = Expression("large blue star", "large blue star near the top")
SQUARE = Expression("small green square", "small green square")


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    backend = request.param
    return backend, BUILDERS[backend](tmp_path_factory.mktemp(backend) / f"tiny-{backend}")


def config(model: tuple[str, Path], **settings: object) -> DetectConfig:
    backend, folder = model
    return DetectConfig(backend=backend, **{backend: {"model": str(folder), "device": "cpu", **settings}})


def jpeg(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (width, height), colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def item(key: str, expressions: list[Expression], size: tuple[int, int] = (160, 120), colour=(200, 40, 40)) -> DetectItem:
    sample = RawSample(key, jpeg(*size, colour), "jpg", size[0], size[1], "alt")
    return DetectItem(sample, expressions, DetectContext("00000", key, 0))


def same(a: list, b: list) -> bool:
    """Equal candidate lists up to float noise of batched kernels."""
    if len(a) != len(b):
        return False
    return all(len(x) == len(y) and all(c.bbox == pytest.approx(d.bbox, abs=1e-3) and c.score == pytest.approx(d.score, abs=1e-4)
                                        for c, d in zip(x, y)) for x, y in zip(a, b))


def test_batch_equals_one_at_a_time(model) -> None:
    detector = build_detector(config(model, candidate_min_score=0.0))
    # same image size: Grounding DINO pads a batch's images to one size, which changes the backbone's borders
    items = [item("a", [CIRCLE, STAR, SQUARE]), item("b", [STAR], colour=(20, 90, 220)), item("c", [SQUARE, CIRCLE])]
    together = detector.detect_batch(items)
    for single, outcome in zip(items, together):
        assert len(outcome) == len(single.expressions)
        assert all(len(found) == detector.settings.max_candidates for found in outcome)
        assert same(outcome, detector.detect(single.image, single.expressions, single.context))
    metrics = detector.metrics()
    assert metrics["detect.backend.images"] == 6 and metrics["detect.backend.expressions"] == 12
    assert metrics["detect.backend.images_per_second"] > 0 and metrics["detect.backend.tokens"] > 0


def test_images_of_different_sizes_and_one_broken_image(model) -> None:
    detector = build_detector(config(model, candidate_min_score=0.0))
    broken = DetectItem(RawSample("broken", b"\xff\xd8 not a jpeg", "jpg", 50, 50, "alt"), [CIRCLE],
                        DetectContext("00000", "broken", 0))
    wrong_size = item("lying", [STAR], size=(90, 60))
    wrong_size = DetectItem(RawSample("lying", wrong_size.image.image_bytes, "jpg", 64, 64, "alt"), [STAR], wrong_size.context)
    outcomes = detector.detect_batch([item("wide", [CIRCLE, STAR], size=(200, 80)), broken, wrong_size,
                                      item("tall", [SQUARE], size=(70, 150))])
    assert isinstance(outcomes[1], DetectorError) and "does not decode" in str(outcomes[1])
    assert isinstance(outcomes[2], DetectorError) and "the shard says 64x64" in str(outcomes[2])
    assert [len(o) for o in (outcomes[0], outcomes[3])] == [2, 1]
    for outcome in (outcomes[0], outcomes[3]):
        assert all(0.0 <= c.score <= 1.0 and len(c.bbox) == 4 for found in outcome for c in found)


def write_world(tmp_path: Path, keys: list[str]) -> tuple[Path, Path]:
    images, captions = tmp_path / "images", tmp_path / "captions"
    colours = [(200, 40, 40), (30, 160, 60), (20, 90, 220), (230, 200, 30)]
    write_image_shard(images, "00000", [ShardSample(k, jpeg(160 + 16 * i, 120, colours[i % 4]), "alt", {})
                                        for i, k in enumerate(keys)])
    text = "On the left there is a red circle. A large blue star sits near the top. A small green square."
    write_jsonl_atomic(annotation_path(captions, "00000"), [{"key": k, "long_caption": text} for k in keys])
    return images, captions


def test_stage_applies_the_core_threshold_box_checks_and_nms(model, tmp_path: Path) -> None:
    keys = ["k0", "k1", "k2", "k3", "k4"]
    images, captions = write_world(tmp_path, keys)
    probe = build_detector(config(model, candidate_min_score=0.0, max_candidates=8))
    scores = [c.score for outcome in probe.detect_batch([item("p", [CIRCLE, STAR, SQUARE])]) for found in outcome for c in found]
    # a threshold inside the spread of candidate scores, so it has work to do
    cfg = config(model, candidate_min_score=0.0, max_candidates=8).model_copy(
        update={"min_confidence": statistics.median(scores), "batch_size": 2, "max_regions": 3, "min_box_side_px": 2.0})
    summary = run_stage(DetectStage(images, captions, None, cfg, seed=0), ["00000"], tmp_path / "out", progress=False)
    records = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    assert [r["key"] for r in records] == keys and summary.items_in == 5
    regions = [region for record in records for region in record["regions"]]
    assert regions, "a median threshold must let some boxes through"
    for record in records:
        schema.validate("regions_record", record)
        assert len(record["regions"]) <= 3
        for region in record["regions"]:
            assert all(0.0 <= v <= 1.0 for v in region["bbox"]) and not boxes.is_degenerate(region["bbox"])
            assert region["score"] >= cfg.min_confidence
        kept = [r["bbox"] for r in record["regions"]]
        assert all(boxes.iou(a, b) <= cfg.nms_iou for i, a in enumerate(kept) for b in kept[i + 1:])
    assert summary.ignored["low_confidence"] > 0
    assert summary.ignored["nms_suppressed"] + summary.ignored["over_max_regions"] > 0
    total = sum(summary.ignored.values()) - summary.ignored["no_regions"]
    assert total + len(regions) == 5 * 3 * 8  # every candidate is a region or a counted reason
    assert run_stage(DetectStage(images, captions, None, cfg, seed=0), ["00000"], tmp_path / "out",
                     progress=False).shards_skipped == 1


def test_identity_names_the_weights_not_the_path(model) -> None:
    backend, folder = model
    identity = build_detector(config(model)).identity()
    assert identity["name"] == backend and identity["model"] == folder.name and len(identity["files_sha256"]) == 64
    assert str(folder) not in str(identity) and identity["dtype"] == "float32"


def test_grounding_dino_packs_long_expression_lists_into_several_prompts(tmp_path: Path) -> None:
    folder = save_tiny_grounding_dino(tmp_path / "gd")
    detector = build_detector(DetectConfig(backend="grounding_dino", grounding_dino={"model": str(folder),
                                                                                     "max_text_tokens": 10}))
    many = [CIRCLE, STAR, SQUARE, Expression("yellow triangle", "yellow triangle")]
    assert [len(group) for group in detector.prompts(many)] == [2, 2]  # [CLS] + 7 + [SEP] tokens each
    text = detector.prompt_text(many[:2])
    assert text == "red circle . large blue star ."
    assert [len(p) for p in detector.token_positions(text, many[:2])] == [2, 3]
    [outcome] = detector.detect_batch([item("a", many)])
    assert len(outcome) == 4 and detector.metrics()["detect.backend.expressions"] == 4


def test_config_and_loading_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="detect.owlv2.model"):
        DetectConfig(backend="owlv2")
    with pytest.raises(ValueError, match="exactly one"):
        DetectConfig(backend="owlv2", owlv2={"model": "x", "query_template": "a photo"})
    with pytest.raises(ValueError, match="cannot load the grounding_dino processor"):
        build_detector(DetectConfig(backend="grounding_dino", grounding_dino={"model": str(tmp_path / "none"),
                                                                              "local_files_only": True}))
