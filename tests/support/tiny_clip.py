"""Tiny CLIP / FG-CLIP models built from config (no hub, CPU, milliseconds per call).

A pytest plugin (registered by tests/conftest.py): the model, train and eval tests get
these helpers as fixtures.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

# Token ids of the tiny vocabulary (CLIP's real ones are 49406 / 49407).
BOS, EOS, PAD = 98, 99, 0
VOCAB_SIZE = 100
IMAGE_SIZE, PATCH_SIZE = 32, 8  # a 4x4 patch grid


def tiny_clip_config(**text_overrides: object) -> CLIPConfig:
    """A CLIP config with real position counts (77 text positions) but tiny widths."""
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=77,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    text.update(text_overrides)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=2.6592)


def make_tiny_clip(seed: int = 0, **text_overrides: object) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(**text_overrides)).eval()


def token_batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (BOS, words..., EOS, PAD...) and attention mask; lengths include BOS/EOS."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, BOS, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = BOS, EOS
        mask[row, :length] = 1
    return ids, mask


@pytest.fixture
def clip_factory():
    """make_tiny_clip(seed=0, **text_config_overrides) -> CLIPModel."""
    return make_tiny_clip


@pytest.fixture
def tokens():
    """token_batch(lengths, width, seed=0) -> (input_ids, attention_mask)."""
    return token_batch


@pytest.fixture
def tiny_clip() -> CLIPModel:
    return make_tiny_clip()


@pytest.fixture
def tiny_fgclip(tiny_clip: CLIPModel):
    from fgclip.model import convert_clip_to_fgclip

    return convert_clip_to_fgclip(tiny_clip).eval()


@pytest.fixture
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
