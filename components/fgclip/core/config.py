"""The config base every section derives from, and the sections the shared library reads
(tracking, object storage, Hugging Face model sources).

Each component package owns its own section in its `config.py`; `fgclip.config` only
assembles them into `Params`. Unknown keys are errors, so a typo in params.yaml fails
loudly instead of silently running with a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TrackingConfig(Section):
    """MLflow: a local SQLite store by default; MLFLOW_TRACKING_URI overrides it."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fgclip-data"
    enabled: bool = True
    # Metrics, params and tags go to the server from a background thread (fgclip.core.tracking_buffer):
    buffer_items: int = Field(
        100_000,
        ge=1,
        description="run data items waiting for the server at most; a full buffer makes the run wait, it never drops",
    )
    flush_timeout_s: float = Field(
        900.0,
        gt=0,
        description="how long the end of a run waits for the server to take what is buffered before it fails",
    )
    stall_warning_s: float = Field(
        10.0, gt=0, description="log a warning when the server has not taken run data for this long"
    )


class S3Config(Section):
    """An S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph, OBS...) for shards, the
    DVC remote and MLflow artifacts. Credentials never live here: boto3, DVC and MLflow read
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (from a Kubernetes Secret on a cluster), and
    the standard AWS variables below override these defaults at run time."""

    endpoint_url: str | None = Field(
        None, description="e.g. http://minio:9000; None: AWS (env AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL wins)"
    )
    region: str = Field("us-east-1", description="env AWS_REGION / AWS_DEFAULT_REGION wins")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        "path", description="path-style URLs work with every S3-compatible server"
    )
    max_attempts: int = Field(
        5, ge=1, description="attempts per request, the first included (env AWS_MAX_ATTEMPTS wins)"
    )
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard",
        description="botocore retries: exponential backoff with jitter on throttling, 5xx and connection errors "
        "(env AWS_RETRY_MODE wins)",
    )
    connect_timeout_s: float = Field(10.0, gt=0.0)
    read_timeout_s: float = Field(60.0, gt=0.0)
    multipart_threshold_mb: int = Field(64, ge=5, description="file copies above this size go up in parts")
