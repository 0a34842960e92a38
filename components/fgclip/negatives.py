"""negatives: K hard negatives for every region's short expression.

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
for the LLM backends in `fgclip.llm`). An LLM backend's shortfall is filled by the rules
generator; those regions keep their negatives and get a `negatives_repaired` note
(dropped=False), and the run's metrics say how many negatives the model wrote itself.

Output: one negatives_record per regions record, `regions` aligned by index with it.
`validate_negatives` is the shared definition of a valid negative set (QC imports it).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgclip import schema
from fgclip.backends import BackendRegistry
from fgclip.component import add_stage_arguments, run_tracked_stage
from fgclip.config import NegativesConfig, Params
from fgclip.expressions import head_noun, noun_lemma, rules_digest, tokenize
from fgclip.lexicon import ATTRIBUTE_LEXICON, OBJECT_NOUNS, attribute_class
from fgclip.seeding import keyed_random
from fgclip.shards import Reject, annotation_path, read_jsonl
from fgclip.stage import ShardResult, ShardStage
from fgclip.storage import local_path

log = logging.getLogger(__name__)

HELP = "generate hard negatives (attribute rewrites keeping the object noun) for every region"
STAGE = "negatives"


# ---------------------------------------------------------------- post-processing and validation

_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+")  # "1. ", "2) ", "- ", "* " from LLM lists
_STRAY = re.compile(r"[;,\"\u201c\u201d\u2018\u2019`()\[\]{}<>|\\]")
_EDGE_QUOTE = re.compile(r"(?<!\w)'|'(?!\w)")  # a quote, but not the apostrophe in "man's"
_TRAILING = re.compile(r"[\s.!?:]+$")


def clean_expression(text: str) -> str:
    """The paper's post-processing: drop list markers, stray symbols (; , quotes,
    brackets), newlines and trailing punctuation; collapse whitespace. Case is kept."""
    text = _LIST_MARKER.sub("", text.replace("\r", " ").replace("\n", " "))
    text = _EDGE_QUOTE.sub(" ", _STRAY.sub(" ", text))
    return _TRAILING.sub("", " ".join(text.split()))


def postprocess(negative: str, positive: str) -> str:
    """Clean one negative and lowercase it when the positive is lowercase."""
    cleaned = clean_expression(negative)
    return cleaned.lower() if positive == positive.lower() else cleaned


def normalise(text: str) -> str:
    """The form expressions are compared in: cleaned and lowercased."""
    return clean_expression(text).lower()


def validate_negatives(positive: str, negatives: Sequence[str], count: int) -> list[str]:
    """Problems of one region's negatives; an empty list means the set is valid.

    Each problem is one readable line starting with its code:
    - `wrong_count`: not exactly `count` negatives (an empty list, the "no negatives"
      form, is reported too; callers that accept flag-0 regions check for [] first);
    - `empty`: a negative with no words;
    - `equals_positive`: a negative equal to the positive once normalised (cleaned,
      lowercased);
    - `duplicate`: a negative equal to an earlier one once normalised;
    - `head_noun_missing`: the positive's head noun (its last object noun, see
      `fgclip.expressions.head_noun`) is not a word of the negative;
    - `stray_symbols`: the negative still holds what post-processing strips
      (; , quotes, brackets, newlines, trailing punctuation, list markers).
    """
    problems = []
    if len(negatives) != count:
        problems.append(f"wrong_count: {len(negatives)} negatives, expected {count}")
    head = head_noun(positive)
    positive_norm = normalise(positive)
    first_seen: dict[str, int] = {}
    for index, negative in enumerate(negatives):
        if not isinstance(negative, str) or not normalise(negative):
            problems.append(f"empty: negative {index} is empty")
            continue
        norm = normalise(negative)
        if norm == positive_norm:
            problems.append(f"equals_positive: negative {index} {negative!r} is the positive")
        if norm in first_seen:
            problems.append(f"duplicate: negative {index} {negative!r} repeats negative {first_seen[norm]}")
        else:
            first_seen[norm] = index
        if head is not None and head not in tokenize(norm):
            problems.append(f"head_noun_missing: negative {index} {negative!r} lacks the head noun {head!r}")
        if clean_expression(negative) != " ".join(negative.split()):
            problems.append(f"stray_symbols: negative {index} {negative!r} is not post-processed")
    return problems


def select_valid(positive: str, candidates: Sequence[str], count: int) -> list[str]:
    """The first `count` post-processed candidates that are non-empty, differ from the
    positive and from each other, and keep the head noun."""
    head = head_noun(positive)
    seen = {normalise(positive)}
    chosen: list[str] = []
    for candidate in candidates:
        if len(chosen) == count:
            break
        cleaned = postprocess(candidate, positive)
        norm = cleaned.lower()
        if not cleaned or norm in seen or (head is not None and head not in tokenize(norm)):
            continue
        seen.add(norm)
        chosen.append(cleaned)
    return chosen


# ---------------------------------------------------------------- backend interface

class NegativeGenerationError(Exception):
    """A backend failed for one expression (an endpoint error, say); the region gets no
    negatives and a `negatives_failed` reject, and the shard goes on."""


@dataclass(frozen=True)
class NegativeRequest:
    """One region's positive expression and its random stream, seeded per (seed, key, region)."""

    expression: str
    rng: random.Random


