"""`fgclip init-model`: the FG-CLIP checkpoint training stage 1 starts from.

Two kinds of base:

- `demo-tiny`: no hub, no download. A CLIP-compatible BPE tokenizer is trained on the
  demo corpus (long captions, alt texts, the attribute lexicon), a tiny CLIPModel is built
  from `model.demo` with that vocabulary, and a CLIPImageProcessor matching its image size;
- a real CLIP (a local Hugging Face directory, or a hub id already in the local cache),
  e.g. openai/clip-vit-base-patch16: loaded with its own tokenizer and processor.

Either way the model is converted to FG-CLIP once (77 -> 248 positions, long projection,
three temperatures; see fgclip.model.convert) and saved in Hugging Face format with its
tokenizer and image processor. Converting an FG-CLIP checkpoint again is a no-op.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch
from transformers import CLIPConfig, CLIPModel
from transformers.utils import logging as hf_logging

from fgclip.core.dataset import load_manifest
from fgclip.core.shards import RawShardReader, annotation_path, list_shards, read_jsonl
from fgclip.core.storage import exists, is_s3, join, open_read
from fgclip.errors import ComponentError
from fgclip.model.config import DemoModelSpec
from fgclip.model.convert import convert_clip_to_fgclip, is_fgclip_checkpoint
from fgclip.model.location import publish_model_dir
from fgclip.model.modeling import FGCLIPModel
from fgclip.text import lexicon
from fgclip.train.tokenizer import load_tokenizer, train_clip_tokenizer

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

HELP = "build the FG-CLIP starting checkpoint (tiny demo model, or a converted CLIP)"
DEMO_BASE = "demo-tiny"
#: Config keys recording where a checkpoint came from and which stage last trained it.
BASE_CONFIG_KEY = "fgclip_base"
STAGE_CONFIG_KEY = "fgclip_training_stage"
VOCAB_FILES = ("vocab.json", "merges.txt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default=None,
        help=f"'{DEMO_BASE}' (built from params model.demo) or a local HF CLIP directory / cached hub id "
        "(default: params model.base)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder or s3:// prefix (HF format: model, tokenizer, processor)"
    )
    parser.add_argument(
        "--corpus", default=None, help=f"{DEMO_BASE}: captions stage folder (long captions) for the tokenizer"
    )
    parser.add_argument(
        "--corpus-images", default=None, help=f"{DEMO_BASE}: image shard folder (alt texts) for the tokenizer"
    )
    parser.add_argument(
        "--corpus-dataset", default=None, help=f"{DEMO_BASE}: a dataset manifest whose image shards give the alt texts"
    )


def command(args: argparse.Namespace, params: Params) -> int:
    if args.no_progress:
        hf_logging.disable_progress_bar()
    base = args.base or params.model.base
    corpus_images = args.corpus_images
    if args.corpus_dataset:
        corpus_images = load_manifest(args.corpus_dataset).images
    remote_out = args.out if is_s3(args.out) else None
    try:
        with tempfile.TemporaryDirectory(prefix="fgclip-init-") as scratch:
            target = Path(scratch) / "model" if remote_out else args.out
            out = init_model(base, target, params, corpus=args.corpus, corpus_images=corpus_images)
            if remote_out:
                publish_model_dir(out, remote_out)
    except (OSError, ValueError) as error:
        raise ComponentError(f"cannot build the model from {base!r}: {error}") from error
    print(remote_out or out)
    return 0


# ------------------------------------------------------------------------ corpus


def corpus_texts(captions_dir: str | Path | None, images_dir: str | Path | None, short_prefix: str) -> Iterator[str]:
    """Texts the demo tokenizer learns from: long captions, alt texts, lexicon words."""
    if captions_dir is not None:
        for shard in list_shards(captions_dir, suffix=".jsonl"):
            for record in read_jsonl(annotation_path(captions_dir, shard)):
                yield record.get("long_caption", "")
    if images_dir is not None:
        for shard in list_shards(images_dir):
            yield from _alt_texts(images_dir, shard)
    yield short_prefix
    words = [
        *lexicon.COLOURS,
        *lexicon.PATTERNS,
        *lexicon.SHAPES,
        *lexicon.SIZES,
        *sorted(lexicon.OBJECT_NOUNS),
        *sorted(lexicon.DETERMINERS),
    ]
    for group in lexicon.ATTRIBUTE_LEXICON.values():
        words.extend(group)
    yield " ".join(words)


def _alt_texts(images_dir: str | Path, shard: str) -> Iterator[str]:
    parquet = join(images_dir, f"{shard}.parquet")
    if exists(parquet):
        with open_read(parquet) as handle:
            table = pq.read_table(handle, columns=["caption"])
        yield from (text for text in table.column("caption").to_pylist() if text)
        return
    yield from (sample.caption for sample in RawShardReader(join(images_dir, f"{shard}.tar"), decode_images=False))


# ------------------------------------------------------------------ demo model


def build_demo_clip(spec: DemoModelSpec, tokenizer: Any, seed: int):
    """A randomly initialised tiny CLIPModel sized by `spec`, vocabulary from `tokenizer`."""
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.text_hidden_size,
            "intermediate_size": spec.text_intermediate_size,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "max_position_embeddings": spec.text_positions,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
        },
        projection_dim=spec.projection_dim,
        logit_scale_init_value=spec.logit_scale_init,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def image_processor_class():
    """CLIPImageProcessor; its PIL flavour where torchvision is missing (same config file)."""
    try:
        import torchvision  # noqa: F401  (the default CLIPImageProcessor backend needs it)
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil


def build_demo_processor(spec: DemoModelSpec):
    """CLIP's preprocessing (shortest edge resize, centre crop, CLIP mean/std) at `spec.image_size`."""
    return image_processor_class()(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )


