"""The negatives stage: K hard negatives for every region's short expression.

A hard negative keeps the object noun and changes its attributes ("large red striped
circle" -> "large blue striped circle"), so the model must look at the attributes, not
just the object, to tell them apart. The paper asks an LLM for 10 such rewrites and then
post-processes them (strips stray symbols). Here a `NegativeGenerator` backend proposes
rewrites, and the stage applies the same post-processing and validation to every
backend's output: exactly `params.negatives.count` distinct negatives, none equal to the
positive, each keeping the head noun. A region whose generator cannot deliver that gets
`short_expr_negs: []` (flag 0 in FineHARD terms) and a `negatives_incomplete` reject
(dropped=False): the region is still used for the regional loss, just not the hard one.

The stage hands the generator all regions of a shard in batches of
`params.negatives.batch_size` (one batched generate, or that many concurrent requests,
for the LLM backends). An LLM backend's shortfall is filled by the rules
generator; those regions keep their negatives and get a `negatives_repaired` note
(dropped=False), and the run's metrics say how many negatives the model wrote itself.

Output: one negatives_record per regions record, `regions` aligned by index with it.
`validation.validate_negatives` is the shared definition of a valid negative set (QC uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip.core import schema
from fgclip.core.seeding import keyed_random
from fgclip.core.shards import Reject, annotation_path, read_jsonl
from fgclip.core.stage import ShardResult, ShardStage
from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.negatives.interface import NegativeGenerator, NegativeRequest, Proposal, build_generator
from fgclip.data.negatives.validation import select_valid, validate_negatives

STAGE = "negatives"


@dataclass
class RegionCounts:
    """Where the negatives of the run's regions came from (logged to MLflow)."""

    regions: int = 0
    from_model_only: int = 0  # all `count` negatives are the generator's own
    repaired: int = 0  # some came from the fallback generator
    failed: int = 0  # the generator gave an error for the region
    incomplete: int = 0  # not enough valid negatives even after repair
    own_negatives: int = 0
    fallback_negatives: int = 0

    def metrics(self) -> dict[str, float]:
        return {f"negatives.regions_{name}" if name != "regions" else "negatives.regions": float(value)
                for name, value in vars(self).items()}


class NegativesStage(ShardStage):
    name = STAGE
    record_kind = "negatives_record"

    def __init__(self, regions_dir: str | Path, config: NegativesConfig, seed: int, *,
                 generator: NegativeGenerator | None = None) -> None:
        self.regions_dir = str(regions_dir)  # a local folder or an s3:// prefix
        self.config = config
        self.seed = seed
        self.generator = generator or build_generator(config)
        self.counts = RegionCounts()

    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
        return {"regions": annotation_path(self.regions_dir, shard)}

    def settings(self) -> dict[str, Any]:
        # The backend sections are left to the generator's identity: it names what decides
        # the output (model, prompt, decoding), not where the model runs (URL, device).
        config = self.config.model_dump(mode="json", exclude={"openai", "hf"})
        return {"config": config, "seed": self.seed, "generator": self.generator.identity()}

    def metrics(self) -> dict[str, float]:
        return {**self.counts.metrics(), **self.generator.metrics()}

    def negatives_for(self, index: int, positive: str, proposal: Proposal) -> tuple[list[str], tuple[str, str] | None]:
        """(negatives, None), (negatives, ("negatives_repaired", detail)) or ([], (reason, detail)) for one region."""
        count = self.config.count
        self.counts.regions += 1
        where = f"region {index} {positive!r}"
        if proposal.error is not None:
            self.counts.failed += 1
            return [], ("negatives_failed", f"{where}: {proposal.detail or proposal.error}")
        own = select_valid(positive, proposal.candidates, count)
        negatives = select_valid(positive, [*proposal.candidates, *proposal.fallback], count)  # own ones first
        problems = validate_negatives(positive, negatives, count)
        if problems:
            self.counts.incomplete += 1
            return [], ("negatives_incomplete", f"{where}: {'; '.join(problems)} "
                                                f"({len(proposal.candidates) + len(proposal.fallback)} proposed); "
                                                f"written with no negatives")
        self.counts.own_negatives += len(own)
        self.counts.fallback_negatives += count - len(own)
        if len(own) == count:
            self.counts.from_model_only += 1
            return negatives, None
        self.counts.repaired += 1
        return negatives, ("negatives_repaired", f"{where}: {len(own)} of {count} negatives from the generator, "
                                                 f"{count - len(own)} from the fallback ({proposal.detail})")

    def _proposals(self, requests: list[NegativeRequest]) -> list[Proposal]:
        proposals: list[Proposal] = []
        for start in range(0, len(requests), self.config.batch_size):
            chunk = requests[start:start + self.config.batch_size]
            answered = self.generator.generate_batch(chunk, self.config.count)
            if len(answered) != len(chunk):  # would shift negatives onto other regions
                raise RuntimeError(f"negative generator returned {len(answered)} proposals for {len(chunk)} expressions")
            proposals.extend(answered)
        return proposals

    def process_shard(self, shard: str) -> ShardResult:
        rejects: list[Reject] = []
        lines = read_jsonl(annotation_path(self.regions_dir, shard))
        valid: list[dict[str, Any]] = []
        for number, record in enumerate(lines, 1):
            found = schema.problems("regions_record", record)
            if found:
                key = record.get("key") if isinstance(record, dict) and isinstance(record.get("key"), str) else None
                rejects.append(Reject(shard, key, "bad_regions_record", f"regions line {number}: {'; '.join(found)}", stage=STAGE))
            else:
                valid.append(record)
        # Every region of the shard goes to the generator in batches of batch_size, across records.
        requests = [NegativeRequest(region["short_expr"], keyed_random(self.seed, record["key"], index))
                    for record in valid for index, region in enumerate(record["regions"])]
        proposals = iter(self._proposals(requests))
        records: list[dict[str, Any]] = []
        for record in valid:
            regions = []
            for index, region in enumerate(record["regions"]):
                negatives, note = self.negatives_for(index, region["short_expr"], next(proposals))
                if note is not None:
                    rejects.append(Reject(shard, record["key"], note[0], note[1], stage=STAGE, dropped=False))
                regions.append({"short_expr_negs": negatives})
            records.append({"key": record["key"], "regions": regions})
        return ShardResult(records, rejects, items_in=len(lines))

