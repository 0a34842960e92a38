"""negatives: the rules generator, post-processing, the shared validator and the stage."""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import pytest

from fgclip.data.negatives.cli import command
from fgclip.core import schema
from fgclip.config import load_params
from fgclip.data.negatives.config import NegativesConfig
from fgclip.text.words import head_noun
from fgclip.data.negatives.backends.rules import RulesNegativeGenerator
from fgclip.data.negatives.interface import NegativeGenerationError, NegativeGenerator, build_generator
from fgclip.data.negatives.stage import NegativesStage
from fgclip.data.negatives.validation import clean_expression, postprocess, select_valid, validate_negatives
from fgclip.core.shards import annotation_path, read_jsonl, write_jsonl_atomic
from fgclip.core.stage import ShardResult, run_stage
from tests.support.records import write_records

K = 10
EXPRESSIONS = ["large red striped circle", "circle", "man", "blue striped shirt", "small green square",
               "large circle", "tree house", "wooden chair", "small blue dotted star near the top right corner"]


@pytest.fixture(scope="module")
def generator() -> RulesNegativeGenerator:
    return RulesNegativeGenerator(max_attempts=NegativesConfig().max_attempts)


@pytest.mark.parametrize("positive", EXPRESSIONS)
def test_rules_generator_gives_k_valid_negatives(generator, positive):
    found = generator.generate(positive, K, random.Random(0))
    assert len(found) == K
    assert len({n.lower() for n in found}) == K
    assert positive not in found
    assert validate_negatives(positive, found, K) == []
    head = head_noun(positive)
    for negative in found:
        assert head in negative.split()
        if head == positive.split()[-1]:
            assert negative.split()[-1] == head  # the head noun stays last


def test_one_attribute_changes_come_first(generator):
    positive = "large red striped circle"
    for negative in generator.generate(positive, K, random.Random(1)):
        changed = [a for a, b in zip(positive.split(), negative.split()) if a != b]
        assert len(negative.split()) == 4 and len(changed) == 1, negative


def test_swaps_skip_near_synonyms(generator):
    for seed in range(5):
        for negative in generator.generate("large circle", K, random.Random(seed)):
            assert not {"big", "huge"} & set(negative.split()), negative
    # and two negatives never differ only by synonyms
    found = generator.generate("circle", K, random.Random(0))
    assert not ({"large circle", "big circle"} <= set(found))


def test_insertion_follows_adjective_order():
    everything = RulesNegativeGenerator(max_attempts=100_000)
    found = everything.generate("large striped circle", 100_000, random.Random(0))
    assert len(found) == 331  # every distinct meaning the lexicon allows, each once
    assert {"large green striped circle", "large striped wooden circle", "medium-sized striped wooden circle", "large green striped wooden circle"} <= set(found)
    assert not any(n.endswith("striped green circle") or n.startswith("green large") for n in found)
    assert not any(n.split()[0] == "two" for n in found)  # count words are swapped, never added
    assert "metal tree house" in everything.generate("tree house", 100_000, random.Random(0))
    assert all("solid" not in n for n in everything.generate("circle", 100_000, random.Random(0)))  # never inserted


def test_deterministic_for_the_same_stream(generator):
    first = generator.generate("small blue dotted star", K, random.Random(42))
    assert first == generator.generate("small blue dotted star", K, random.Random(42))
    assert first != generator.generate("small blue dotted star", K, random.Random(43))


def test_max_attempts_bounds_the_search():
    assert len(RulesNegativeGenerator(max_attempts=3).generate("circle", K, random.Random(0))) == 3


def test_clean_expression_strips_stray_symbols():
    assert clean_expression('1. "a red; striped,\n circle."') == "a red striped circle"
    assert clean_expression("- (blue) [dotted] star;") == "blue dotted star"
    assert clean_expression("the man's  red   hat") == "the man's red hat"
    assert clean_expression("'quoted'") == "quoted"
    assert clean_expression("medium-sized circle") == "medium-sized circle"
    assert postprocess("A Blue Circle", "red circle") == "a blue circle"
    assert postprocess("A Blue Circle", "Red circle") == "A Blue Circle"


def test_validator_catches_each_problem():
    good = [f"{c} circle" for c in ("blue", "green", "yellow")]
    assert validate_negatives("red circle", good, 3) == []

    def codes(found: list[str]) -> set[str]:
        return {line.split(":")[0] for line in found}

    assert codes(validate_negatives("red circle", good[:2], 3)) == {"wrong_count"}
    assert codes(validate_negatives("red circle", good[:2] + ["  "], 3)) == {"empty"}
    assert codes(validate_negatives("red circle", good[:2] + ["Red Circle"], 3)) == {"equals_positive"}
    assert codes(validate_negatives("red circle", good[:2] + ["blue circle"], 3)) == {"duplicate"}
    assert codes(validate_negatives("red circle", good[:2] + ["blue square"], 3)) == {"head_noun_missing"}
    assert codes(validate_negatives("red circle", good[:2] + ["blue circle;"], 3)) == {"duplicate", "stray_symbols"}
    assert codes(validate_negatives("red circle", [], 3)) == {"wrong_count"}


