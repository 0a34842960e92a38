"""FG-CLIP as an embedder of images, regions and texts: the one adapter that knows the
FG-CLIP API. Evaluation (`fgclip.eval.embedding.Embedder`) and the registry's logged model
reach the model only through it.

Region features come from the image resized whole to the model's input size (no centre
crop), so normalised boxes stay valid and no object is cut off, as in FG-CLIP's own
FG-OVD protocol; global features by default from the processor's resize + centre crop,
as in training and CLIP's retrieval and zero-shot protocols (``eval.global_view``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor

from fgclip.core.devices import resolve_device
from fgclip.core.storage import local_path
from fgclip.model.dense import region_features
from fgclip.model.modeling import FGCLIPModel


class ModelFolderError(ValueError):
    """A folder that does not hold a loadable FG-CLIP model, tokenizer and image processor."""


class FGCLIPEmbedder:
    """FG-CLIP behind the ``fgclip.eval.embedding.Embedder`` protocol.

    Loads ``FGCLIPModel.from_pretrained(dir)`` and the tokenizer and image processor
    saved beside it. Long captions use the long position table and projection
    (``long_text_max_position_embeddings`` tokens, 248 for CLIP); everything else the
    short ones (``max_position_embeddings``, 77). Regions come from the dense feature
    map via RoIAlign (``fgclip.model.region_features``).
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", global_view: str = "processor") -> None:
        self.model_dir = local_path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelFolderError(f"{self.model_dir} is not a saved model (no config.json)")
        self.device = resolve_device(device)
        self.global_view = global_view
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self.processor = CLIPImageProcessor.from_pretrained(self.model_dir)
            self.model = FGCLIPModel.from_pretrained(self.model_dir).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise ModelFolderError(
                f"cannot load the model, tokenizer and image processor from {self.model_dir}: {error}"
            ) from error
        config = self.model.config
        self.image_size = config.vision_config.image_size
        self.short_length = config.text_config.max_position_embeddings
        self.long_length = config.long_text_max_position_embeddings

    def identity(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "device": str(self.device),
            "image_size": self.image_size,
            "global_view": self.global_view,
            "short_length": self.short_length,
            "long_length": self.long_length,
            "projection_dim": self.model.config.projection_dim,
        }

    def input_size(self) -> int:
        """Pixels per side the vision tower runs at (the model config's, never the processor's)."""
        return int(self.image_size)

    def text_capacity(self, long: bool) -> int:
        """Tokens the long or short text path takes (248 / 77 for FG-CLIP)."""
        return int(self.long_length if long else self.short_length)

    def token_counts(self, texts: Sequence[str], long: bool) -> list[int]:
        """Untruncated token counts (special tokens included): which texts the path truncates."""
        ids = self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def _pixels(self, images: Sequence[Image.Image], whole: bool) -> Any:
        """whole=True: each image resized whole to the model's square input (what regions
        need: normalised boxes stay valid and nothing is cut off; FG-CLIP's own FG-OVD
        protocol). Resized here, not by the processor, so the PIL and torchvision
        processor backends agree. whole=False: the processor's own resize and centre
        crop (what training and CLIP's zero-shot and retrieval protocols use), at the
        model's input size whatever size the saved processor names, so a processor saved
        at another resolution cannot silently change the protocol. Pixels are normalised
        here, once: callers pass decoded images, never preprocessed arrays."""
        not_images = [type(image).__name__ for image in images if not isinstance(image, Image.Image)]
        if not_images:
            raise TypeError(f"pass decoded PIL images (the embedder normalises them once), not {not_images[0]}")
        pictures = [image.convert("RGB") for image in images]
        side = self.image_size
        if not whole:
            return self.processor(
                images=pictures,
                size={"shortest_edge": side},
                crop_size={"height": side, "width": side},
                return_tensors="pt",
            )["pixel_values"]
        resample = Image.Resampling(int(getattr(self.processor, "resample", Image.Resampling.BICUBIC)))
        resized = [picture.resize((side, side), resample) for picture in pictures]
        return self.processor(images=resized, do_resize=False, do_center_crop=False, return_tensors="pt")[
            "pixel_values"
        ]

    def encode_images(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[np.ndarray],
        with_global: bool = True,
        view: str | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """view: the global view for this call ('whole' or 'processor'); None: the one set at
        construction. Regions always come from the whole image."""
        view = self.global_view if view is None else view
        if view not in ("whole", "processor"):
            raise ValueError(f"unknown image view {view!r}: 'whole' or 'processor'")
        counts = [len(b) for b in boxes]
        with torch.no_grad():
            global_features = dense = None
            if with_global and view == "whole":  # one pass serves both
                whole = self._pixels(images, whole=True).to(self.device, dtype=self.model.dtype)
                global_features, dense = self.model.get_image_and_dense_features(whole, with_dense=sum(counts) > 0)
            elif sum(counts):
                whole = self._pixels(images, whole=True).to(self.device, dtype=self.model.dtype)
                dense = self.model.get_dense_features(whole)
            if with_global and global_features is None:
                processed = self._pixels(images, whole=False).to(self.device, dtype=self.model.dtype)
                global_features = self.model.get_image_features(processed)
            regions = np.zeros((0, self.model.config.projection_dim), dtype=np.float32)
            if sum(counts):
                flat = torch.as_tensor(
                    np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]), device=self.device
                )
                index = torch.repeat_interleave(
                    torch.arange(len(counts), device=self.device), torch.as_tensor(counts, device=self.device)
                )
                assert dense is not None  # computed above whenever there are boxes
                regions = region_features(dense, flat, index).float().cpu().numpy()
        globals_ = (
            global_features.float().cpu().numpy()
            if global_features is not None
            else np.zeros((len(images), 0), dtype=np.float32)
        )
        return globals_, np.split(regions, np.cumsum(counts)[:-1])

    def encode_texts(self, texts: Sequence[str], long: bool) -> np.ndarray:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            return_tensors="pt",
            max_length=self.long_length if long else self.short_length,
        )
        with torch.no_grad():
            features = self.model.get_text_features(
                tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device), long=long
            )
        return features.float().cpu().numpy()
