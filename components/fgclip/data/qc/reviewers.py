"""Who judges a sampled region's semantic correctness beyond the validators: nobody
(`none`), the demo world's oracle (`truth`, the demo source only) or a person's verdicts
exported from the review gallery (`labels`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fgclip.core.storage import local_path
from fgclip.data.qc.config import QCConfig
from fgclip.data.qc.population import RegionItem
from fgclip.demo.judge import JUDGE_VERSION, judge_region
from fgclip.demo.truth import TRUTH_ATTRIBUTES, TruthSidecar

OK, BAD, UNREVIEWED, NOT_JUDGED = "ok", "bad", "unreviewed", "not_judged"


@dataclass(frozen=True)
class Verdict:
    label: str  # OK | BAD | UNREVIEWED | NOT_JUDGED
    reason: str = ""


class Reviewer(Protocol):
    """Who judges semantic correctness. identity() goes into the report and MLflow."""

    name: str
    oracle: bool  # judges every item without a person, so a census gives the true rate

    def identity(self) -> dict[str, Any]: ...

    def review(self, item: RegionItem) -> Verdict: ...


class NoReviewer:
    """Validators only: every item counts, nothing is judged beyond the checks."""

    name = "none"
    oracle = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.name}

    def review(self, item: RegionItem) -> Verdict:
        return Verdict(NOT_JUDGED, "validators only")


class TruthReviewer:
    """The demo world's oracle over the truth sidecar (data/demo/*/truth)."""

    name = "truth"
    oracle = True

    def __init__(self, truth_dir: str | Path, match_iou: float) -> None:
        self.truth = TruthSidecar(truth_dir)
        self.match_iou = match_iou

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": JUDGE_VERSION, "match_iou": self.match_iou,
                "attributes": sorted(TRUTH_ATTRIBUTES)}

    def review(self, item: RegionItem) -> Verdict:
        # A shard whose truth file is missing or broken stops QC (TruthUnavailable): the
        # census would be wrong. A key without a record is only left unreviewed.
        truth = self.truth.records(item.shard).get(item.key)
        if truth is None:
            return Verdict(UNREVIEWED, "no truth record for this key")
        right, why = judge_region(item.bbox, item.short_expr, item.long_expr, truth, self.match_iou)
        return Verdict(OK if right else BAD, why)


def load_labels(path: str | Path) -> dict[str, str]:
    """Human verdicts as the gallery downloads them: {"<key>#<region>": "ok"|"bad"}."""
    try:
        data = json.loads(local_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"labels file {path} cannot be read as JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"labels file {path} must hold a JSON object {{\"<key>#<region>\": \"ok\"|\"bad\"}}")
    wrong = {k: v for k, v in data.items() if v not in (OK, BAD) or "#" not in k}
    if wrong:
        example = next(iter(wrong.items()))
        raise ValueError(f"labels file {path}: {len(wrong)} entries are not \"<key>#<region>\": \"ok\"|\"bad\", e.g. {example!r}")
    return dict(data)


class LabelsReviewer:
    """Human verdicts exported from the gallery; items without one stay unreviewed."""

    name = "labels"
    oracle = False

    def __init__(self, labels: Mapping[str, str], source: str = "") -> None:
        self.labels = dict(labels)
        self.source = source
        self.used: set[str] = set()

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(self.labels, sort_keys=True).encode()).hexdigest()
        return {"name": self.name, "labels": len(self.labels), "labels_sha256": digest, "source": self.source}

    def review(self, item: RegionItem) -> Verdict:
        label = self.labels.get(item.item_id)
        if label is None:
            return Verdict(UNREVIEWED, "no human verdict")
        self.used.add(item.item_id)
        return Verdict(label, "human verdict")


REVIEWERS: dict[str, Callable[[QCConfig, str | Path | None, str | Path | None], Reviewer]] = {
    "none": lambda config, truth, labels: NoReviewer(),
    "truth": lambda config, truth, labels: TruthReviewer(_required(truth, "truth", "--truth"), config.match_iou),
    "labels": lambda config, truth, labels: LabelsReviewer(load_labels(_required(labels, "labels", "--labels")), str(labels)),
}


def _required(path: str | Path | None, reviewer: str, flag: str) -> str | Path:
    if path is None:
        raise ValueError(f"qc.reviewer={reviewer} needs {flag}")
    return path


def make_reviewer(config: QCConfig, *, truth_dir: str | Path | None = None, labels: str | Path | None = None) -> Reviewer:
    return REVIEWERS[config.reviewer](config, truth_dir, labels)