@dataclass(frozen=True)
class Proposal:
    """A generator's candidates for one expression, or why it has none.

    `candidates` are the backend's own; `fallback` are fill-ins from another generator
    (an LLM backend's rules repair), used only after every valid own candidate, and
    counted apart so the run reports how much of the data the model really wrote."""

    candidates: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    error: str | None = None  # the region gets no negatives
    detail: str = ""


class NegativeGenerator(ABC):
    """Proposes hard negatives for positive expressions."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version, prompt or rules hash: part of the stage fingerprint."""

    @abstractmethod
    def generate(self, expression: str, count: int, rng: random.Random) -> list[str]:
        """Up to `count` (or more, the stage keeps the first valid `count`) negatives.
        `rng` is seeded per (seed, key, region index): use it for every random choice."""

    def generate_batch(self, requests: Sequence[NegativeRequest], count: int) -> list[Proposal]:
        """One proposal per request, in order. Model backends override this to answer a
        whole batch at once; a per-expression failure is a proposal with an error, an
        exception means the backend itself is gone (the stage stops)."""
        proposals = []
        for request in requests:
            try:
                proposals.append(Proposal(self.generate(request.expression, count, request.rng)))
            except NegativeGenerationError as error:
                proposals.append(Proposal(error="negatives_failed", detail=str(error)))
        return proposals

    def metrics(self) -> dict[str, float]:
        """Throughput and other run metrics of the backend (none for rule-based ones)."""
        return {}


GeneratorFactory = Callable[[NegativesConfig], NegativeGenerator]
GENERATORS: BackendRegistry[GeneratorFactory] = BackendRegistry("negative generator")
register_generator = GENERATORS.register


def build_generator(config: NegativesConfig) -> NegativeGenerator:
    return GENERATORS.factory(config.backend)(config)


# ---------------------------------------------------------------- the rules generator

# Adjective order in English noun phrases: a new attribute goes where a native speaker
# would put it ("large" before "red" before "striped" before "wooden").
ATTRIBUTE_ORDER = ("count", "size", "colour", "pattern", "material")
# Classes a negative may add to a phrase that lacks them ("circle" -> "red circle").
INSERTABLE = ("size", "colour", "pattern", "material")
# Never inserted: an omitted pattern already reads as solid, so "solid" adds nothing.
NEVER_INSERTED = frozenset({"solid"})
# Words that mean (nearly) the same: swapping within a group would make a "negative"
# that is still true ("large circle" -> "big circle").
NEAR_SYNONYMS: tuple[frozenset[str], ...] = tuple(frozenset(group.split()) for group in (
    "small little tiny", "large big huge", "blue navy", "red maroon", "cyan turquoise", "yellow gold",
    "gray silver", "dotted spotted", "checkered plaid", "top upper", "bottom lower", "center middle",
))


def _same_meaning(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in NEAR_SYNONYMS)


def _meaning(words: Sequence[str]) -> tuple[str, ...]:
    """Words with near-synonyms mapped to one representative: "big circle" and "large
    circle" are one negative, not two."""
    return tuple(min(next((g for g in NEAR_SYNONYMS if w.lower() in g), {w.lower()})) for w in words)


def _cased_like(word: str, original: str) -> str:
    return word.upper() if original.isupper() and len(original) > 1 else word.title() if original.istitle() else word


