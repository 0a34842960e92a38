"""Sections of the generic LLM engines: an OpenAI-compatible endpoint and a Hugging Face
causal LM run in this process."""

from __future__ import annotations

from pydantic import Field

from fgclip.core.config import HFModelSource, Section


class EndpointConfig(Section):
    """An OpenAI-compatible chat completions endpoint (vLLM, SGLang, TGI, llama.cpp server,
    Ascend MindIE). The URL and the key are not part of the output fingerprint: the same
    model behind another server makes the same data."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the API root, up to and including /v1")
    model: str = Field("", description="model name the server knows (vLLM: the served model name); required")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="environment variable holding the API key (sent as a Bearer token when set); None: no key",
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0.0, description="per request: the longest wait for the whole answer")
    connect_timeout_s: float = Field(10.0, gt=0.0)
    max_retries: int = Field(4, ge=0, description="retries after connect errors, timeouts, 429 and 5xx (not other 4xx)")
    backoff_s: float = Field(
        1.0, ge=0.0, description="first retry delay; doubles per retry, with jitter; Retry-After wins"
    )
    backoff_max_s: float = Field(30.0, ge=0.0, description="cap of one retry delay")
    max_consecutive_failures: int = Field(
        16,
        ge=1,
        description="stop the stage (resumable) after this many failed requests in a row: the endpoint is down, "
        "not the samples bad; a batch whose every request cannot connect stops it at once",
    )
    max_tokens: int = Field(512, ge=1, description="completion tokens per request")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy, the most reproducible")
    seed: int | None = Field(
        0, description="sampling seed sent with each request (servers that honour it are reproducible)"
    )


class CausalLMConfig(HFModelSource):
    """negatives.hf: a Hugging Face causal LM with a chat template, run in this process."""

    gguf_file: str | None = Field(
        None, description="a GGUF checkpoint inside `model` (needs the gguf and accelerate packages)"
    )
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling, when temperature > 0")
    seed: int = Field(0, description="torch seed set before each batch, when sampling")
