"""recaption: the stage around a caption backend, and the demo teacher's captions."""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from fgclip.demo.world import PHOTO_DESCRIPTIONS, generate_split
from fgclip.data.recaption.cli import add_arguments, command
from fgclip.config import Params
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.demo.config import DemoRecaptionTeacher, DemoWorldConfig
from fgclip.text.lexicon import COLOURS, OBJECT_NOUNS, PATTERNS, SHAPES, SIZES, attribute_class
from fgclip.data.recaption.interface import CaptionBackend, CaptionContext, CaptionResult
from fgclip.data.recaption.stage import RecaptionStage
from fgclip.demo.captions import describe, teacher_mention
from fgclip.core.shards import RawSample, RawShardReader, ShardSample, read_jsonl, write_image_shard, write_jsonl_atomic
from fgclip.core.stage import run_stage

SEED = 11
EXACT = RecaptionConfig(demo=DemoRecaptionTeacher(attribute_error_rate=0.0, miss_rate=0.0))
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
ATTRIBUTE_WORDS = set(SIZES) | set(COLOURS) | set(PATTERNS)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    config = DemoWorldConfig(train_shards=2, heldout_shards=0, samples_per_shard=8)
    generate_split(config, out, "train", progress=False)
    return out / "train"


def exact_phrase(obj: dict) -> str:
    return f"{obj['size']} {obj['colour']} {obj['pattern']} {obj['shape']}"


def mentions_exactly(caption: str, obj: dict) -> bool:
    return re.search(rf"\b(a|an) {exact_phrase(obj)}\b", caption, flags=re.IGNORECASE) is not None


def synthetic_truth(count: int, objects: int = 4) -> list[dict]:
    """Truth records without images: distinct shapes per record, attributes cycling."""
    records = []
    colours = list(COLOURS)
    for index in range(count):
        items = []
        for slot in range(objects):
            items.append({"id": slot, "shape": SHAPES[(index + slot) % len(SHAPES)], "colour": colours[(index * 3 + slot) % len(colours)],
                          "pattern": PATTERNS[(index + 2 * slot) % len(PATTERNS)], "size": SIZES[(index + slot) % len(SIZES)],
                          "bbox": [0.1 * slot, 0.1, 0.1 * slot + 0.05, 0.2], "position": POSITIONS[(index + slot) % len(POSITIONS)]})
        relations = [{"subject": a, "predicate": "left of", "object": a + 1} for a in range(objects - 1)]
        records.append({"key": f"k{index:05d}", "width": 64, "height": 48, "background": {"kind": "plain", "colours": ["blue"]},
                        "objects": items, "relations": relations})
    return records


def run(world: Path, out: Path, config: RecaptionConfig = EXACT, truth: Path | None = None) -> dict[str, dict]:
    stage = RecaptionStage(world / "images", truth or world / "truth", config, SEED)
    run_stage(stage, ["00000", "00001"], out, progress=False)
    return {r["key"]: r for shard in ("00000", "00001") for r in read_jsonl(out / f"{shard}.jsonl")}


def truth_of(world: Path) -> dict[str, dict]:
    return {r["key"]: r for shard in ("00000", "00001") for r in read_jsonl(world / "truth" / f"{shard}.jsonl")}


def test_zero_error_rates_mention_every_object_exactly(world: Path, tmp_path: Path) -> None:
    records = run(world, tmp_path / "captions")
    truth = truth_of(world)
    assert set(records) == set(truth)
    for key, record in truth.items():
        caption = records[key]["long_caption"]
        for obj in record["objects"]:
            assert mentions_exactly(caption, obj), (caption, obj)
        assert caption.count(".") >= len(record["objects"]) + 1  # a scene sentence, then one per object


def test_every_object_noun_is_a_full_lexicon_noun_phrase(world: Path, tmp_path: Path) -> None:
    """The extractor's contract: each head noun follows a determiner and only lexicon attribute words."""
    records = run(world, tmp_path / "captions")
    for record in records.values():
        words = re.findall(r"[a-z]+", record["long_caption"].lower())
        for index, word in enumerate(words):
            if word in OBJECT_NOUNS:
                assert word in SHAPES, record  # backdrops and templates use no object nouns
                start = index
                while start > 0 and words[start - 1] in ATTRIBUTE_WORDS:
                    start -= 1
                assert start < index, record  # at least one attribute word
                assert words[start - 1] in ("a", "an", "the"), record


def test_miss_rate_one_mentions_no_object(world: Path, tmp_path: Path) -> None:
    config = RecaptionConfig(demo=DemoRecaptionTeacher(attribute_error_rate=0.0, miss_rate=1.0))
    records = run(world, tmp_path / "captions", config)
    assert len(records) == 16
    for record in records.values():
        words = set(re.findall(r"[a-z]+", record["long_caption"].lower()))
        assert not words & OBJECT_NOUNS, record


