"""The trainer's tokenizer, base-model builder and streaming loader, on tiny shards built here."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fgclip.train.data import DataPosition, list_shard_urls, make_loader, plan_epoch, real_batches
from fgclip.train.examples import AnnotationDirs, StreamSettings
from fgclip.train.images import ImageTransform
from tests.support.train_kit import build_tiny_model, sample_key, tiny_params, write_dataset

MISSING = {"captions": {sample_key(0, 1), sample_key(2, 5)}, "regions": {sample_key(1, 2)}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    dirs = write_dataset(root, shards=4, per_shard=12, missing=MISSING)
    params = tiny_params(root)
    model_dir = build_tiny_model(root / "model", dirs, params)
    return dirs, model_dir, params


def settings_for(world, stage: int = 2, **changes) -> StreamSettings:
    dirs, model_dir, params = world
    train = params.train
    settings = StreamSettings(
        model_dir=str(model_dir),
        dirs=AnnotationDirs(
            str(dirs["captions"]),
            str(dirs["regions"]) if stage == 2 else None,
            str(dirs["negatives"]) if stage == 2 else None,
        ),
        stage=stage,
        seed=3,
        batch_size=4,
        max_boxes=2,
        max_negatives=5,
        short_prefix=train.short_prefix,
        short_text_length=train.short_text_length,
        long_text_length=train.long_text_length,
        min_box_visible_fraction=train.min_box_visible_fraction,
        long_expression_rate=0.5,
        shuffle_buffer=8,
        log_skipped_samples=10,
    )
    return dataclasses.replace(settings, **changes)


def epoch_batches(world, settings, workers=0, epoch=0, position=None, world_size=1):
    urls = list_shard_urls(world[0]["images"])
    plan = plan_epoch(
        urls, world_size=world_size, workers=workers, batch_size=settings.batch_size, samples_per_epoch=None
    )
    return plan, list(real_batches(make_loader(settings, plan, position or DataPosition(epoch))))


# ------------------------------------------------------------------ tokenizer / model


def test_demo_tokenizer_files_load_in_transformers_clip_tokenizer(world, tmp_path):
    from transformers import CLIPTokenizer

    _, model_dir, _ = world
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    from_files = CLIPTokenizer.from_pretrained(str(tmp_path))  # vocab.json + merges.txt only
    saved = CLIPTokenizer.from_pretrained(str(model_dir))
    text = "A photo of a RED Square, 12 zebras!"
    ids = saved(text)["input_ids"]
    assert ids == from_files(text)["input_ids"]
    assert ids[0] == saved.bos_token_id and ids[-1] == saved.eos_token_id
    tokens = saved.convert_ids_to_tokens(ids)
    assert "red</w>" in tokens and "square</w>" in tokens  # lowercased, words learned whole
    assert saved.pad_token == saved.eos_token == "<|endoftext|>"


def test_demo_base_is_an_fgclip_checkpoint_sized_by_params(world):
    from fgclip.model import FGCLIPModel

    _, model_dir, params = world
    model, info = FGCLIPModel.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    spec = params.model.demo
    assert model.config.text_config.hidden_size == spec.text_hidden_size
    assert model.config.vision_config.image_size == spec.image_size
    assert model.config.long_text_positions_stretched and model.config.long_text_max_position_embeddings == 248
    vocab = json.loads((model_dir / "vocab.json").read_text())
    assert model.config.text_config.vocab_size == len(vocab)
    assert model.config.text_config.eos_token_id == vocab["<|endoftext|>"]
    assert model.config.fgclip_training_stage == 0


def test_init_model_converts_a_real_clip_base_once(world, tmp_path, clip_factory):
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    from fgclip.model import FGCLIPModel
    from fgclip.train.init_model import init_model

    _, model_dir, params = world
    clip_dir = tmp_path / "clip"
    clip = clip_factory(seed=5, vocab_size=len(json.loads((model_dir / "vocab.json").read_text())))
    clip.save_pretrained(clip_dir)
    CLIPTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(clip_dir))
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        str(clip_dir)
    )

    first = FGCLIPModel.from_pretrained(init_model(str(clip_dir), tmp_path / "a", params))
    second = FGCLIPModel.from_pretrained(init_model(str(tmp_path / "a"), tmp_path / "b", params))
    table = first.text_model.embeddings.position_embedding_res.weight
    assert table.shape[0] == 248
    assert torch.equal(
        first.text_model.embeddings.position_embedding.weight, clip.text_model.embeddings.position_embedding.weight
    )
    for name, tensor in first.state_dict().items():  # converting a converted model changes nothing
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert (tmp_path / "b" / "preprocessor_config.json").is_file()


# ------------------------------------------------------------------------- images


def test_image_transform_matches_clip_image_processor_and_moves_boxes(tmp_path):
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(str(tmp_path))
    transform = ImageTransform.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    expected = processor(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(transform(image), expected, atol=1e-5)

    # 64x48 -> 42x32, crop 32x32 from x=5: the left 5/42 of the width is cut away
    box, visible = transform.map_box([0.0, 0.0, 0.5, 1.0], 64, 48)
    assert visible == pytest.approx((21 - 5) / 21)
    assert box == pytest.approx((0.0, 0.0, 16 / 32, 1.0))
    _, hidden = transform.map_box([0.0, 0.2, 0.1, 0.4], 64, 48)
    assert hidden < 0.5  # mostly cut away: the loader drops it


# ------------------------------------------------------------------------- batches


def test_stage2_batches_are_padded_masked_and_trimmed(world):
    settings = settings_for(world)
    _, batches = epoch_batches(world, settings)
    batch = batches[0]
    size, boxes, negatives = settings.batch_size, settings.max_boxes, settings.max_negatives
    assert batch["pixel_values"].shape == (size, 3, 32, 32)
    assert batch["boxes"].shape == (size, boxes, 4) and batch["box_valid"].shape == (size, boxes)
    assert batch["neg_ids"].shape[:3] == (size, boxes, negatives)
    assert batch["neg_valid"].shape == (size, boxes, negatives)
    pad = batch["pad_token_id"]
    for name in ("short", "long", "box", "pos", "neg"):
        ids, attention = batch[f"{name}_ids"], batch[f"{name}_attention"]
        assert ids.shape == attention.shape
        assert bool((ids[attention == 0] == pad).all())
        if attention.any():  # trimmed: the longest text fills the last column
            assert bool(attention[..., -1].any())
    valid = batch["box_valid"]
    assert bool(valid.any())
    assert bool((batch["boxes"][valid][:, 2:] > batch["boxes"][valid][:, :2]).all())
    assert bool(((batch["boxes"] >= 0) & (batch["boxes"] <= 1)).all())
    assert not batch["boxes"][~valid].any() and not batch["box_attention"][~valid].any()
    # the kit writes 3 negatives per box; masked slots carry no tokens
    assert bool((batch["neg_valid"].sum(-1)[valid] == 3).all())
    assert not batch["neg_valid"][~valid].any()
    assert not batch["neg_attention"][~batch["neg_valid"]].any()
    # a positive is encoded only where the box text is the long expression and negatives exist
    needs = batch["neg_valid"].any(-1) & ~batch["box_uses_short"] & valid
    assert torch.equal(batch["pos_attention"].any(-1), needs)


def test_stage1_batches_carry_images_and_captions_only(world):
    settings = settings_for(world, stage=1)
    _, batches = epoch_batches(world, settings)
    assert set(batches[0]) >= {"pixel_values", "short_ids", "long_ids", "short_attention", "long_attention"}
    assert "boxes" not in batches[0] and "neg_ids" not in batches[0]


def test_texts_are_truncated_with_the_end_token_kept(world):
    settings = settings_for(world, stage=1, long_text_length=6)
    _, batches = epoch_batches(world, settings)
    long_ids = batches[0]["long_ids"]
    from fgclip.train.tokenizer import load_tokenizer

    eos = load_tokenizer(settings.model_dir).eos_token_id
    assert long_ids.shape[1] == 6 and bool((long_ids[:, -1] == eos).all())


def test_samples_without_annotations_are_counted_and_skipped(world, caplog):
    settings = settings_for(world)
    with caplog.at_level(logging.WARNING, logger="fgclip.train.data"):
        _, batches = epoch_batches(world, settings)
    seen = {key for batch in batches for key in batch["keys"]}
    missing = set().union(*MISSING.values())
    assert not seen & missing
    skipped: dict[str, int] = {}
    for batch in batches:
        for reason, count in batch["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    assert skipped.get("missing_caption", 0) >= 2 and skipped.get("missing_regions", 0) >= 1
    assert set(skipped) <= {"missing_caption", "missing_regions"}
    assert sample_key(1, 2) in caplog.text and "missing_regions" in caplog.text
    # stage 1 does not need regions: that sample is used there
    _, stage1 = epoch_batches(world, settings_for(world, stage=1))
    assert sample_key(1, 2) in {key for batch in stage1 for key in batch["keys"]}


# ------------------------------------------------------- splitting, epochs, resuming


def test_ranks_and_workers_get_disjoint_samples_and_fixed_epochs(world, monkeypatch):
    settings = settings_for(world, stage=1)
    by_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        plan, batches = epoch_batches(world, settings, workers=2, world_size=2)
        assert len(batches) == plan.batches_per_epoch == 48 // 2 // settings.batch_size
        keys = {key for batch in batches for key in batch["keys"]}
        by_worker = [{k for b in batches if b["worker"] == w for k in b["keys"]} for w in range(2)]
        assert not by_worker[0] & by_worker[1]
        # shards rank, rank + 2 (webdataset's split); a stream short of an epoch repeats
        assert keys == {sample_key(s, i) for s in (rank, rank + 2) for i in range(12)} - MISSING["captions"]
        by_rank.append(keys)
    assert not by_rank[0] & by_rank[1]


def test_stream_is_a_function_of_seed_epoch_rank_worker(world):
    settings = settings_for(world)
    _, first = epoch_batches(world, settings, workers=2)
    _, again = epoch_batches(world, settings, workers=2)
    _, next_epoch = epoch_batches(world, settings, workers=2, epoch=1)
    _, other_seed = epoch_batches(world, dataclasses.replace(settings, seed=4), workers=2)
    assert [b["keys"] for b in first] == [b["keys"] for b in again]
    for a, b in zip(first, again):
        for name in ("pixel_values", "boxes", "box_uses_short", "box_ids", "neg_ids"):
            assert torch.equal(a[name], b[name]), name
    assert [b["keys"] for b in first] != [b["keys"] for b in next_epoch]
    assert [b["keys"] for b in first] != [b["keys"] for b in other_seed]


@pytest.mark.parametrize("taken", [3, 4])
def test_resumed_epoch_continues_with_the_same_batches(world, taken):
    settings = settings_for(world)
    _, full = epoch_batches(world, settings, workers=2, epoch=1)
    position = DataPosition(1)
    for batch in full[:taken]:
        position.advance(batch)
    _, rest = epoch_batches(world, settings, workers=2, position=position)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[taken:]]
    for a, b in zip(rest, full[taken:]):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["neg_ids"], b["neg_ids"])


def test_plan_refuses_more_streams_than_shards(world):
    urls = list_shard_urls(world[0]["images"])
    with pytest.raises(ValueError, match="shards cannot feed"):
        plan_epoch(urls, world_size=2, workers=4, batch_size=4, samples_per_epoch=None)
    with pytest.raises(ValueError, match="no full batch"):
        plan_epoch(urls, world_size=1, workers=0, batch_size=64, samples_per_epoch=None)
