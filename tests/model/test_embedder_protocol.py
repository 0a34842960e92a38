"""The FG-CLIP adapter keeps the evaluation protocol: pixels normalised exactly once, the
model's own resolution whatever size the saved processor names, and long captions read
past 77 tokens on the long path (the errors that broke the reference scripts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fgclip.model.embedder import FGCLIPEmbedder
from tests.support.train_kit import build_tiny_model, tiny_params, write_dataset


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    dirs = write_dataset(root / "data", shards=1, per_shard=8)
    return build_tiny_model(root / "model", dirs, tiny_params(root))


def picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))


def test_pixels_are_normalised_once(model_dir: Path) -> None:
    embedder = FGCLIPEmbedder(model_dir, "cpu")
    side = embedder.input_size()
    processor = embedder.processor
    mean, std = np.asarray(processor.image_mean)[:, None, None], np.asarray(processor.image_std)[:, None, None]
    resized = np.asarray(picture().resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    once = (resized.transpose(2, 0, 1) - mean) / std
    twice = (once - mean) / std  # what a dataset transform + the processor would do
    pixels = embedder._pixels([picture()], whole=True)[0].numpy()
    np.testing.assert_allclose(pixels, once, atol=1e-4)
    assert np.abs(pixels - twice).max() > 0.5
    rows, _ = embedder.encode_images([picture()], [np.zeros((0, 4))], view="whole")
    with torch.no_grad():
        expected = embedder.model.get_image_features(torch.tensor(once[None], dtype=torch.float32))
    np.testing.assert_allclose(rows[0], expected[0].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="pass decoded PIL images"):
        embedder.encode_images([once.astype(np.float32)], [np.zeros((0, 4))])  # type: ignore[list-item]


def test_the_model_resolution_wins_over_a_processor_saved_at_another(tmp_path: Path, model_dir: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    embedder = FGCLIPEmbedder(copy, "cpu")
    side = embedder.input_size()
    embedder.processor.size = {"shortest_edge": 2 * side}  # as a processor saved at another size would say
    embedder.processor.crop_size = {"height": 2 * side, "width": 2 * side}
    for whole in (True, False):
        assert tuple(embedder._pixels([picture()], whole=whole).shape) == (1, 3, side, side)
    assert embedder.identity()["image_size"] == side


def test_long_captions_are_read_past_77_tokens_on_the_long_path_only(model_dir: Path) -> None:
    embedder = FGCLIPEmbedder(model_dir, "cpu")
    assert (embedder.text_capacity(True), embedder.text_capacity(False)) == (248, 77)
    words = ("a red square on the left " * 30).split()  # 180 words
    changed = [*words[:150], "blue", *words[151:]]  # differs at word 150: past 77 tokens, within 248
    texts = [" ".join(words), " ".join(changed)]
    counts = embedder.token_counts(texts, long=True)
    assert 77 < counts[0] <= 248 and counts[0] == counts[1]
    long_rows = embedder.encode_texts(texts, long=True)
    short_rows = embedder.encode_texts(texts, long=False)
    assert not np.allclose(long_rows[0], long_rows[1], atol=1e-6)  # the long path sees the change
    np.testing.assert_allclose(short_rows[0], short_rows[1], atol=1e-6)  # the short path cut it off
