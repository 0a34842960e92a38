"""The `dataset` section: which data a build reads, named in params, never in dvc.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import Section
from fgclip.data.ingest.config import UrlListConfig

SourceKind = Literal["demo", "shards", "urls", "finehard"]
AnnotationKind = Literal["captions", "regions", "negatives"]


class FineHARDSource(Section):
    """FineHARD's published annotations and the folder its `f_path` values are relative to."""

    annotations: tuple[str, ...] = Field((), description="FineHARD JSON or JSON-lines files (local or s3://)")
    image_root: str | None = Field(None, description="folder the records' f_path values are relative to")
    shard_size: int = Field(10000, ge=1, description="records per shard")
    keep: tuple[AnnotationKind, ...] = Field(
        ("captions", "regions", "negatives"),
        description="imported annotations the build uses as they are (recaption, detect, negatives pass them "
        "through); leave one out to rebuild it with the configured backend",
    )


class DatasetConfig(Section):
    """One named dataset. `source` says what `location` holds:

    - demo: the generated demo world (section `demo`) is written there;
    - shards: existing img2dataset-format shards (NNNNN.tar [+ .parquet]), read in place;
    - urls: `urls.path` is downloaded there by `ingest` (section `ingest`);
    - finehard: `finehard.annotations` + images are imported there.
    """

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the dataset's name in MLflow")
    source: SourceKind = "demo"
    location: str | None = Field(
        None,
        description="image shard folder or s3:// prefix; None: inside the dataset stage's DVC output "
        "(data/dataset/...), so DVC versions the images too (required for source shards)",
    )
    heldout_shards: int = Field(
        0,
        ge=0,
        description="the last N shards are held out of training and evaluated on their built annotations "
        "(the demo has its own held-out split)",
    )
    urls: UrlListConfig = UrlListConfig()
    finehard: FineHARDSource = FineHARDSource()

    @model_validator(mode="after")
    def _needs(self) -> DatasetConfig:
        if self.source == "shards" and not self.location:
            raise ValueError("dataset.source shards reads existing shards in place: set dataset.location")
        if self.source == "urls" and not self.urls.path:
            raise ValueError("dataset.source urls needs dataset.urls.path (the URL list)")
        if self.source == "finehard" and not (self.finehard.annotations and self.finehard.image_root):
            raise ValueError("dataset.source finehard needs dataset.finehard.annotations and .image_root")
        return self
