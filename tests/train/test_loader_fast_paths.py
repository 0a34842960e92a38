"""The loader's fast paths give what the plain ones give: uint8 pixels normalised later,
reduced-scale JPEG decoding, the tokenizer's Rust backend (and its cache), numpy collation."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fgclip.train.collate import collate
from fgclip.train.examples import Example, TextTokenizer
from fgclip.train.images import ImageTransform
from fgclip.train.step import model_pixels


@pytest.fixture(scope="module")
def transform(tmp_path_factory) -> ImageTransform:
    from transformers import CLIPImageProcessorPil

    folder = tmp_path_factory.mktemp("processor")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        str(folder)
    )
    return ImageTransform.from_pretrained(folder)


def jpeg(width: int, height: int, seed: int = 0, smooth: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if smooth:  # a gradient plus a few blobs: what survives any good downscale alike
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    else:
        pixels = rng.integers(0, 255, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ------------------------------------------------------------------------ pixels


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (40, 40), (90, 50), (32, 32)])
def test_uint8_pixels_normalised_later_are_the_transform(transform, size):
    data = jpeg(*size)
    image, full_size = transform.decode(data)
    assert image.size == full_size == size  # not twice the output size: decoded at full scale
    pixels = transform.pixels(image, full_size)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    with Image.open(io.BytesIO(data)) as raw:
        rgb = raw.convert("RGB")
    exact = transform.exact_pixels(rgb)
    # torch's antialiased kernel is Pillow's filter in other fixed-point arithmetic
    difference = np.abs(pixels.astype(int) - exact.astype(int))
    assert difference.max() <= 2 and (difference > 0).mean() < 0.02
    # the normalisation moved to the step is exactly the transform's
    batch = torch.from_numpy(np.stack([exact, pixels])).permute(0, 3, 1, 2)
    normalised = transform.normalisation(batch)
    assert normalised.dtype == torch.float32 and normalised.is_contiguous()
    assert torch.equal(normalised[0], torch.from_numpy(transform(rgb)))


def test_large_jpeg_is_decoded_at_reduced_scale_and_keeps_its_full_size(transform):
    data = jpeg(400, 300, smooth=True)
    image, full_size = transform.decode(data)
    assert full_size == (400, 300)
    # resized size (42, 32): 400 // 42 = 9 and 300 // 32 = 9, so libjpeg scales by 1/8
    assert image.size == (50, 38)
    reduced = transform.pixels(image, full_size).astype(int)
    with Image.open(io.BytesIO(data)) as raw:
        full = transform.exact_pixels(raw.convert("RGB")).astype(int)
    assert reduced.shape == full.shape == (32, 32, 3)
    assert np.abs(reduced - full).mean() < 2.0  # the same picture, resampled another way
    # boxes follow the full size, whatever scale the pixels were decoded at
    assert transform.map_box([0.25, 0.0, 0.75, 1.0], *full_size) == transform.map_box([0.25, 0.0, 0.75, 1.0], 400, 300)


def test_greyscale_and_png_images_still_decode(transform):
    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 400), 128, dtype=np.uint8)).save(buffer, "JPEG")
    grey, size = transform.decode(buffer.getvalue())
    assert grey.mode == "RGB" and size == (400, 300)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(buffer, "PNG")
    png, size = transform.decode(buffer.getvalue())
    assert png.size == size == (400, 300)  # only JPEG has a reduced-scale decode
    assert transform.pixels(png, size).shape == (32, 32, 3)


def test_corrupt_image_raises_for_the_loader_to_count(transform):
    with pytest.raises(OSError):
        transform.decode(jpeg(400, 300)[:200])
    with pytest.raises(OSError):
        transform.decode(b"not an image")


def test_step_takes_uint8_or_normalised_pixels(transform):
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    normalised = transform.normalisation(pixels)
    from_uint8 = model_pixels(
        {"pixel_values": pixels, "pixel_normalisation": transform.normalisation},
        torch.device("cpu"),
        torch.float32,
    )
    assert torch.equal(from_uint8, normalised)
    already = model_pixels({"pixel_values": normalised}, torch.device("cpu"), torch.bfloat16)
    assert already.dtype == torch.bfloat16 and torch.equal(already, normalised.to(torch.bfloat16))


# ------------------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from fgclip.train.tokenizer import train_clip_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = [
        "a red striped square on the left",
        "two blue circles near a green triangle",
        "the large yellow star, and a small pink ring!",
    ] * 20
    train_clip_tokenizer(corpus, folder, vocab_size=400, min_frequency=1, model_max_length=77)
    return folder


TEXTS = [
    "a red square",
    "A  RED\tSquare",
    "Ünïcode café, 12 zebras!",
    "",
    "don't stop",
    "a red square",
    " ".join(["word"] * 120),
    "x" * 300,
    "a red square",
]


@pytest.mark.parametrize("max_length", [77, 8, 248])
def test_backend_tokenisation_equals_the_transformers_call(tokenizer_dir, max_length):
    tokenizer = TextTokenizer(tokenizer_dir)
    expected = tokenizer.tokenizer(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert tokenizer.encode(TEXTS, max_length) == expected
    assert tokenizer._backends[max_length] is not None  # the fast path was taken
    assert tokenizer.encode(list(reversed(TEXTS)), max_length) == list(reversed(expected))  # cached: same ids
    assert all(len(ids) <= max_length for ids in expected)


def test_cache_starts_over_when_full_and_ids_are_copies(tokenizer_dir, monkeypatch):
    tokenizer = TextTokenizer(tokenizer_dir)
    monkeypatch.setattr(TextTokenizer, "CACHE_SIZE", 3)
    first = tokenizer.encode(["a red square", "a blue ring"], 77)
    first[0].append(-1)  # a caller changing its ids does not change the cache
    again = tokenizer.encode(["a red square", "two", "three", "four"], 77)
    assert len(tokenizer._cache[77]) <= 4 and -1 not in again[0]
    assert (
        again
        == tokenizer.tokenizer(["a red square", "two", "three", "four"], truncation=True, max_length=77)["input_ids"]
    )


def test_a_backend_that_disagrees_falls_back_to_the_transformers_call(tokenizer_dir, caplog):
    from tokenizers import Tokenizer

    tokenizer = TextTokenizer(tokenizer_dir)
    hf = tokenizer.tokenizer
    other = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    other.post_processor = None  # no start/end tokens: not what the transformers call gives

    class Disagreeing:
        backend_tokenizer = other
        truncation_side = "right"

        def __call__(self, *args, **kwargs):
            return hf(*args, **kwargs)

    tokenizer._tokenizer = Disagreeing()
    with caplog.at_level(logging.WARNING, logger="fgclip.train.examples"):
        ids = tokenizer.encode(TEXTS, 77)
    assert tokenizer._backends[77] is None and "other ids" in caplog.text
    assert ids == hf(TEXTS, truncation=True, max_length=77)["input_ids"]


# ---------------------------------------------------------------------- collation


def reference_collate(examples, pad_id, max_boxes, max_negatives):
    """Slot by slot, the obvious way."""

    def pad(rows):
        width = max([len(r) for r in rows] + [1])
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, : len(r)] = 1
        return ids, att

    size = len(examples)
    out = {"keys": [e.key for e in examples]}
    out["short_ids"], out["short_attention"] = pad([e.short_ids for e in examples])
    out["long_ids"], out["long_attention"] = pad([e.long_ids for e in examples])
    slots = [(b, m) for b, e in enumerate(examples) for m in range(len(e.boxes))]
    out["boxes"] = torch.zeros((size, max_boxes, 4))
    out["box_valid"] = torch.zeros((size, max_boxes), dtype=torch.bool)
    out["box_uses_short"] = torch.zeros((size, max_boxes), dtype=torch.bool)
    for b, m in slots:
        out["boxes"][b, m] = torch.tensor(examples[b].boxes[m])
        out["box_valid"][b, m] = True
        out["box_uses_short"][b, m] = examples[b].box_uses_short[m]
    for name, rows_of in (("box", lambda e: e.box_ids), ("pos", lambda e: e.pos_ids)):
        flat, flat_att = pad([rows_of(examples[b])[m] for b, m in slots])
        ids = torch.full((size, max_boxes, flat.shape[1]), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for row, (b, m) in enumerate(slots):
            ids[b, m], att[b, m] = flat[row], flat_att[row]
        out[f"{name}_ids"], out[f"{name}_attention"] = ids, att
    negs = [(b, m, k) for b, m in slots for k in range(len(examples[b].neg_ids[m]))]
    flat, flat_att = pad([examples[b].neg_ids[m][k] for b, m, k in negs])
    out["neg_ids"] = torch.full((size, max_boxes, max_negatives, flat.shape[1]), pad_id, dtype=torch.long)
    out["neg_attention"] = torch.zeros_like(out["neg_ids"])
    out["neg_valid"] = torch.zeros((size, max_boxes, max_negatives), dtype=torch.bool)
    for row, (b, m, k) in enumerate(negs):
        out["neg_ids"][b, m, k], out["neg_attention"][b, m, k] = (
            flat[row],
            flat_att[row],
        )
        out["neg_valid"][b, m, k] = True
    return out


def random_example(rng: random.Random, key: str, max_boxes: int, max_negatives: int, boxes: int) -> Example:
    ids = lambda: [98] + [rng.randint(1, 90) for _ in range(rng.randint(0, 12))] + [99]  # noqa: E731
    example = Example(
        key=key,
        pixels=np.full((4, 4, 3), len(key), dtype=np.uint8),
        short_ids=ids(),
        long_ids=ids(),
    )
    for _ in range(boxes):
        x, y = rng.random() * 0.5, rng.random() * 0.5
        example.boxes.append((x, y, x + 0.3, y + 0.4))
        example.box_ids.append(ids())
        uses_short = rng.random() < 0.5
        example.box_uses_short.append(uses_short)
        negatives = [ids() for _ in range(rng.choice([0, 1, max_negatives]))]
        example.pos_ids.append(ids() if negatives and not uses_short else [])
        example.neg_ids.append(negatives)
    return example


@pytest.mark.parametrize("box_counts", [[0, 0, 0], [1, 0, 3], [3, 3, 2, 1]])
def test_collate_equals_the_slot_by_slot_reference(box_counts):
    rng = random.Random(len(box_counts) * 10 + sum(box_counts))
    examples = [random_example(rng, f"k{index}", 3, 4, boxes) for index, boxes in enumerate(box_counts)]
    batch = collate(examples, pad_id=0, stage=2, max_boxes=3, max_negatives=4)
    expected = reference_collate(examples, 0, 3, 4)
    assert batch["keys"] == expected["keys"]
    for name, tensor in expected.items():
        if name == "keys":
            continue
        assert batch[name].dtype == tensor.dtype and torch.equal(batch[name], tensor), name
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (len(examples), 3, 4, 4)
    assert int(batch["pixel_values"][1, 2, 0, 0]) == len("k1")
