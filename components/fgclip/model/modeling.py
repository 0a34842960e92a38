"""FG-CLIP model: Hugging Face ``CLIPModel`` plus the pieces FG-CLIP v1 adds.

Additions over CLIP (names match the published ``qihoo360/fg-clip-base`` weights):

- ``text_model.embeddings.position_embedding_ori`` / ``position_embedding_res``: two
  248-row position tables for long captions. A long caption takes rows ``0..19`` from
  ``_ori`` and rows ``20..247`` from ``_res`` (both start as the same stretched copy of
  CLIP's 77-row table, see ``convert.py``). Short texts (short captions, region
  expressions, hard negatives) keep using CLIP's own 77-row ``position_embedding``,
  exactly as the reference does (its ``walk_short_pos=True`` path).
- ``text_filip_projection``: the long-caption text projection.
- three learnable temperatures, stored as log inverse temperatures like CLIP's:
  ``logit_scale`` (global), ``logit_scale_finegraind`` (regional; the typo is the
  published name) and ``logit_scale_hardneg`` (hard negatives).

API used by the training loop::

    model = FGCLIPModel.from_pretrained(path)        # an already converted checkpoint
    img = model.get_image_features(pixel_values)     # (B, P)
    txt = model.get_text_features(ids, mask, long=True)
    dense = model.get_dense_features(pixel_values)   # (B, gh, gw, P)
    img, dense = model.get_image_and_dense_features(pixel_values)  # one ViT pass

All features are returned unnormalised; the losses normalise them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, cast, overload

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers import initialization as hf_init
from transformers.masking_utils import create_causal_mask
from transformers.models.clip.modeling_clip import CLIPTextEmbeddings
from transformers.utils import ModelOutput

from fgclip.model.dense import dense_patch_features, patch_grid_size, value_path_block

#: Log-temperatures in the order global, regional, hard-negative (published names).
TEMPERATURE_PARAMETER_NAMES = ("logit_scale", "logit_scale_finegraind", "logit_scale_hardneg")

#: Parameters FG-CLIP adds to CLIP; a checkpoint lacking them is plain CLIP.
FGCLIP_ONLY_PARAMETER_NAMES = (
    "text_model.embeddings.position_embedding_ori.weight",
    "text_model.embeddings.position_embedding_res.weight",
    "text_filip_projection.weight",
    "logit_scale_finegraind",
    "logit_scale_hardneg",
)

# Legacy HF CLIP configs (before transformers PR #24773) say eos_token_id == 2 and pool
# at argmax(input_ids), which is the EOS token of the real CLIP vocabulary.
_LEGACY_EOS_TOKEN_ID = 2


@strict
class FGCLIPConfig(CLIPConfig):
    """``CLIPConfig`` plus the long-text position state.

    ``text_config.max_position_embeddings`` stays the original short length (77); the
    long tables have ``long_text_max_position_embeddings`` rows (4 * 77 - 3 * 20 = 248).
    ``long_text_positions_stretched`` is set once, by the conversion, so that loading a
    converted checkpoint never stretches again; ``source_max_position_embeddings``
    records the length the stretch started from.
    """

    model_type = "fgclip"

    long_text_max_position_embeddings: int = 248
    long_text_kept_positions: int = 20
    long_text_positions_stretched: bool = False
    source_max_position_embeddings: int | None = None


class FGCLIPTextEmbeddings(CLIPTextEmbeddings):
    """CLIP text embeddings with the two extra long-caption position tables."""

    def __init__(self, config: CLIPTextConfig, long_length: int, kept_positions: int) -> None:
        super().__init__(config)
        self.kept_positions = kept_positions
        self.position_embedding_ori = nn.Embedding(long_length, config.hidden_size)
        self.position_embedding_res = nn.Embedding(long_length, config.hidden_size)

    def long_position_table(self) -> torch.Tensor:
        """Rows ``0..kept-1`` from ``_ori``, the rest from ``_res`` (the reference's masks).

        Slicing instead of multiplying by 0/1 masks gives the same values and the same
        gradients (the unused rows of each table get none), without the extra memory.
        """
        kept = self.kept_positions
        return torch.cat([self.position_embedding_ori.weight[:kept], self.position_embedding_res.weight[kept:]])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        long: bool = False,
    ) -> torch.Tensor:
        # Same call signature as CLIP's, so text_model(...) still works on its own
        # (short path); FGCLIPModel passes long=True for long captions.
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        table = self.long_position_table() if long else self.position_embedding.weight
        if position_ids is not None:
            return inputs_embeds + nn.functional.embedding(position_ids, table)
        seq_length = inputs_embeds.shape[-2]
        if seq_length > table.shape[0]:
            kind = "long" if long else "short"
            raise ValueError(f"{kind} text of {seq_length} tokens exceeds {table.shape[0]} positions")
        return inputs_embeds + table[:seq_length]


@dataclass
class FGCLIPOutput(ModelOutput):
    """Projected, unnormalised features of whatever inputs were given."""

    image_features: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    dense_features: torch.Tensor | None = None


class FGCLIPModel(CLIPModel):
    """CLIP with FG-CLIP's long-text path, dense region features and three temperatures."""

    config_class = FGCLIPConfig
    config: FGCLIPConfig
    # Old HF CLIP checkpoints persisted position_ids buffers; they carry no information.
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]

    def __init__(self, config: FGCLIPConfig) -> None:
        super().__init__(config)
        self.text_model.embeddings = FGCLIPTextEmbeddings(
            cast(CLIPTextConfig, config.text_config),
            long_length=config.long_text_max_position_embeddings,
            kept_positions=config.long_text_kept_positions,
        )
        self.text_filip_projection = nn.Linear(self.text_embed_dim, cast(int, config.projection_dim), bias=False)
        self.logit_scale_finegraind = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_scale_hardneg = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only a model built from a bare config gets here with FG-CLIP modules (the
        # conversion overwrites them all). CLIPModel.__init__ initialises before our
        # modules exist, hence getattr; the temperatures are set in __init__ already.
        super()._init_weights(module)
        if module is getattr(self, "text_filip_projection", None):
            std = self.text_embed_dim**-0.5 * self.config.initializer_factor
            hf_init.normal_(module.weight, std=std)

    @property
    def logit_scale_regional(self) -> nn.Parameter:
        """Readable alias of ``logit_scale_finegraind`` (the published name)."""
        return self.logit_scale_finegraind

    def temperatures(self) -> dict[str, nn.Parameter]:
        """The three log inverse temperatures, by parameter name."""
        return {name: getattr(self, name) for name in TEMPERATURE_PARAMETER_NAMES}

    @overload  # type: ignore[override]
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        output_loading_info: Literal[True],
        **kwargs: Any,
    ) -> tuple[FGCLIPModel, dict[str, Any]]: ...

    @overload
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        output_loading_info: Literal[False] = False,
        **kwargs: Any,
    ) -> FGCLIPModel: ...

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        output_loading_info: bool = False,
        **kwargs: Any,
    ) -> FGCLIPModel | tuple[FGCLIPModel, dict[str, Any]]:
        """Load a converted FG-CLIP checkpoint (ours or a published v1 one).

        Defaults to SDPA attention. Refuses a plain CLIP checkpoint, whose FG-CLIP
        parameters would silently start random: convert it with ``convert.py`` first.
        """
        kwargs.setdefault("attn_implementation", "sdpa")
        loaded: Any = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model, loading_info = loaded
        missing = sorted(set(loading_info["missing_keys"]) & set(FGCLIP_ONLY_PARAMETER_NAMES))
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path} is not an FG-CLIP checkpoint (missing {missing}); "
                "convert it once with fgclip.model.convert.convert_clip_to_fgclip"
            )
        if not model.config.long_text_positions_stretched:
            # A published v1 checkpoint: its long tables are trained, not to be stretched.
            model.config.long_text_positions_stretched = True
        return (model, loading_info) if output_loading_info else model

    # ----------------------------------------------------------------- text tower

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        long: bool = False,
    ) -> torch.Tensor:
        """Projected text features (B, P), pooled at the first EOS token.

        ``long=True``: 248 positions and ``text_filip_projection`` (long captions).
        ``long=False``: CLIP's 77 positions and ``text_projection`` (everything else).
        """
        pooled = self.encode_text(input_ids, attention_mask, long=long)
        projection = self.text_filip_projection if long else self.text_projection
        return projection(pooled)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, long: bool = False
    ) -> torch.Tensor:
        """Pooled (pre-projection) text states: the text tower under a causal mask."""
        text_model = self.text_model
        hidden = text_model.embeddings(input_ids, long=long)
        mask = create_causal_mask(
            config=text_model.config, inputs_embeds=hidden, attention_mask=attention_mask, past_key_values=None
        )
        hidden = text_model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = text_model.final_layer_norm(hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, self.pooling_positions(input_ids, attention_mask)]

    def pooling_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the first EOS token in each row.

        Legacy configs (eos_token_id == 2) pool at argmax(input_ids) like HF CLIP does.
        A row without any EOS (a truncating tokenizer that dropped it) falls back to its
        last attended token instead of silently pooling at position 0.
        """
        eos_token_id = cast(CLIPTextConfig, self.config.text_config).eos_token_id
        if eos_token_id == _LEGACY_EOS_TOKEN_ID:
            return input_ids.to(torch.int).argmax(dim=-1)
        is_eos = torch.eq(input_ids, cast(int, eos_token_id))
        first_eos = is_eos.int().argmax(dim=-1)
        if attention_mask is None:
            last_token = torch.full_like(first_eos, input_ids.shape[-1] - 1)
        else:
            last_token = attention_mask.long().sum(dim=-1).clamp(min=1) - 1
        return torch.where(is_eos.any(dim=-1), first_eos, last_token)

    # --------------------------------------------------------------- vision tower

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected global image features (B, P) from the CLS token."""
        return self.get_image_and_dense_features(pixel_values, with_dense=False)[0]

    def get_dense_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch features on the patch grid (B, H/patch, W/patch, P)."""
        last_block_input = self._vision_last_block_input(pixel_values)
        return self._dense_from_last_block_input(last_block_input, pixel_values)

    def get_image_and_dense_features(
        self, pixel_values: torch.Tensor, with_dense: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global and dense features from one pass through the first N-1 ViT blocks."""
        vision = self.vision_model
        last_block_input = self._vision_last_block_input(pixel_values)
        last_hidden = vision.encoder.layers[-1](last_block_input, None)
        image_features = self.visual_projection(vision.post_layernorm(last_hidden[:, 0]))
        dense = self._dense_from_last_block_input(last_block_input, pixel_values) if with_dense else None
        return image_features, dense

    def _vision_last_block_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The ViT is run block by block because the dense path needs the input of the
        # last block, and sharing the first N-1 blocks with the global path saves a pass.
        vision = self.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for layer in vision.encoder.layers[:-1]:
            hidden = layer(hidden, None)
        return hidden

    def _dense_from_last_block_input(self, last_block_input: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.vision_model
        patch_tokens = value_path_block(vision.encoder.layers[-1], last_block_input)
        grid = patch_grid_size(pixel_values, cast(int, cast(CLIPVisionConfig, self.config.vision_config).patch_size))
        return dense_patch_features(patch_tokens, vision.post_layernorm, self.visual_projection, grid)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        long: bool = False,
        return_dense: bool = False,
    ) -> FGCLIPOutput:
        """Features of the given images and/or texts (for wrappers that call forward)."""
        image_features = dense_features = text_features = None
        if pixel_values is not None:
            image_features, dense_features = self.get_image_and_dense_features(pixel_values, with_dense=return_dense)
        if input_ids is not None:
            text_features = self.get_text_features(input_ids, attention_mask, long=long)
        return FGCLIPOutput(image_features=image_features, text_features=text_features, dense_features=dense_features)


def trim_to_longest(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns that no row of the batch uses.

    Exact for pooled features: under the causal mask nothing after a row's EOS can
    change that row's EOS state. Assumes right padding (what CLIP tokenizers produce).
    """
    longest = int(attention_mask.long().sum(dim=-1).max().clamp(min=1))
    return input_ids[:, :longest], attention_mask[:, :longest]


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on temperatures, biases and norms.

    Decaying a log-temperature pulls it towards 0 (temperature 1), which fights the
    contrastive objective; biases, LayerNorm weights and CLS embeddings (all < 2-D)
    are excluded as usual. Frozen parameters are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_temperature = name.rsplit(".", 1)[-1] in TEMPERATURE_PARAMETER_NAMES
        (no_decay if is_temperature or parameter.ndim < 2 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# Lets AutoConfig / AutoModel (and tools built on them) open our checkpoints.
AutoConfig.register(FGCLIPConfig.model_type, FGCLIPConfig, exist_ok=True)
AutoModel.register(FGCLIPConfig, FGCLIPModel, exist_ok=True)
