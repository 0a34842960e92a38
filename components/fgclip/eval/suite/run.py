"""Run the paper's suite for one model: check each benchmark's pinned protocol against the
model, read the benchmarks, embed everything once, score every task.

The protocol check comes first and is never skipped: a benchmark pinned at 336 px does not
run on a 224 px model (the reference scripts' flag that silently fell back to 224), and a
long-caption benchmark does not run through a text path that holds fewer tokens than
pinned (a truncated long caption, or the short path used for long text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgclip.core.storage import local_path
from fgclip.eval.benchmarks.base import Benchmark, BenchmarkMissing, BoxSet, ChoiceSet, ClassSet, RetrievalSet
from fgclip.eval.benchmarks.config import (
    BenchmarkSettings,
    BenchmarkSuiteConfig,
    BoxClassificationSettings,
    ImageNetSettings,
    RetrievalSettings,
)
from fgclip.eval.benchmarks.prompts import prompts_for
from fgclip.eval.benchmarks.readers import READERS
from fgclip.eval.suite import scoring
from fgclip.eval.suite.features import BenchmarkEmbedder, FeaturePlan, Features, TextCache, encode_plan

log = logging.getLogger(__name__)

SCORED, SKIPPED = "scored", "skipped"


class SuiteError(Exception):
    """A run that cannot give a trustworthy number: a protocol mismatch, a benchmark with nothing to score."""


@dataclass
class BenchmarkResult:
    name: str
    status: str
    settings: dict[str, Any]
    reason: str = ""
    task: str = ""
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteResult:
    model: dict[str, Any]
    results: list[BenchmarkResult]
    throughput: dict[str, float]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Every metric as ``<benchmark>_<metric>`` (what metrics.json, MLflow and the gate read)."""
        return {f"{r.name}_{metric}": value for r in self.results for metric, value in r.metrics.items()}


def check_protocol(name: str, settings: BenchmarkSettings, embedder: BenchmarkEmbedder) -> None:
    size = embedder.input_size()
    if size != settings.image_size:
        raise SuiteError(
            f"{name}: pinned at {settings.image_size} px but the model runs at {size} px; "
            f"set benchmarks.{name}.image_size={size} if that is the protocol you mean (no silent fallback)"
        )
    long = settings.text_path == "long"
    capacity = embedder.text_capacity(long)
    if capacity != settings.max_text_tokens:
        raise SuiteError(
            f"{name}: pinned to {settings.max_text_tokens} tokens on the {settings.text_path} text path, "
            f"but the model's {settings.text_path} path takes {capacity}"
        )


def load_benchmarks(
    names: Sequence[str], config: BenchmarkSuiteConfig, data_root: Path, skip_missing: bool
) -> tuple[list[Benchmark], list[BenchmarkResult]]:
    loaded, skipped = [], []
    for name in names:
        settings = config.settings(name)
        try:
            loaded.append(READERS[name](settings, data_root, config.allow_missing_images))
        except BenchmarkMissing as missing:
            if not skip_missing:
                raise
            log.warning("skipping %s: %s", name, missing)
            skipped.append(BenchmarkResult(name, SKIPPED, settings.model_dump(mode="json"), reason=str(missing)))
    return loaded, skipped


def plan_features(benchmarks: Sequence[Benchmark], config: BenchmarkSuiteConfig) -> FeaturePlan:
    plan = FeaturePlan()
    for benchmark in benchmarks:
        data, view = benchmark.data, config.settings(benchmark.name).image_view
        if isinstance(data, (RetrievalSet, ClassSet)):
            for path in data.images:
                plan.want_global(path, view)
        elif isinstance(data, BoxSet):
            for path, boxes in zip(data.images, data.boxes):
                plan.want_boxes(path, boxes)
        elif isinstance(data, ChoiceSet):
            for questions in data.questions.values():
                for question in questions:
                    plan.want_boxes(data.images[question.image], [question.box])
    return plan


def score(benchmark: Benchmark, settings: BenchmarkSettings, features: Features, texts: TextCache) -> BenchmarkResult:
    long = settings.text_path == "long"
    data = benchmark.data
    used_texts: list[str] = []

    def embed(batch: Sequence[str]) -> np.ndarray:
        used_texts.extend(batch)
        return texts.embed(batch, long, desc=f"{benchmark.name} texts")

    extra = dict(benchmark.extra)
    if isinstance(data, RetrievalSet):
        assert isinstance(settings, RetrievalSettings)
        metrics, counts = scoring.retrieval(data, features, settings.image_view, embed, settings.ks)
    elif isinstance(data, BoxSet | ClassSet):
        assert isinstance(settings, BoxClassificationSettings | ImageNetSettings)
        prompts, templates, source = prompts_for(data.class_names, settings)
        classes = scoring.class_embeddings(embed(prompts), len(data.class_names), templates)
        extra.update(templates=templates, templates_source=source, classes=len(data.class_names))
        if isinstance(data, BoxSet):
            metrics, counts = scoring.box_classification(data, features, classes, settings.topk)
        else:
            metrics, counts = scoring.zero_shot(data, features, settings.image_view, classes, settings.topk)
    else:
        metrics, counts = scoring.choices(data, features, embed)
    counts = {**benchmark.counts, **counts, "texts_truncated": texts.truncated(used_texts, long)}
    if counts["texts_truncated"]:
        log.info(
            "%s: %d distinct texts are longer than the %s path's %d tokens and were cut there (the protocol)",
            benchmark.name,
            counts["texts_truncated"],
            settings.text_path,
            settings.max_text_tokens,
        )
    return BenchmarkResult(
        benchmark.name,
        SCORED,
        settings.model_dump(mode="json"),
        task=benchmark.task,
        files=benchmark.files,
        metrics=metrics,
        counts=counts,
        rejects=benchmark.reject_counts(),
        extra=extra,
    )


def run_suite(
    embedder: BenchmarkEmbedder,
    config: BenchmarkSuiteConfig,
    *,
    names: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    skip_missing: bool | None = None,
    progress: bool = False,
) -> SuiteResult:
    began = time.perf_counter()
    names = list(names or config.suite)
    for name in names:
        check_protocol(name, config.settings(name), embedder)
    root = local_path(data_root or config.data_root)
    if not root.is_dir():
        raise BenchmarkMissing(f"benchmark data root {root} does not exist (layout: docs/benchmarks.md)")
    benchmarks, skipped = load_benchmarks(
        names, config, root, config.skip_missing if skip_missing is None else skip_missing
    )
    if not benchmarks:
        raise SuiteError(f"no benchmark to score under {root}: {[r.reason for r in skipped]}")
    plan = plan_features(benchmarks, config)
    log.info(
        "suite: %d benchmarks, %d distinct images, %d distinct boxes", len(benchmarks), len(plan.needs), plan.box_count
    )
    features = encode_plan(embedder, plan, config.batch_size, progress)
    texts = TextCache(embedder, config.batch_size, progress)
    results = {r.name: r for r in skipped}
    for benchmark in benchmarks:
        try:
            results[benchmark.name] = score(benchmark, config.settings(benchmark.name), features, texts)
        except ValueError as error:  # nothing usable left, e.g. every image unreadable
            raise SuiteError(f"{benchmark.name}: {error}") from error
    throughput = features.throughput()
    throughput.update(texts=float(len(texts.rows)), text_seconds=round(texts.seconds, 3))
    if features.unreadable:
        throughput["images_unreadable"] = float(len(features.unreadable))
    log.info("suite: %s", throughput)
    ordered = [results[name] for name in names]
    return SuiteResult(embedder.identity(), ordered, throughput, round(time.perf_counter() - began, 3))
