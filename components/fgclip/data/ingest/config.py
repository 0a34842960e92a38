"""The `ingest` section (how images are downloaded and stored) and the layout of a URL list
(which the `dataset.urls` section uses: LAION, COYO, CC3M/12M and GRIT lists differ only
in file format and column names)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import Section

UrlListFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "json"]


class UrlListConfig(Section):
    """One URL list: a file, or a folder whose files of that format are read in name order."""

    path: str | None = Field(None, description="URL list file or folder, local or s3://; required by source urls")
    format: UrlListFormat = Field(
        "auto", description="auto: from the file suffix (.parquet, .csv, .tsv, .jsonl, .json)"
    )
    url_column: str = Field("url", description="LAION: URL, COYO: url, CC3M (headerless): set column_names")
    caption_column: str = Field("caption", description="LAION: TEXT, COYO: text, GRIT: caption")
    column_names: tuple[str, ...] | None = Field(
        None,
        description="names of the columns of a headerless CSV/TSV, in order (CC3M: [caption, url]; CC12M: [url, caption])",
    )
    keep_columns: tuple[str, ...] = Field((), description="more source columns kept in each sample's .json")


class IngestConfig(Section):
    """Download with img2dataset (in its own environment) and store resized images in shards.

    Politeness: at most processes x threads requests at once, each with `timeout_s`; the
    user agent names the crawler (img2dataset's string plus `user_agent_token`); responses
    whose X-Robots-Tag carries a disallowed directive are refused (img2dataset's rule);
    transient failures (timeouts, 429, 5xx, refused connections) are retried in later passes
    after an exponential backoff, never in a tight loop."""

    shard_size: int = Field(10000, ge=1, description="source rows per shard (img2dataset's default)")
    resolution: int = Field(224, ge=16, description="training input side (px) the images are stored for")
    margin: float = Field(
        1.25,
        ge=1.0,
        le=4.0,
        description="stored shortest side = resolution x margin (room for random crops; larger images are "
        "downscaled, smaller ones kept as they are)",
    )
    min_side: int = Field(64, ge=1, description="images with a shorter side are failures of kind too_small")
    max_megapixels: float = Field(
        64.0, gt=0.0, description="larger images are failures of kind too_large (checked before decoding)"
    )
    jpeg_quality: int = Field(95, ge=50, le=100)
    processes: int = Field(2, ge=1, description="img2dataset download processes, and image processing workers")
    threads: int = Field(32, ge=1, description="download threads per process: at most processes x threads at once")
    timeout_s: int = Field(10, ge=1, description="per request (img2dataset takes whole seconds)")
    retries: int = Field(2, ge=0, description="passes after the first over the transient failures")
    backoff_s: float = Field(5.0, ge=0.0, description="wait before the first retry pass; doubled for each later one")
    backoff_max_s: float = Field(120.0, ge=0.0)
    user_agent_token: str = Field("fgclip", min_length=1, description="appended to img2dataset's user agent")
    disallowed_header_directives: tuple[str, ...] = Field(
        ("noai", "noimageai", "noindex", "noimageindex"),
        description="X-Robots-Tag directives that refuse an image (img2dataset's default list)",
    )
    key_length: int = Field(
        20, ge=12, le=64, description="hex digits of the stable key (a hash of url and caption): 80 bits by default"
    )
    environment: str = Field(
        ".venv-img2dataset",
        description="the virtual environment holding img2dataset (its pins clash with ours); "
        "env FGCLIP_IMG2DATASET_ENV wins",
    )

    @property
    def stored_side(self) -> int:
        return math.ceil(self.resolution * self.margin)

    @model_validator(mode="after")
    def _backoff(self) -> IngestConfig:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("ingest.backoff_max_s must be >= ingest.backoff_s")
        return self