@pytest.mark.parametrize("background", [
    {"kind": "plain", "colours": ["blue"]},
    {"kind": "gradient", "colours": ["red", "cyan"], "description": "a gradient from light red at the top to light cyan at the bottom"},
    *({"kind": "photo", "photo": name, "description": text} for name, text in PHOTO_DESCRIPTIONS.items()),
])
def test_backdrop_wording_holds_no_object_noun(background: dict) -> None:
    truth = {"key": "k", "width": 8, "height": 8, "background": background, "objects": [], "relations": []}
    for seed in range(6):  # several template draws
        caption = describe(truth, "k", seed, DemoRecaptionTeacher())
        assert caption and not set(re.findall(r"[a-z]+", caption.lower())) & OBJECT_NOUNS


def test_error_rates_match_config_on_hundreds_of_objects() -> None:
    records = synthetic_truth(100)  # 400 objects, each shape once per record
    attribute_errors = DemoRecaptionTeacher(attribute_error_rate=0.2, miss_rate=0.0)
    wrong = sum(not mentions_exactly(describe(r, r["key"], SEED, attribute_errors), o) for r in records for o in r["objects"])
    assert 0.13 <= wrong / 400 <= 0.27
    misses = DemoRecaptionTeacher(attribute_error_rate=0.0, miss_rate=0.3)
    missed = 0
    for record in records:
        caption = describe(record, record["key"], SEED, misses)
        for obj in record["objects"]:
            present = re.search(rf"\b{obj['shape']}\b", caption) is not None
            assert present == mentions_exactly(caption, obj)  # a mention is exact or absent
            missed += not present
    assert 0.22 <= missed / 400 <= 0.38


def test_an_attribute_error_changes_exactly_one_word() -> None:
    config = DemoRecaptionTeacher(attribute_error_rate=1.0, miss_rate=0.0)
    for record in synthetic_truth(30):
        for obj in record["objects"]:
            mention = teacher_mention(obj, record["key"], SEED, config)
            changed = [name for name in ("size", "colour", "pattern") if mention.words[name] != obj[name]]
            assert len(changed) == 1
            assert attribute_class(mention.words[changed[0]]) == {"colour": "colour", "size": "size", "pattern": "pattern"}[changed[0]]


def test_relations_refer_to_mentioned_objects_in_the_right_direction() -> None:
    truth = {"key": "k", "width": 8, "height": 8, "background": {"kind": "plain", "colours": ["blue"]},
             "objects": [{"id": 0, "shape": "circle", "colour": "red", "pattern": "solid", "size": "large", "position": "left"},
                         {"id": 1, "shape": "square", "colour": "green", "pattern": "dotted", "size": "small", "position": "right"}],
             "relations": [{"subject": 0, "predicate": "left of", "object": 1}]}
    config = DemoRecaptionTeacher(attribute_error_rate=0.0, miss_rate=0.0, relation_rate=1.0)
    captions = [describe(truth, f"k{i}", SEED, config) for i in range(20)]
    for caption in captions:
        lowered = caption.lower()
        assert "left of the green square" in lowered and "right of the red circle" in lowered, caption
        assert "right of the green square" not in lowered and "left of the red circle" not in lowered
    assert len(set(captions)) > 5  # the teacher varies its wording


def test_runs_are_deterministic_and_independent_of_batching(world: Path, tmp_path: Path) -> None:
    config = RecaptionConfig(demo=DemoRecaptionTeacher(attribute_error_rate=0.3, miss_rate=0.2))
    run(world, tmp_path / "a", config)
    run(world, tmp_path / "b", config)
    run(world, tmp_path / "c", config.model_copy(update={"batch_size": 3}))
    for shard in ("00000", "00001"):
        first = (tmp_path / "a" / f"{shard}.jsonl").read_bytes()
        assert first == (tmp_path / "b" / f"{shard}.jsonl").read_bytes() == (tmp_path / "c" / f"{shard}.jsonl").read_bytes()


