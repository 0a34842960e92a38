"""The vision model backends, batched against one at a time, on the same device.

For each backend (recaption `hf`, detect `owlv2` / `grounding_dino`, the `spacy`
extractor) the same demo-world images (and their demo captions' expressions) go through
the backend's batched path (`--batch-size` per call) and through a loop of single-item
calls. Each prints one JSON line with both rates (images/s, expressions/s, tokens/s from
the backend's own throughput meter, after one warm-up call) and the ratio batched/loop.

Without a model path a tiny random model is built from config (tests/vision/tiny_models.py):
that measures the mechanics (padding, one forward per batch), not a real model's speed.

    PYTHONPATH=components:. python benchmarks/vision_backends.py --device cpu --images 16
    PYTHONPATH=components:. python benchmarks/vision_backends.py --device cuda --images 64 --batch-size 16 \\
        --caption-model Qwen/Qwen2-VL-2B-Instruct --owlv2-model google/owlv2-base-patch16-ensemble \\
        --grounding-dino-model IDEA-Research/grounding-dino-tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT / "components", ROOT):  # a checkout without `pip install -e .`; tests/ for the tiny models
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from fgclip.config import load_params
from fgclip.core.shards import RawShardReader, batched, read_jsonl  # noqa: E402
from fgclip.core.throughput import Throughput  # noqa: E402
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import build_extractor  # noqa: E402
from fgclip.data.detect.interface import DetectContext, DetectItem, build_detector  # noqa: E402
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.data.recaption.interface import BackendResources, CaptionContext, make_backend
from fgclip.demo import world as demo_world  # noqa: E402
from fgclip.demo.captions import describe  # noqa: E402
from fgclip.demo.config import DemoWorldConfig  # noqa: E402


def demo_samples(folder: Path, count: int) -> tuple[list[Any], list[str]]:
    """`count` demo-world images and their demo teacher captions."""
    config = DemoWorldConfig(train_shards=1, heldout_shards=0, samples_per_shard=count)
    demo_world.generate_split(config, folder, "train", progress=False)
    samples = list(RawShardReader(folder / "train" / "images" / "00000.tar"))
    truth = {r["key"]: r for r in read_jsonl(folder / "train" / "truth" / "00000.jsonl")}
    teacher = load_params(None).recaption.demo
    return samples, [describe(truth[s.key], s.key, 0, teacher) for s in samples]


def phase(backend: Any, run: Callable[[], None]) -> dict[str, float]:
    """Rates of one pass, from a fresh throughput meter (and the wall clock for spaCy)."""
    backend.throughput = Throughput("images")
    backend.expressions = 0
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    metrics = backend.metrics()
    prefix = next(k.rsplit(".", 1)[0] for k in metrics if k.endswith(".images_per_second"))
    rates = {
        "images_per_s": metrics[f"{prefix}.images_per_second"],
        "tokens_per_s": metrics[f"{prefix}.tokens_per_second"],
        "wall_s": round(wall, 3),
    }
    if f"{prefix}.expressions_per_second" in metrics:
        rates["expressions_per_s"] = metrics[f"{prefix}.expressions_per_second"]
    return rates


def compare(
    name: str,
    device: str,
    batch_size: int,
    count: int,
    batched_run: Callable[[], None],
    loop_run: Callable[[], None],
    backend: Any,
) -> None:
    batched_rates = phase(backend, batched_run)
    loop_rates = phase(backend, loop_run)
    ratio = batched_rates["images_per_s"] / loop_rates["images_per_s"] if loop_rates["images_per_s"] else None
    print(
        json.dumps(
            {
                "backend": name,
                "device": device,
                "images": count,
                "batch_size": batch_size,
                "batched": batched_rates,
                "loop": loop_rates,
                "ratio_images_per_s": round(ratio, 2) if ratio else None,
            }
        ),
        flush=True,
    )


def bench_captioner(model: str, args: argparse.Namespace, samples: Sequence[Any]) -> None:
    config = RecaptionConfig(
        backend="hf",
        hf={
            "model": model,
            "device": args.device,
            "max_new_tokens": args.max_new_tokens,
            "repetition_penalty": args.repetition_penalty,
        },
    )
    backend = make_backend(config, BackendResources())
    context = CaptionContext("00000", 0)
    backend.caption(samples[:1], context)  # warm-up: kernels, caches
    compare(
        "recaption.hf",
        str(backend.device),
        args.batch_size,
        len(samples),
        lambda: [backend.caption(chunk, context) for chunk in batched(samples, args.batch_size)],
        lambda: [backend.caption([sample], context) for sample in samples],
        backend,
    )


def bench_detector(
    backend_name: str, model: str, args: argparse.Namespace, samples: Sequence[Any], captions: Sequence[str]
) -> None:
    config = DetectConfig(backend=backend_name, **{backend_name: {"model": model, "device": args.device}})
    detector = build_detector(config)
    extractor = build_extractor(DetectConfig())
    items = [
        DetectItem(s, e, DetectContext("00000", s.key, 0))
        for s, e in zip(samples, extractor.extract_many(captions))
        if e
    ]
    detector.detect_batch(items[:1])
    compare(
        f"detect.{backend_name}",
        str(detector.device),
        args.batch_size,
        len(items),
        lambda: [detector.detect_batch(chunk) for chunk in batched(items, args.batch_size)],
        lambda: [detector.detect_batch([one]) for one in items],
        detector,
    )


def bench_spacy(args: argparse.Namespace, captions: Sequence[str]) -> None:
    extractor = build_extractor(DetectConfig(extractor="spacy", spacy={"batch_size": args.batch_size}))
    if extractor.identity()["name"] != "spacy":
        print(json.dumps({"backend": "detect.spacy", "skipped": "the spaCy pipeline is not installed"}))
        return
    extractor.extract(captions[0])
    rates = {}
    for label, run in (
        ("batched", lambda: extractor.extract_many(captions)),
        ("loop", lambda: [extractor.extract(c) for c in captions]),
    ):
        started = time.perf_counter()
        found = run()
        seconds = time.perf_counter() - started
        rates[label] = {
            "captions_per_s": round(len(captions) / seconds, 1),
            "expressions_per_s": round(sum(len(e) for e in found) / seconds, 1),
        }
    print(
        json.dumps(
            {
                "backend": "detect.spacy",
                "device": "cpu",
                "captions": len(captions),
                "batch_size": args.batch_size,
                **rates,
                "ratio_captions_per_s": round(rates["batched"]["captions_per_s"] / rates["loop"]["captions_per_s"], 2),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, npu, ...")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--caption-model", default=None, help="model folder or hub id (default: a tiny random LLaVA)")
    parser.add_argument("--owlv2-model", default=None, help="default: a tiny random OWLv2")
    parser.add_argument("--grounding-dino-model", default=None, help="default: a tiny random Grounding DINO")
    parser.add_argument(
        "--backends", nargs="+", default=["recaption.hf", "detect.owlv2", "detect.grounding_dino", "detect.spacy"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (a shared machine: 1)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fgclip-bench-") as scratch:
        work = Path(scratch)
        samples, captions = demo_samples(work / "demo", args.images)

        def model_or_tiny(given: str | None, builder: str) -> str:
            if given:
                return given
            from tests.support import tiny_vision_models as tiny_models

            return str(getattr(tiny_models, builder)(work / builder))

        if "recaption.hf" in args.backends:
            bench_captioner(model_or_tiny(args.caption_model, "save_tiny_llava"), args, samples)
        if "detect.owlv2" in args.backends:
            bench_detector("owlv2", model_or_tiny(args.owlv2_model, "save_tiny_owlv2"), args, samples, captions)
        if "detect.grounding_dino" in args.backends:
            bench_detector(
                "grounding_dino",
                model_or_tiny(args.grounding_dino_model, "save_tiny_grounding_dino"),
                args,
                samples,
                captions,
            )
        if "detect.spacy" in args.backends:
            bench_spacy(args, captions)


if __name__ == "__main__":
    main()