def test_select_valid_post_processes_and_filters():
    raw = ["1. Blue circle,", "red circle", "blue circle", "", "green square", "yellow circle", "pink circle"]
    assert select_valid("red circle", raw, 3) == ["blue circle", "yellow circle", "pink circle"]


# ---------------------------------------------------------------- the stage

class ScriptedGenerator(NegativeGenerator):
    """Returns a fixed list per expression (or raises), to test the stage's handling."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script

    def identity(self) -> dict[str, Any]:
        return {"name": "scripted", "version": "1"}

    def generate(self, expression, count, rng):
        result = self.script[expression]
        if isinstance(result, Exception):
            raise result
        return list(result)


def regions_record(key: str, *shorts: str) -> dict[str, Any]:
    return {"key": key, "width": 64, "height": 48,
            "regions": [{"bbox": [0.1, 0.1, 0.5, 0.5], "score": 0.9, "short_expr": s, "long_expr": s} for s in shorts]}


def test_stage_post_processes_and_rejects_incomplete_regions(tmp_path):
    write_jsonl_atomic(annotation_path(tmp_path / "regions", "00000"), [
        regions_record("a", "red circle", "blue star", "green square"),
        regions_record("b"),
        {"key": "c", "regions": "not a list"},
    ])
    script = {"red circle": ['1. "Blue circle";', "red circle", "blue circle", "yellow circle", "pink circle\n"],
              "blue star": ["green star", "green star", "star"],
              "green square": NegativeGenerationError("endpoint returned 503")}
    stage = NegativesStage(tmp_path / "regions", NegativesConfig(count=3), seed=0, generator=ScriptedGenerator(script))
    result: ShardResult = stage.process_shard("00000")
    by_key = {r["key"]: r for r in result.records}
    assert by_key["a"]["regions"] == [{"short_expr_negs": ["blue circle", "yellow circle", "pink circle"]},
                                      {"short_expr_negs": []}, {"short_expr_negs": []}]
    assert by_key["b"]["regions"] == []
    reasons = {(r.reason, r.dropped) for r in result.rejects}
    assert reasons == {("negatives_incomplete", False), ("negatives_failed", False), ("bad_regions_record", True)}
    assert result.items_in == 3


def test_stage_run_over_a_tiny_regions_folder(tmp_path):
    records = [regions_record("k0", "large red striped circle", "circle"), regions_record("k1", "small blue dotted star"),
               regions_record("k2")]
    write_jsonl_atomic(annotation_path(tmp_path / "regions", "00000"), records)
    stage = NegativesStage(tmp_path / "regions", NegativesConfig(), seed=3)
    summary = run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    out = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    assert [r["key"] for r in out] == ["k0", "k1", "k2"]
    for record, source in zip(out, records):
        schema.validate("negatives_record", record)
        assert len(record["regions"]) == len(source["regions"])  # aligned by index
        for negs, region in zip(record["regions"], source["regions"]):
            assert validate_negatives(region["short_expr"], negs["short_expr_negs"], K) == []
    assert summary.items_in == 3 and summary.items_out == 3 and not summary.rejected and not summary.ignored
    # deterministic and resumable: a second run skips, a fresh one writes the same bytes
    assert run_stage(stage, ["00000"], tmp_path / "out", progress=False).shards_skipped == 1
    run_stage(NegativesStage(tmp_path / "regions", NegativesConfig(), seed=3), ["00000"], tmp_path / "again", progress=False)
    assert annotation_path(tmp_path / "again", "00000").read_bytes() == annotation_path(tmp_path / "out", "00000").read_bytes()


def test_command_reads_finished_shards_and_writes_the_report(tmp_path):
    write_records([regions_record("k0", "red circle")], tmp_path / "regions")
    params = load_params(None, {"tracking.enabled": False})
    args = argparse.Namespace(shards=None, regions=str(tmp_path / "regions"), out=str(tmp_path / "out"),
                              report=str(tmp_path / "report.json"), no_progress=True)
    assert command(args, params) == 0
    assert json.loads((tmp_path / "report.json").read_text())["items_out"] == 1
    [record] = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    assert len(record["regions"][0]["short_expr_negs"]) == K


def test_command_without_finished_shards_fails_clearly(tmp_path):
    from fgclip.cli import ComponentError

    (tmp_path / "regions").mkdir()
    args = argparse.Namespace(shards=None, regions=str(tmp_path / "regions"), out=str(tmp_path / "out"), report=None, no_progress=True)
    with pytest.raises(ComponentError, match="run detect first"):
        command(args, load_params(None, {"tracking.enabled": False}))


def test_registry():
    assert isinstance(build_generator(NegativesConfig()), RulesNegativeGenerator)
    with pytest.raises(KeyError, match="unknown negative generator"):
        build_generator(NegativesConfig.model_construct(backend="nope"))
