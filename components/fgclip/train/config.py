"""The `train` section: the two stage recipes (paper and demo) and the trainer's knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fgclip.core.config import Section


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
    """Recipes for the tiny demo model: a larger lr and about 350 steps in all (96 + 256 on
    the 1024 demo images), a few minutes on 2 CPU cores."""

    stage1: StageRecipe = StageRecipe(lr=1e-3, weight_decay=0.05, warmup_steps=20, batch_size=32, epochs=3)
    # A from-scratch tiny model needs a far stronger regional signal than the paper's 0.1,
    # which fine-tunes a CLIP that already knows what objects look like. At weight 1 the
    # global term wins: regions learn colour, pattern and size (all the global captions
    # need) but never shape; at 10 they learn shape too (5, 20 and 50 learn it less well).
    stage2: StageRecipe = StageRecipe(
        lr=1e-3, weight_decay=0.001, warmup_steps=10, batch_size=32, epochs=8, regional_weight=10.0
    )


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
    min_box_visible_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="a box keeps >= this share of its area after the crop"
    )
    long_expression_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="stage 2: chance a box is described by its long expression"
    )
    max_logit_scale: float = Field(4.6052, gt=0.0, description="cap of every log inverse temperature (ln 100)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 on an accelerator that has it, else fp32 (CPU bf16 matmuls are several times slower)",
    )
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
    cpu_shm_comm: bool = Field(
        False, description="DeepSpeed's compiled shared-memory CPU collectives (a one-time C++ build)"
    )

    def recipe_for(self, stage: int) -> StageRecipe:
        recipes = self.demo if self.recipe == "demo" else self
        return recipes.stage1 if stage == 1 else recipes.stage2
