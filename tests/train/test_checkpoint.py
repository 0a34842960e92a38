"""CLIP -> FG-CLIP conversion, HF save / reload, idempotency and optimiser groups."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from fgclip.model import (
    TEMPERATURE_PARAMETER_NAMES,
    FGCLIPModel,
    adamw_param_groups,
    convert_checkpoint,
    convert_clip_to_fgclip,
    is_fgclip_checkpoint,
)

# Parameter names of the published qihoo360/fg-clip-base weights that CLIP lacks.
PUBLISHED_FGCLIP_NAMES = {
    "text_model.embeddings.position_embedding_ori.weight",
    "text_model.embeddings.position_embedding_res.weight",
    "text_filip_projection.weight",
    "logit_scale",
    "logit_scale_finegraind",
    "logit_scale_hardneg",
}


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name


@pytest.fixture
def clip_dir(tiny_clip, tmp_path: Path) -> Path:
    directory = tmp_path / "clip"
    tiny_clip.save_pretrained(directory)
    return directory


@pytest.fixture
def fgclip_dir(clip_dir: Path, tmp_path: Path) -> Path:
    (clip_dir / "preprocessor_config.json").write_text('{"crop_size": 32}')  # travels along
    return convert_checkpoint(clip_dir, tmp_path / "fgclip")


def test_reload_has_no_missing_or_unexpected_keys(fgclip_dir: Path) -> None:
    model, info = FGCLIPModel.from_pretrained(fgclip_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.long_text_positions_stretched
    assert model.config._attn_implementation == "sdpa"


def test_auto_model_opens_the_checkpoint_and_forward_gives_features(fgclip_dir: Path, pixel_values, tokens) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(fgclip_dir)
    assert isinstance(model, FGCLIPModel)
    ids, mask = tokens([5, 40], width=248)
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, long=True, return_dense=True)
        torch.testing.assert_close(output.image_features, model.get_image_features(pixel_values))
        torch.testing.assert_close(output.text_features, model.get_text_features(ids, mask, long=True))
    assert output.dense_features.shape == (2, 4, 4, model.config.projection_dim)


def test_saved_checkpoint_uses_the_published_parameter_names(fgclip_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(fgclip_dir / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert PUBLISHED_FGCLIP_NAMES <= names
    assert "text_model.embeddings.position_embedding.weight" in names  # the 77-row short table
    config = json.loads((fgclip_dir / "config.json").read_text())
    assert config["long_text_positions_stretched"] is True
    assert config["source_max_position_embeddings"] == 77
    assert config["long_text_max_position_embeddings"] == 248
    assert (fgclip_dir / "preprocessor_config.json").read_text() == '{"crop_size": 32}'


def test_conversion_initialises_from_clip(tiny_clip, clip_dir: Path) -> None:
    model = convert_clip_to_fgclip(clip_dir)
    assert torch.equal(model.text_filip_projection.weight, tiny_clip.text_projection.weight)
    for name in TEMPERATURE_PARAMETER_NAMES:
        assert torch.equal(getattr(model, name), tiny_clip.logit_scale)
    clip_state = tiny_clip.state_dict()
    for name, tensor in model.state_dict().items():
        if name in clip_state:
            assert torch.equal(tensor, clip_state[name]), name


def test_converting_again_is_a_no_op(fgclip_dir: Path, tmp_path: Path) -> None:
    converted = FGCLIPModel.from_pretrained(fgclip_dir)
    with torch.no_grad():  # as after training: the long tables and temperatures moved
        converted.text_model.embeddings.position_embedding_res.weight.add_(1.0)
        converted.logit_scale_hardneg.fill_(1.5)
    assert convert_clip_to_fgclip(converted) is converted
    converted.save_pretrained(tmp_path / "trained")

    again = convert_clip_to_fgclip(tmp_path / "trained")
    assert_same_weights(again, converted)
    convert_checkpoint(tmp_path / "trained", tmp_path / "twice")
    assert_same_weights(FGCLIPModel.from_pretrained(tmp_path / "twice"), converted)


def test_temperatures_survive_save_and_reload(tiny_fgclip, tmp_path: Path) -> None:
    values = {name: math.log(v) for name, v in zip(TEMPERATURE_PARAMETER_NAMES, (33.0, 44.0, 55.0))}
    with torch.no_grad():
        for name, value in values.items():
            getattr(tiny_fgclip, name).fill_(value)
    tiny_fgclip.save_pretrained(tmp_path / "resume")
    reloaded = FGCLIPModel.from_pretrained(tmp_path / "resume")
    for name, value in values.items():
        assert getattr(reloaded, name).item() == pytest.approx(value)
    assert reloaded.logit_scale_regional is reloaded.logit_scale_finegraind


def test_plain_clip_is_refused_by_from_pretrained(clip_dir: Path) -> None:
    assert not is_fgclip_checkpoint(clip_dir)
    with pytest.raises(ValueError, match="convert"):
        FGCLIPModel.from_pretrained(clip_dir)


def test_published_layout_without_our_flags_is_recognised(fgclip_dir: Path, pixel_values) -> None:
    """A v1 release checkpoint: FG-CLIP weights, a config without our fields, and
    persisted position_ids buffers holding junk (seen in the published files)."""
    from safetensors.torch import load_file, save_file

    config_path = fgclip_dir / "config.json"
    config = json.loads(config_path.read_text())
    for field in ("long_text_positions_stretched", "source_max_position_embeddings"):
        config.pop(field)
    config["model_type"] = "clip"
    config_path.write_text(json.dumps(config))
    weights_path = fgclip_dir / "model.safetensors"
    weights = load_file(weights_path)
    for tower in ("text_model", "vision_model"):
        weights[f"{tower}.embeddings.position_ids"] = torch.full((1, 17), 12345)
    save_file(weights, weights_path, metadata={"format": "pt"})

    assert is_fgclip_checkpoint(fgclip_dir)
    reference, info = FGCLIPModel.from_pretrained(fgclip_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reference.config.long_text_positions_stretched
    assert_same_weights(convert_clip_to_fgclip(fgclip_dir), reference)
    with torch.no_grad():
        assert torch.isfinite(reference.get_image_features(pixel_values)).all()


def test_bare_config_model_is_converted_in_place(tiny_fgclip) -> None:
    config = copy.deepcopy(tiny_fgclip.config)
    config.long_text_positions_stretched = False
    fresh = FGCLIPModel(config)
    assert convert_clip_to_fgclip(fresh) is fresh
    assert fresh.config.long_text_positions_stretched
    assert torch.equal(fresh.text_filip_projection.weight, fresh.text_projection.weight)


def test_adamw_groups_spare_temperatures_biases_and_norms(tiny_fgclip) -> None:
    decay, no_decay = adamw_param_groups(tiny_fgclip, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in tiny_fgclip.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert set(TEMPERATURE_PARAMETER_NAMES) <= no_decay_names
    assert "text_model.final_layer_norm.weight" in no_decay_names
    assert "vision_model.encoder.layers.0.mlp.fc1.bias" in no_decay_names
    assert {"text_filip_projection.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"} <= decay_names
    assert len(decay_names) + len(no_decay_names) == len(names)
