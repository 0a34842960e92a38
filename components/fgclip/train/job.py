"""What one training run is asked to do (`TrainJob`) and what it returns (`TrainResult`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fgclip.train.examples import AnnotationDirs

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"
TAG_PREFIX = "step"
SUMMARY_FILE = "training.json"
#: Files beside the weights that make a directory loadable as a whole (tokenizer, processor).
COMPANION_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


class TrainingError(Exception):
    """A training failure the user can act on (bad arguments, unusable data, bad resume)."""


@dataclass(frozen=True)
class TrainJob:
    stage: int
    init: str
    images: str
    annotations: AnnotationDirs
    out: str
    checkpoint_dir: str | None = None  # default: <out>/checkpoints
    resume: bool = False
    stop_after_steps: int | None = None  # checkpoint and stop early (a preemption drill); schedule unchanged
    shards: tuple[str, ...] | None = None  # the dataset's training shards; None: every shard in `images`

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.out) / CHECKPOINT_FOLDER


@dataclass
class TrainResult:
    step: int
    total_steps: int
    finished: bool
    final_dir: Path | None
    losses: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> rank-mean loss parts
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0
    resumed_from: int | None = None
    is_main: bool = True  # rank 0: the rank that logs and writes the final model
