"""Random streams that depend only on what they are named after.

Every random choice in the project is seeded from (config seed, sample key, ...), never
from processing order or Python's per-process hash seed, so results do not change when
shards run in another order, on other workers, or after a resume.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any


def stable_seed(*parts: Any, sep: str = "/") -> int:
    """A 64-bit integer from the parts' text (SHA-256, the same in every process)."""
    digest = hashlib.sha256(sep.join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def seeded_random(*parts: Any, sep: str = "/") -> random.Random:
    """A random stream that depends only on `parts`."""
    return random.Random(stable_seed(*parts, sep=sep))


def keyed_random(seed: int, key: str, index: int) -> random.Random:
    """The stream of item `index` of sample `key` (an expression, a region). A str seed
    is hashed with SHA-512 by `random.Random`, so it is stable across processes too."""
    return random.Random(f"{seed}/{key}/{index}")