# --------------------------------------------------------------------- builder


def init_model(
    base: str,
    out: str | Path,
    params: Params,
    *,
    corpus: str | Path | None = None,
    corpus_images: str | Path | None = None,
) -> Path:
    """Build the FG-CLIP starting checkpoint in `out` (replaced atomically); returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if base == DEMO_BASE:
            model, tokenizer, processor = _demo_parts(params, staging, corpus, corpus_images)
        else:
            model, tokenizer, processor = _real_parts(base)
        model = convert_clip_to_fgclip(model)
        _check_text_lengths(model, params)
        # A converted checkpoint keeps its history (re-initialising one is a no-op).
        if getattr(model.config, STAGE_CONFIG_KEY, None) is None:
            setattr(model.config, BASE_CONFIG_KEY, base)
            setattr(model.config, STAGE_CONFIG_KEY, 0)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        _copy_vocab_files(base, staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("FG-CLIP base model from %s saved to %s", base, out)
    return out


def _demo_parts(params: Params, staging: Path, corpus: str | Path | None, corpus_images: str | Path | None):
    spec = params.model.demo
    if corpus is None and corpus_images is None:
        log.warning("no --corpus / --corpus-images: the demo tokenizer learns from the lexicon only")
    texts = list(corpus_texts(corpus, corpus_images, params.train.short_prefix))
    tokenizer = train_clip_tokenizer(
        texts,
        staging,
        vocab_size=spec.tokenizer_vocab_size,
        min_frequency=spec.tokenizer_min_frequency,
        model_max_length=spec.text_positions,
    )
    log.info("demo tokenizer: %d tokens learned from %d texts", len(tokenizer), len(texts))
    return build_demo_clip(spec, tokenizer, params.seed), tokenizer, build_demo_processor(spec)


def _real_parts(base: str):
    model: CLIPModel
    if Path(base).is_dir() and is_fgclip_checkpoint(base):
        model = FGCLIPModel.from_pretrained(base)  # already converted: conversion is a no-op
    else:
        model = CLIPModel.from_pretrained(base, attn_implementation="sdpa")
    tokenizer = load_tokenizer(base)
    processor = image_processor_class().from_pretrained(base)
    return model, tokenizer, processor


def _copy_vocab_files(base: str, staging: Path) -> None:
    """Keep a real base's vocab.json + merges.txt (transformers 5 saves tokenizer.json only)."""
    for name in VOCAB_FILES:
        source = Path(base) / name
        if source.is_file() and not (staging / name).exists():
            shutil.copy2(source, staging / name)


def _check_text_lengths(model: Any, params: Params) -> None:
    short = model.config.text_config.max_position_embeddings
    long = model.config.long_text_max_position_embeddings
    if params.train.short_text_length > short or params.train.long_text_length > long:
        raise ValueError(
            f"train.short_text_length / long_text_length ({params.train.short_text_length} / "
            f"{params.train.long_text_length}) exceed the model's {short} / {long} positions"
        )
