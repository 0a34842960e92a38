"""Building blocks of the real-data runs: a URL list of the loopback photo site (each
photo under two captions, hostile URLs spread over the shards), a tiny Hugging Face CLIP
checkpoint (random weights, a BPE tokenizer trained on the captions), and the params that
switch every stage from the demo to real models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.photo_server import HOSTILE, REDIRECT, PhotoSite

CAPTION_FORMS = ("a photo of {}", "{} seen up close in a picture")
#: The `ingest` section of a run on the photo site: small shards (several per run, the last
#: held out), one downloading process, a timeout shorter than the site's slow answer.
INGEST: dict[str, Any] = {
    "shard_size": 8,
    "resolution": 64,
    "margin": 1.25,
    "min_side": 32,
    "max_megapixels": 20.0,
    "processes": 1,
    "threads": 8,
    "timeout_s": 2,
    "retries": 1,
    "backoff_s": 0.5,
}


def url_rows(site: PhotoSite) -> list[dict[str, str]]:
    """Good rows (two captions per photo, and the redirect) with a hostile row after every
    third good one, so every shard holds both kinds."""
    good = [
        {"url": url, "caption": form.format(url.rsplit("/", 1)[-1].replace("_", " "))}
        for url in site.good_urls()
        for form in CAPTION_FORMS
    ]
    good.append({"url": site.url(REDIRECT), "caption": "a coffee cup that moved"})
    bad = [{"url": site.url(name), "caption": f"a broken link {name}"} for name in HOSTILE]
    rows: list[dict[str, str]] = []
    for index, row in enumerate(good):
        rows.append(row)
        if index % 2 == 1 and bad:
            rows.append(bad.pop(0))
    return rows + bad


def write_url_list(path: Path, rows: list[dict[str, str]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_tiny_hf_clip(folder: Path, texts: list[str], image_size: int = 64) -> Path:
    """A plain (not yet converted) Hugging Face CLIP checkpoint: model, tokenizer, processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from fgclip.train.tokenizer import train_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_clip_tokenizer(texts, folder, vocab_size=400, min_frequency=1, model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def tiny_captioner_recaption(captioner: Path) -> dict[str, Any]:
    """The `recaption` section for a tiny random-weight Hugging Face captioner on the CPU."""
    return {
        "backend": "hf",
        "batch_size": 4,
        # greedy decoding with random weights never ends a caption: sample instead
        "hf": {
            "model": str(captioner),
            "local_files_only": True,
            "max_new_tokens": 32,
            "device": "cpu",
            "do_sample": True,
        },
    }


def real_params(
    *, urls: str, captioner: Path, detector: Path, clip: Path, llm_url: str, llm_model: str, location: str | None = None
) -> dict[str, Any]:
    """params.yaml of a run on real photos: every stage on a real model, nothing on the demo."""
    stage = {"batch_size": 4, "epochs": 1, "warmup_steps": 1, "samples_per_epoch": 8}
    return {
        "dataset": {
            "name": "packaged-photos",
            "source": "urls",
            "location": location,
            "heldout_shards": 1,
            "urls": {"path": urls},
        },
        "ingest": dict(INGEST),
        "recaption": tiny_captioner_recaption(captioner),
        "detect": {
            "extractor": "spacy",
            "backend": "owlv2",
            "batch_size": 4,
            "min_confidence": 0.0,
            "max_regions": 2,
            "min_box_side_px": 1.0,
            "min_box_area_fraction": 0.0,
            "owlv2": {"model": str(detector), "local_files_only": True, "device": "cpu"},
        },
        "negatives": {
            "backend": "openai",
            "count": 3,
            "batch_size": 4,
            "openai": {"base_url": llm_url, "model": llm_model, "concurrency": 2, "max_tokens": 128, "timeout_s": 60.0},
        },
        "qc": {
            "reviewer": "none",
            "sample_size": 20,
            "max_noise_upper": 1.0,
            "min_caption_words": 1,
            "min_box_area_fraction": 0.0,
            "gallery_items": 5,
        },
        "model": {"base": str(clip)},
        "train": {
            "recipe": "demo",
            "workers": 0,
            "short_text_length": 77,
            "checkpoint_every": 1000,
            "log_system_metrics": False,
            "demo": {"stage1": stage, "stage2": stage},
        },
        "eval": {"batch_size": 8, "device": "cpu"},
        "registry": {"model_name": "fgclip-photos", "gate": {"long_i2t_r1": 0.0}},
    }


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, section by section (DVC wants every section a
    stage tracks in params.yaml, so runs start from the project's file)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