class RulesNegativeGenerator(NegativeGenerator):
    """Attribute edits from the lexicon, hardest first.

    The phrase is read as words with a lexicon class (colour, material, pattern, size,
    count, position) and a head noun (its last object noun, else its last word). The
    candidates come in tiers, each shuffled with the region's rng: one attribute swapped
    for another of its class; two swapped; one swapped and a missing class inserted; a
    missing class inserted (before the noun, in adjective order); two inserted. So a
    fully described object gets one-word changes and even a bare "circle" gets K.
    """

    name = "rules"
    version = "1"

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def identity(self) -> dict[str, Any]:
        tables = (ATTRIBUTE_LEXICON, ATTRIBUTE_ORDER, INSERTABLE, NEVER_INSERTED, NEAR_SYNONYMS, OBJECT_NOUNS)
        return {"name": self.name, "version": self.version, "rules_hash": rules_digest(*tables),
                "max_attempts": self.max_attempts}

    def generate(self, expression: str, count: int, rng: random.Random) -> list[str]:
        words = clean_expression(expression).split()
        if not words:
            return []
        lowered = [w.lower() for w in words]
        head = max((i for i, w in enumerate(lowered) if noun_lemma(w)), default=len(words) - 1)
        slots = [(i, attribute_class(w)) for i, w in enumerate(lowered) if i != head and attribute_class(w)]
        present = {cls for _, cls in slots}
        missing = [cls for cls in INSERTABLE if cls not in present]
        chosen: list[str] = []
        seen = {_meaning(words)}
        for attempt, candidate in enumerate(self._candidates(words, head, slots, missing, rng)):
            if attempt >= self.max_attempts or len(chosen) == count:
                break
            if _meaning(candidate) not in seen:
                seen.add(_meaning(candidate))
                chosen.append(" ".join(candidate))
        return chosen

    @staticmethod
    def _swaps(words: list[str], index: int, cls: str) -> list[str]:
        taken = {w.lower() for w in words}
        return [w for w in ATTRIBUTE_LEXICON[cls] if not _same_meaning(w, words[index].lower()) and w not in taken]

    @staticmethod
    def _insert_at(words: list[str], head: int, cls: str) -> int:
        """Where a word of `cls` goes in the modifier run before the head noun: after
        the attributes that come earlier in adjective order, before later ones and
        before noun modifiers ("metal tree house", not "tree metal house")."""
        rank = ATTRIBUTE_ORDER.index(cls)
        position = head
        while position > 0:
            before = words[position - 1]
            later = attribute_class(before) in ATTRIBUTE_ORDER and ATTRIBUTE_ORDER.index(attribute_class(before)) > rank
            if not (later or (attribute_class(before) is None and noun_lemma(before.lower()))):
                break
            position -= 1
        return position

    def _insertions(self, words: list[str], head: int, cls: str) -> list[list[str]]:
        at = self._insert_at(words, head, cls)
        taken = {w.lower() for w in words}
        return [words[:at] + [w] + words[at:] for w in ATTRIBUTE_LEXICON[cls] if w not in NEVER_INSERTED and w not in taken]

    def _candidates(self, words: list[str], head: int, slots: list[tuple[int, str]], missing: list[str],
                    rng: random.Random) -> Iterator[list[str]]:
        def shuffled(items: list[list[str]]) -> list[list[str]]:
            rng.shuffle(items)
            return items

        def replaced(base: list[str], index: int, word: str) -> list[str]:
            return base[:index] + [_cased_like(word, base[index])] + base[index + 1:]

        singles = [replaced(words, i, w) for i, cls in slots for w in self._swaps(words, i, cls)]
        yield from shuffled(singles)
        doubles = [replaced(replaced(words, i, a), j, b)
                   for (i, ci), (j, cj) in itertools.combinations(slots, 2)
                   for a in self._swaps(words, i, ci) for b in self._swaps(words, j, cj) if not _same_meaning(a, b)]
        yield from shuffled(doubles)
        # Inserting shifts the head; swaps are applied first, then the insertion.
        swap_inserts = [inserted for single in singles for cls in missing for inserted in self._insertions(single, head, cls)]
        yield from shuffled(swap_inserts)
        inserts = [inserted for cls in missing for inserted in self._insertions(words, head, cls)]
        yield from shuffled(inserts)
        double_inserts = []
        for first, second in itertools.combinations(missing, 2):
            for once in self._insertions(words, head, first):
                new_head = head + 1
                double_inserts.extend(self._insertions(once, new_head, second))
        yield from shuffled(double_inserts)


@register_generator("rules")
def _rules_factory(config: NegativesConfig) -> NegativeGenerator:
    return RulesNegativeGenerator(max_attempts=config.max_attempts)


# The LLM generators live in fgclip.llm and are imported only when configured (torch,
# transformers and httpx stay out of the rules path and of `fgclip --help`).
@register_generator("openai")
def _openai_factory(config: NegativesConfig) -> NegativeGenerator:
    from fgclip.llm.negatives_llm import endpoint_generator

    return endpoint_generator(config)


@register_generator("hf")
def _hf_factory(config: NegativesConfig) -> NegativeGenerator:
    from fgclip.llm.negatives_llm import causal_lm_generator

    return causal_lm_generator(config)


# ---------------------------------------------------------------- the stage

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
        self.regions_dir = local_path(regions_dir)
        self.config = config
        self.seed = seed
        self.generator = generator or build_generator(config)
        self.counts = RegionCounts()

    def shard_inputs(self, shard: str) -> dict[str, Path]:
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


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", required=True, help="regions records folder (detect output)")
    add_stage_arguments(parser, "negatives")


def command(args: argparse.Namespace, params: Params) -> int:
    from fgclip.cli import ComponentError
    from fgclip.component import select_shards
    from fgclip.llm.chat import EndpointDown

    # The regions stage's manifests name its finished shards; a shard without one is
    # not finished and must not be read.
    shards, every_shard = select_shards(args.regions, args.shards, suffix=".manifest.json",
                                        hint="run detect first")
    try:
        stage = NegativesStage(args.regions, params.negatives, params.seed)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ComponentError(str(error)) from error
    try:
        summary, _ = run_tracked_stage(stage, params=params, shards=shards, out=args.out, report=args.report,
                                       inputs={"regions": args.regions}, progress=not args.no_progress, prune=every_shard)
    except EndpointDown as error:  # finished shards are on disk; a rerun resumes after them
        raise ComponentError(f"negatives stopped: {error}") from error
    log.info("negatives: %d records in, %d written, ignored %s", summary.items_in, summary.items_out, dict(summary.ignored))
    return 0
