"""negatives backend `hf`: a causal LM loaded with from_pretrained, batched generation,
rules repair counted per region; and the stage's batching for every generator."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fgclip.core import schema
from fgclip.data.negatives.config import NegativesConfig
from fgclip.llm.config import CausalLMConfig
from fgclip.data.negatives.interface import NegativeGenerator, NegativeRequest, Proposal, build_generator
from fgclip.data.negatives.stage import NegativesStage
from fgclip.data.negatives.validation import validate_negatives
from fgclip.core.shards import annotation_path, read_jsonl, write_jsonl_atomic
from fgclip.core.stage import run_stage
from tests.support.llm_models import CHAT_TEMPLATE, build_tiny_causal_lm, smollm2_gguf

K = 10
SHORTS = [["large red striped circle", "small blue dotted square"], ["wooden chair"],
          ["man", "blue striped shirt", "circle"]]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


def write_regions(folder: Path, shorts: list[list[str]] = SHORTS) -> None:
    records = [{"key": f"k{i}", "width": 64, "height": 48,
                "regions": [{"bbox": [0.1, 0.1, 0.5, 0.5], "score": 0.9, "short_expr": s, "long_expr": s} for s in group]}
               for i, group in enumerate(shorts)]
    write_jsonl_atomic(annotation_path(folder, "00000"), records)


def hf_config(model: Path, **changes) -> NegativesConfig:
    return NegativesConfig(backend="hf", batch_size=4, hf=CausalLMConfig(model=str(model), max_new_tokens=12), **changes)


def test_hf_backend_gives_k_valid_negatives_and_counts_repairs(tiny_lm: Path, tmp_path: Path) -> None:
    write_regions(tmp_path / "regions")
    stage = NegativesStage(tmp_path / "regions", hf_config(tiny_lm), seed=1)
    summary = run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    out = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    for record, shorts in zip(out, SHORTS):
        schema.validate("negatives_record", record)
        for region, positive in zip(record["regions"], shorts):
            assert validate_negatives(positive, region["short_expr_negs"], K) == []
    # A random 2-layer model writes no usable phrases: every region is repaired, and says so.
    metrics = stage.metrics()
    assert metrics["negatives.regions"] == 6 == metrics["negatives.regions_repaired"]
    assert metrics["negatives.regions_fallback_negatives"] == 6 * K - metrics["negatives.regions_own_negatives"]
    assert summary.ignored["negatives_repaired"] == 6 and not summary.rejected
    assert metrics["negatives.backend.expressions"] == 6 and metrics["negatives.backend.tokens"] > 0
    assert metrics["negatives.backend.expressions_per_second"] > 0
    notes = read_jsonl(annotation_path(tmp_path / "out", "00000", "rejects"))
    assert {n["reason"] for n in notes} == {"negatives_repaired"} and all("from the fallback" in n["detail"] for n in notes)
    identity = stage.settings()["generator"]
    from fgclip.core.devices import resolve_device, resolve_dtype

    expected_dtype = str(resolve_dtype("auto", resolve_device("auto"))).removeprefix("torch.")  # float32 on cpu
    # a local folder is named by its folder name and a digest of its files, never its absolute path
    assert identity["engine"] == "hf" and identity["model"] == tiny_lm.name and len(identity["files_sha256"]) == 64
    assert identity["dtype"] == expected_dtype
    assert identity["prompt"] == "negatives.v1" and len(identity["prompt_sha256"]) == 64
    # greedy decoding: a fresh run writes the same bytes
    run_stage(NegativesStage(tmp_path / "regions", hf_config(tiny_lm), seed=1), ["00000"], tmp_path / "again", progress=False)
    assert annotation_path(tmp_path / "again", "00000").read_bytes() == annotation_path(tmp_path / "out", "00000").read_bytes()


def test_without_repair_short_regions_get_no_negatives(tiny_lm: Path, tmp_path: Path) -> None:
    write_regions(tmp_path / "regions", [["large red striped circle"]])
    stage = NegativesStage(tmp_path / "regions", hf_config(tiny_lm, repair=False), seed=1)
    result = stage.process_shard("00000")
    assert result.records[0]["regions"] == [{"short_expr_negs": []}]
    assert [r.reason for r in result.rejects] == ["negatives_incomplete"]
    assert stage.metrics()["negatives.regions_incomplete"] == 1


def test_misconfigured_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a model"):
        build_generator(NegativesConfig(backend="hf"))
    with pytest.raises(ValueError, match="cannot load the causal LM"):
        build_generator(hf_config(tmp_path / "nothing-here"))
    plain = build_tiny_causal_lm(tmp_path / "no-template", chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        build_generator(hf_config(plain))
    bad_prompt = tmp_path / "prompt.txt"
    bad_prompt.write_text("Rewrite {expresion} {count} times.")
    with pytest.raises(ValueError, match="has a field other than"):
        build_generator(hf_config(build_tiny_causal_lm(tmp_path / "ok", chat_template=CHAT_TEMPLATE), prompt=str(bad_prompt)))


class RecordingGenerator(NegativeGenerator):
    """Proposes rules-free fixed candidates and records the batch sizes it was given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def identity(self):
        return {"name": "recording"}

    def generate(self, expression, count, rng):
        raise AssertionError("the stage must call generate_batch")

    def generate_batch(self, requests, count):
        self.batches.append([r.expression for r in requests])
        return [Proposal([f"{c} {r.expression.split()[-1]}" for c in ("tiny", "huge", "pale")][:count]) for r in requests]


def test_stage_sends_batches_across_records(tmp_path: Path) -> None:
    write_regions(tmp_path / "regions")
    generator = RecordingGenerator()
    stage = NegativesStage(tmp_path / "regions", NegativesConfig(count=3, batch_size=4), seed=0, generator=generator)
    result = stage.process_shard("00000")
    assert [len(b) for b in generator.batches] == [4, 2]
    assert [e for b in generator.batches for e in b] == [s for group in SHORTS for s in group]
    assert result.records[2]["regions"][1] == {"short_expr_negs": ["tiny shirt", "huge shirt", "pale shirt"]}


def test_rules_generator_batch_matches_one_at_a_time() -> None:
    rules = build_generator(NegativesConfig())
    requests = [NegativeRequest(s, random.Random(i)) for i, s in enumerate(["red circle", "wooden chair"])]
    batch = rules.generate_batch(requests, K)
    assert [p.candidates for p in batch] == [rules.generate(s, K, random.Random(i))
                                             for i, s in enumerate(["red circle", "wooden chair"])]


@pytest.mark.slow
def test_hf_backend_with_the_real_smollm2_gguf(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    write_regions(tmp_path / "regions", [["large red striped circle", "small blue dotted square"], ["wooden chair"]])
    config = NegativesConfig(backend="hf", batch_size=3, hf=CausalLMConfig(
        model=str(gguf.parent), gguf_file=gguf.name, max_new_tokens=96))
    stage = NegativesStage(tmp_path / "regions", config, seed=0)
    assert stage.settings()["generator"]["gguf_file"] == gguf.name
    run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    metrics = stage.metrics()
    print(json.dumps(metrics, indent=1))
    for record in read_jsonl(annotation_path(tmp_path / "out", "00000")):
        assert all(len(region["short_expr_negs"]) == K for region in record["regions"])
    assert metrics["negatives.regions"] == 3 and metrics["negatives.backend.tokens"] > 0
    assert metrics["negatives.regions_own_negatives"] + metrics["negatives.regions_fallback_negatives"] == 3 * K