def test_missing_truth_record_or_file_is_a_reject(world: Path, tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    truth.mkdir()
    kept = read_jsonl(world / "truth" / "00000.jsonl")
    write_jsonl_atomic(truth / "00000.jsonl", kept[1:])  # first key has no truth; shard 00001 has no file
    out = tmp_path / "captions"
    summary = run_stage(RecaptionStage(world / "images", truth, EXACT, SEED), ["00000", "00001"], out, progress=False)
    assert summary.items_in == 16 and summary.items_out == 7
    assert summary.rejected == {"no_truth": 9}
    rejects = read_jsonl(out / "00000.rejects.jsonl")
    assert [(r["key"], r["reason"], r["stage"], r["dropped"]) for r in rejects] == [(kept[0]["key"], "no_truth", "recaption", True)]
    assert "does not exist" in read_jsonl(out / "00001.rejects.jsonl")[0]["detail"]


def test_unreadable_truth_file_rejects_its_shard(world: Path, tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "00000.jsonl").write_text('{"key": "tr000000000", "objects": [\n')
    result = RecaptionStage(world / "images", truth, EXACT, SEED).process_shard("00000")
    assert result.records == [] and result.items_in == 8
    assert {(r.reason, r.stage) for r in result.rejects} == {("bad_truth", "recaption")} and len(result.rejects) == 8
    assert "unreadable" in result.rejects[0].detail


def test_bad_truth_record_is_a_reject(world: Path, tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    records = read_jsonl(world / "truth" / "00000.jsonl")
    del records[2]["objects"][0]["colour"]
    records[3]["width"] = 999
    write_jsonl_atomic(truth / "00000.jsonl", records)
    stage = RecaptionStage(world / "images", truth, EXACT, SEED)
    result = stage.process_shard("00000")
    assert {(r.key, r.reason) for r in result.rejects} == {(records[2]["key"], "bad_truth"), (records[3]["key"], "truth_mismatch")}
    assert len(result.records) == 6


def test_unreadable_input_samples_pass_through_as_read_rejects(world: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = read_jsonl(world / "truth" / "00000.jsonl")[0]
    source = {s.key: s for s in RawShardReader(world / "images" / "00000.tar")}
    sample = source[good["key"]]
    write_image_shard(images, "00000", [ShardSample(sample.key, sample.image_bytes, sample.caption, sample.meta),
                                        ShardSample("broken", b"not a jpeg", "alt", {})])
    result = RecaptionStage(images, world / "truth", EXACT, SEED).process_shard("00000")
    assert [r["key"] for r in result.records] == [good["key"]]
    assert [(r.key, r.reason, r.stage) for r in result.rejects] == [("broken", "corrupt_image", "read")]
    assert result.items_in == 2


class ScriptedBackend(CaptionBackend):
    """A stand-in model: captions by key, fails or returns blanks on cue."""

    def identity(self) -> dict:
        return {"name": "scripted", "version": "0"}

    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        results = []
        for index, sample in enumerate(batch):
            if index == 0:
                results.append(CaptionResult.failed("model_refused", "content filter"))
            elif index == 1:
                results.append(CaptionResult(text="   "))
            else:
                results.append(CaptionResult(text=f"  a  caption of\n{sample.key} "))
        return results


def test_backend_failures_become_rejects_and_text_is_normalised(world: Path) -> None:
    stage = RecaptionStage(world / "images", None, EXACT, SEED, backend=ScriptedBackend())
    assert stage.shard_inputs("00000") == {"images": world / "images" / "00000.tar"}
    assert stage.settings()["backend"] == {"name": "scripted", "version": "0"}
    result = stage.process_shard("00000")
    assert [r.reason for r in result.rejects] == ["model_refused", "empty_caption"]
    assert all(r.stage == "recaption" and r.dropped for r in result.rejects)
    assert result.records[0]["long_caption"] == f"a caption of {result.records[0]['key']}"
    assert result.items_in == 8


def test_caption_result_holds_text_or_a_contract_reason() -> None:
    with pytest.raises(ValueError):
        CaptionResult()
    with pytest.raises(ValueError):
        CaptionResult(text="x", error="y")
    with pytest.raises(ValueError, match="must match"):
        CaptionResult.failed("Model Refused", "reason codes are lower_snake_case")


class ShortBackend(ScriptedBackend):
    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        return super().caption(batch, context)[:-1]


def test_a_backend_that_loses_samples_stops_the_shard(world: Path) -> None:
    stage = RecaptionStage(world / "images", None, EXACT, SEED, backend=ShortBackend())
    with pytest.raises(RuntimeError, match="results for"):
        stage.process_shard("00000")


def test_demo_backend_fingerprints_the_truth_file(world: Path) -> None:
    stage = RecaptionStage(world / "images", world / "truth", EXACT, SEED)
    assert stage.shard_inputs("00001") == {"images": world / "images" / "00001.tar", "truth": world / "truth" / "00001.jsonl"}
    assert stage.settings()["backend"]["name"] == "demo" and stage.settings()["backend"]["rules_hash"]


def command_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.no_progress = True
    return args


def test_cli_writes_captions_and_report(world: Path, tmp_path: Path) -> None:
    params = Params.model_validate({"tracking": {"enabled": False}})
    args = command_args("--images", str(world / "images"), "--truth", str(world / "truth"), "--out", str(tmp_path / "out"),
                        "--report", str(tmp_path / "report.json"), "--shards", "00001")
    assert command(args, params) == 0
    assert len(read_jsonl(tmp_path / "out" / "00001.jsonl")) == 8
    assert not (tmp_path / "out" / "00000.jsonl").exists()
    assert '"items_out": 8' in (tmp_path / "report.json").read_text()


def test_cli_errors_are_clear(world: Path, tmp_path: Path) -> None:
    from fgclip.cli import ComponentError

    params = Params.model_validate({"tracking": {"enabled": False}})
    with pytest.raises(ComponentError, match="--truth"):
        command(command_args("--images", str(world / "images"), "--out", str(tmp_path / "o")), params)
    with pytest.raises(ComponentError, match="does not exist"):
        command(command_args("--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")), params)
    with pytest.raises(ComponentError, match="99999"):
        command(command_args("--images", str(world / "images"), "--truth", str(world / "truth"),
                                       "--out", str(tmp_path / "o"), "--shards", "99999"), params)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
