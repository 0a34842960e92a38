"""The `benchmarks` section: the paper's evaluation suite (`fgclip eval --suite paper`).

One settings block per benchmark pins everything that changes its number: the files it
reads (relative to ``data_root``), the input resolution, how the image is brought to it
(``image_view``), which text path and how many tokens, the prompt templates and the
caption selection. The block is written into every result, so a number always travels
with the protocol that made it.

Defaults are the FG-CLIP paper's ViT-B/16 protocol (224 px; long captions through the
248-token long path, short captions and class prompts through the 77-token path).
For a ViT-L/14 at 336 px set ``image_size: 336`` in every block; the suite refuses to run
a benchmark whose pinned resolution differs from the model's (no silent fallback).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import Section

ImageView = Literal["whole", "processor"]
VIEW_DESCRIPTION = (
    "global image features from the whole image resized to a square ('whole', FG-CLIP's long-retrieval "
    "scripts) or from the processor's shortest-side resize + centre crop ('processor', CLIP's protocol)"
)

#: The suite's benchmarks, in the order of the paper's table.
PAPER_BENCHMARKS = (
    "fgovd",
    "coco_boxes",
    "lvis_boxes",
    "sharegpt4v_1k",
    "dci",
    "docci",
    "urban1k",
    "coco_5k",
    "flickr30k_1k",
    "imagenet_1k",
)

#: The class-name prompts of CLIP's ImageNet protocol, read from LAION's CLIP_benchmark.
CLIP_TEMPLATES = "clip_benchmark:imagenet1k"


class BenchmarkSettings(Section):
    """What every benchmark pins."""

    image_size: int = Field(224, ge=16, description="input resolution the model must run at (pixels per side)")
    image_view: ImageView = Field("whole", description=VIEW_DESCRIPTION)
    text_path: Literal["long", "short"] = Field("short", description="long: 248-token path and projection")
    max_text_tokens: int = Field(77, ge=8, description="the model's context on that path must be exactly this")


class PromptSettings(Section):
    """Class prompts: a template ensemble (CLIP's 80 ImageNet templates by default)."""

    templates: str | tuple[str, ...] = Field(
        CLIP_TEMPLATES,
        description=f"'{CLIP_TEMPLATES}' (CLIP's 80 templates as LAION's CLIP_benchmark ships them) "
        "or a list of templates, each with one '{}' for the class name",
    )
    lowercase: bool = Field(True, description="prompts lower-cased before tokenising (FG-CLIP's box scripts do)")

    @model_validator(mode="after")
    def _one_slot(self) -> PromptSettings:
        if isinstance(self.templates, tuple):
            if not self.templates:
                raise ValueError("templates must not be empty")
            bad = [t for t in self.templates if t.count("{}") != 1]
            if bad:
                raise ValueError(f"templates {bad} must each hold exactly one '{{}}' for the class name")
        elif self.templates != CLIP_TEMPLATES:
            raise ValueError(f"templates must be '{CLIP_TEMPLATES}' or a list of templates")
        return self


class RegionSettings(BenchmarkSettings):
    """Region tasks: box features are pooled from the whole image resized to the model's
    square input (boxes stay valid, nothing is cropped away), so the view is fixed."""

    @model_validator(mode="after")
    def _whole(self) -> RegionSettings:
        if self.image_view != "whole":
            raise ValueError("region benchmarks pool boxes from the whole image: image_view must be 'whole'")
        return self


class FGOVDSettings(RegionSettings):
    """FG-OVD (hard, medium, easy, trivial): region vs 1 positive + up to 10 negatives."""

    folder: str = "fgovd"
    images: str = "coco/val2017"
    difficulties: tuple[Literal["hard", "medium", "easy", "trivial"], ...] = ("hard", "medium", "easy", "trivial")


class BoxClassificationSettings(RegionSettings, PromptSettings):
    """Ground-truth boxes -> region features -> class prompts -> top-k."""

    annotations: str = "coco/annotations/instances_val2017.json"
    images: str = "coco/val2017"
    include_crowd: bool = Field(True, description="score iscrowd boxes too (FG-CLIP's COCO script does)")
    topk: tuple[int, ...] = Field((1, 5), min_length=1)


class RetrievalSettings(BenchmarkSettings):
    """Image->text and text->image recall@k over one image-caption gallery."""

    ks: tuple[int, ...] = Field((1, 5, 10), min_length=1)
    text_prefix: str = Field("", description="put before every caption (none in the published protocols)")


class LongRetrievalSettings(RetrievalSettings):
    """Long captions: the 248-token long path; the whole image resized (FG-CLIP's scripts)."""

    image_view: ImageView = Field("whole", description=VIEW_DESCRIPTION)
    text_path: Literal["long", "short"] = Field("long", description="long: 248-token path and projection")
    max_text_tokens: int = Field(248, ge=8, description="the model's context on that path must be exactly this")


class ShortRetrievalSettings(RetrievalSettings):
    """Short captions: the 77-token path; CLIP's resize + centre crop."""

    image_view: ImageView = Field("processor", description=VIEW_DESCRIPTION)


class ShareGPT4VSettings(LongRetrievalSettings):
    annotations: str = "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"
    images: str = "sharegpt4v/data"
    first: int = Field(1000, ge=1, description="the benchmark is the file's first N records")


class DCISettings(LongRetrievalSettings):
    folder: str = "dci/densely_captioned_images"
    splits: tuple[str, ...] = Field((), description="splits.json keys to use; empty: every split (all 7805 images)")


class DOCCISettings(LongRetrievalSettings):
    descriptions: str = "docci/docci_descriptions.jsonlines"
    images: str = "docci/images"
    split: str = "test"


class Urban1kSettings(LongRetrievalSettings):
    folder: str = "Urban1k"


class KarpathySettings(ShortRetrievalSettings):
    split_file: str = "karpathy/dataset_coco.json"
    images: str = "coco"
    split: str = "test"
    captions_per_image: int = Field(5, ge=1, description="the first N captions of each image (5k images -> 25k texts)")


class FlickrSettings(KarpathySettings):
    split_file: str = "karpathy/dataset_flickr30k.json"
    images: str = "flickr30k/flickr30k-images"


class LVISSettings(BoxClassificationSettings):
    annotations: str = "lvis/lvis_v1_val.json"
    images: str = "coco"


class ImageNetSettings(BenchmarkSettings, PromptSettings):
    image_view: ImageView = Field("processor", description=VIEW_DESCRIPTION)
    folder: str = "imagenet/val"
    class_names: str = Field(
        "clip_benchmark:imagenet1k",
        description="'clip_benchmark:imagenet1k' (CLIP's 1000 names in sorted-wnid order) or a JSON file "
        "{wnid: name} relative to data_root",
    )
    lowercase: bool = False
    topk: tuple[int, ...] = Field((1, 5), min_length=1)


class BenchmarkSuiteConfig(Section):
    """`fgclip eval --suite paper`: the FG-CLIP paper's benchmarks, read from their own files."""

    data_root: str = Field("data/benchmarks", description="folder holding every benchmark (layout: docs/benchmarks.md)")
    suite: tuple[str, ...] = Field(PAPER_BENCHMARKS, min_length=1, description="benchmarks `--suite paper` runs")
    skip_missing: bool = Field(False, description="skip a benchmark whose files are missing (with a warning)")
    allow_missing_images: bool = Field(False, description="score what is there when some images are missing")
    batch_size: int = Field(64, ge=1, description="images or texts per forward pass")
    experiment: str = "fgclip-benchmarks"
    plot_dpi: int = Field(110, ge=50)

    # Each block's class holds its defaults, so overriding one key (image_size: 336) keeps
    # every other pinned value of that benchmark.
    fgovd: FGOVDSettings = FGOVDSettings()
    coco_boxes: BoxClassificationSettings = BoxClassificationSettings()
    lvis_boxes: LVISSettings = LVISSettings()
    sharegpt4v_1k: ShareGPT4VSettings = ShareGPT4VSettings()
    dci: DCISettings = DCISettings()
    docci: DOCCISettings = DOCCISettings()
    urban1k: Urban1kSettings = Urban1kSettings()
    coco_5k: KarpathySettings = KarpathySettings()
    flickr30k_1k: FlickrSettings = FlickrSettings()
    imagenet_1k: ImageNetSettings = ImageNetSettings()

    @model_validator(mode="after")
    def _known(self) -> BenchmarkSuiteConfig:
        unknown = [name for name in self.suite if name not in PAPER_BENCHMARKS]
        if unknown:
            raise ValueError(f"benchmarks.suite names unknown benchmarks {unknown}; known: {list(PAPER_BENCHMARKS)}")
        return self

    def settings(self, name: str) -> BenchmarkSettings:
        if name not in PAPER_BENCHMARKS:
            raise KeyError(f"unknown benchmark {name!r}; known: {list(PAPER_BENCHMARKS)}")
        value: BenchmarkSettings = getattr(self, name)
        return value
