"""The QC sample: stratified by shard, proportional allocation, a seeded simple random
sample without replacement inside each shard (see the package docstring for the design)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from fgclip.core.seeding import seeded_random
from fgclip.data.qc.population import RegionItem

def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Proportional allocation of `total` over strata, largest-remainder rounding.

    Integer arithmetic throughout, so the result sums exactly to `total`; remainder ties go
    to the smaller stratum id, so it is deterministic.
    """
    population = sum(sizes.values())
    if total < 0 or total > population:
        raise ValueError(f"cannot allocate {total} items over a population of {population}")
    if population == 0:
        return {stratum: 0 for stratum in sizes}
    quota = {stratum: total * size // population for stratum, size in sizes.items()}
    remainder = {stratum: total * size % population for stratum, size in sizes.items()}
    leftover = total - sum(quota.values())
    for stratum in sorted(sizes, key=lambda s: (-remainder[s], s))[:leftover]:
        quota[stratum] += 1
    return quota


def stratum_rng(seed: int, stratum: str) -> random.Random:
    """A generator seeded from (seed, stratum) only: independent of the other strata."""
    return seeded_random("qc", seed, stratum, sep=":")


def stratified_sample(population: Mapping[str, Sequence[RegionItem]], sample_size: int, seed: int) -> list[RegionItem]:
    """min(sample_size, N) items: proportional allocation, SRS without replacement per shard."""
    total = min(sample_size, sum(len(items) for items in population.values()))
    quota = allocate({shard: len(items) for shard, items in population.items()}, total)
    sample: list[RegionItem] = []
    for shard in sorted(population):
        chosen = stratum_rng(seed, shard).sample(range(len(population[shard])), quota[shard])
        sample.extend(population[shard][i] for i in sorted(chosen))
    return sample

