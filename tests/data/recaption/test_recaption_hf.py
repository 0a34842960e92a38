"""recaption backend `hf`: a tiny LLaVA saved by the test goes through the real
AutoProcessor / AutoModelForImageTextToText `from_pretrained(local_dir)` path. Its
captions are random words, so the tests check mechanics: one result per sample, batching
that does not change results, rejects with reasons, determinism and the fingerprint."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from fgclip.data.recaption.config import HFCaptionerConfig, RecaptionConfig
from fgclip.data.recaption.interface import CaptionContext, make_backend, BackendResources
from fgclip.data.recaption.stage import RecaptionStage
from fgclip.core.shards import RawSample, ShardSample, annotation_path, read_jsonl, write_image_shard
from fgclip.core.stage import run_stage
from tests.support.tiny_vision_models import save_tiny_llava

SIZES = [(320, 240), (64, 64), (120, 300), (200, 150), (90, 60)]
CONTEXT = CaptionContext("00000", 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")


def jpeg(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def samples() -> list[RawSample]:
    return [RawSample(f"k{i}", jpeg(w, h, (40 * i, 200 - 30 * i, 90)), "jpg", w, h, "alt") for i, (w, h) in enumerate(SIZES)]


def config(model_dir: Path, **hf: object) -> RecaptionConfig:
    # a high repetition penalty walks the random model through its small vocabulary to "." (a stop token)
    settings = {"model": str(model_dir), "device": "cpu", "max_new_tokens": 40, "repetition_penalty": 10.0, **hf}
    return RecaptionConfig(backend="hf", batch_size=4, hf=HFCaptionerConfig(**settings))


@pytest.fixture(scope="module")
def backend(model_dir: Path):
    return make_backend(config(model_dir), BackendResources())


def test_batched_captions_equal_one_at_a_time(backend) -> None:
    batch = samples()
    together = backend.caption(batch, CONTEXT)
    alone = [backend.caption([sample], CONTEXT)[0] for sample in batch]
    assert len(together) == len(batch)
    assert together == alone  # left padding and the attention mask keep rows independent
    assert all(result.text or result.error in ("caption_truncated", "empty_caption") for result in together)
    assert sum(bool(result.text) for result in together) >= 3
    assert len({result.text for result in together}) > 1  # the image reaches the model


def test_unreadable_image_is_a_reject_and_the_rest_is_captioned(backend) -> None:
    batch = samples()[:3]
    broken = RawSample("broken", b"not a jpeg", "jpg", 10, 10, "alt")
    results = backend.caption([batch[0], broken, batch[1], batch[2]], CONTEXT)
    assert results[1].error == "image_unreadable" and "UnidentifiedImageError" in results[1].detail
    assert [r for i, r in enumerate(results) if i != 1] == backend.caption(batch, CONTEXT)


def test_identity_names_model_files_prompt_and_generation(backend, model_dir: Path) -> None:
    identity = backend.identity()
    assert identity["name"] == "hf" and identity["model"] == "tiny-llava"
    assert str(model_dir) not in str(identity)  # the same weights elsewhere make the same data
    assert len(identity["files_sha256"]) == 64 and len(identity["prompt_sha256"]) == 64
    assert identity["prompt"] == "recaption.v1" and identity["dtype"] == "float32"
    assert identity["generation"]["max_new_tokens"] == 40 and identity["generation"]["do_sample"] is False


def test_stage_writes_one_record_or_reject_per_sample_and_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_image_shard(images, "00000", [ShardSample(s.key, s.image_bytes, "alt", {}) for s in samples()])
    stage = RecaptionStage(images, None, config(model_dir), seed=3)
    first = run_stage(stage, ["00000"], tmp_path / "a", progress=False)
    second = run_stage(stage, ["00000"], tmp_path / "b", progress=False)
    records = read_jsonl(annotation_path(tmp_path / "a", "00000"))
    rejects = read_jsonl(annotation_path(tmp_path / "a", "00000", "rejects"))
    assert len(records) + len(rejects) == len(SIZES) == first.items_in
    assert annotation_path(tmp_path / "a", "00000").read_bytes() == annotation_path(tmp_path / "b", "00000").read_bytes()
    assert second.items_out == first.items_out
    metrics = stage.metrics()
    assert metrics["recaption.backend.images"] == 2 * len(SIZES) and metrics["recaption.backend.images_per_second"] > 0
    assert metrics["recaption.backend.tokens"] > 0 and metrics["recaption.backend.tokens_per_second"] > 0


def test_prompt_change_changes_the_fingerprint(model_dir: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "my-prompt.txt"
    prompt.write_text("describe this image in detail")
    default = make_backend(config(model_dir), BackendResources()).identity()
    custom = make_backend(config(model_dir).model_copy(update={"prompt": str(prompt)}), BackendResources()).identity()
    assert custom["prompt_sha256"] != default["prompt_sha256"] and custom["model"] == default["model"]


def test_truncated_captions_keep_whole_sentences_or_are_rejected(model_dir: Path) -> None:
    from fgclip.data.recaption.backends.hf import complete_sentences

    assert complete_sentences("A red circle. A blue sq") == "A red circle."
    assert complete_sentences("A red circ") == ""
    short = make_backend(config(model_dir, max_new_tokens=1), BackendResources())
    results = short.caption(samples(), CONTEXT)
    # one token never ends a sentence of this vocabulary, unless the model stops at once
    assert {r.error for r in results} <= {"caption_truncated", "empty_caption"}
    assert short.metrics()["recaption.backend.truncated"] == sum(r.error == "caption_truncated" for r in results)


def test_sampling_is_seeded(model_dir: Path) -> None:
    sampler = make_backend(config(model_dir, do_sample=True, temperature=1.5, max_new_tokens=6), BackendResources())
    batch = samples()[:2]
    assert sampler.caption(batch, CONTEXT) == sampler.caption(batch, CONTEXT)


def test_config_and_loading_errors_are_clear(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recaption.hf.model"):
        RecaptionConfig(backend="hf")
    with pytest.raises(ValueError, match="cannot load the caption processor"):
        make_backend(config(tmp_path / "nowhere", local_files_only=True), BackendResources())
    no_template = tmp_path / "no-template"
    save_tiny_llava(no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        make_backend(config(no_template), BackendResources())
    # plain: the prompt file is the whole model input (task-prompt models); LLaVA needs its image token in it
    prompt = tmp_path / "plain.txt"
    prompt.write_text("<image> describe this image")
    plain = make_backend(config(no_template, prompt_format="plain").model_copy(update={"prompt": str(prompt)}),
                         BackendResources())
    accepted = plain.caption(samples()[:2], CONTEXT)
    assert len(accepted) == 2 and all(result.error != "preprocess_failed" for result in accepted)
    # a prompt the processor refuses for every image: each sample is a counted reject, no crash
    prompt.write_text("describe this image")
    refused = make_backend(config(no_template, prompt_format="plain").model_copy(update={"prompt": str(prompt)}),
                           BackendResources())
    results = refused.caption(samples()[:2], CONTEXT)
    assert [r.error for r in results] == ["preprocess_failed"] * 2 and "image" in results[0].detail.lower()


def test_component_switches_to_hf_by_params_alone(model_dir: Path, tmp_path: Path) -> None:
    import argparse
    import json

    from fgclip.data.recaption.cli import command
    from fgclip.config import load_params

    images = tmp_path / "images"
    write_image_shard(images, "00000", [ShardSample(s.key, s.image_bytes, "alt", {}) for s in samples()[:3]])
    params = load_params(None, {"tracking.enabled": False, "recaption.backend": "hf", "recaption.hf.model": str(model_dir),
                                "recaption.hf.max_new_tokens": 40, "recaption.hf.repetition_penalty": 10.0,
                                "recaption.hf.device": "cpu"})
    args = argparse.Namespace(images=str(images), truth=None, out=str(tmp_path / "captions"), report=str(tmp_path / "r.json"),
                              shards=None, no_progress=True)
    assert command(args, params) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["items_in"] == 3 and report["items_out"] + report["rejected_total"] == 3
    manifest = json.loads(annotation_path(tmp_path / "captions", "00000", "manifest").read_text())
    assert manifest["settings"]["backend"]["name"] == "hf" and manifest["settings"]["backend"]["prompt"] == "recaption.v1"
