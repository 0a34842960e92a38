"""Hard negatives from an LLM (the paper used LLaMA-3.1-70B), on either chat engine.

For each batch of expressions the generator renders the versioned prompt (fields
`expression`, `count`, `noun`: the head noun the negatives must keep), sends all of
them at once, reads the phrases out of each reply (`replies.read_phrases`) and hands
them to the stage, which applies the paper's post-processing and the shared validator
(`select_valid`, `validate_negatives`). When fewer than `count` of the model's phrases
survive (short lists, duplicates, the positive echoed back, a changed noun, prose), the
rules generator proposes fill-ins from the same seeded stream; the stage uses them only
after the model's own and counts them per region (`negatives_repaired`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fgclip.data.negatives.config import NegativesConfig
from fgclip.llm.chat import ChatEngine, Conversation
from fgclip.llm.replies import read_phrases
from fgclip.data.negatives.backends.rules import RulesNegativeGenerator
from fgclip.data.negatives.interface import NegativeGenerator, NegativeRequest, Proposal
from fgclip.data.negatives.validation import select_valid
from fgclip.text.words import head_noun
from fgclip.core.prompts import Prompt

log = logging.getLogger(__name__)

VERSION = "1"
# Rule fill-ins asked for beyond the missing number: some may repeat the model's phrases.
FALLBACK_SPARE = 5


class LLMNegativeGenerator(NegativeGenerator):
    """Negatives from a chat engine, repaired by the rules generator where they fall short."""

    def __init__(self, backend: str, engine: ChatEngine, prompt: Prompt, repair: RulesNegativeGenerator | None) -> None:
        self.backend = backend
        self.engine = engine
        self.prompt = prompt
        self.repair = repair
        self.reply_forms: Counter[str] = Counter()
        self.phrases = 0  # phrases read out of replies, before post-processing and validation
        try:  # a prompt file with a misspelt field fails here, not on the first shard
            prompt.render(expression="red circle", count="10", noun="circle")
        except (KeyError, IndexError) as error:
            raise ValueError(f"negatives prompt {prompt.ref!r} has a field other than {{expression}}, {{count}}, "
                             f"{{noun}}: {error}") from error

    def identity(self) -> dict[str, Any]:
        return {"name": self.backend, "version": VERSION, **self.engine.identity(), **self.prompt.identity(),
                "repair": self.repair.identity() if self.repair is not None else None}

    def conversation(self, expression: str, count: int) -> Conversation:
        noun = head_noun(expression) or expression
        return [{"role": "user", "content": self.prompt.render(expression=expression, count=str(count), noun=noun)}]

    def generate(self, expression: str, count: int, rng: Any) -> list[str]:
        proposal = self.generate_batch([NegativeRequest(expression, rng)], count)[0]
        return [*proposal.candidates, *proposal.fallback]

    def generate_batch(self, requests: Sequence[NegativeRequest], count: int) -> list[Proposal]:
        replies = self.engine.chat([self.conversation(r.expression, count) for r in requests])
        proposals = []
        for request, reply in zip(requests, replies, strict=True):
            if not reply.ok:
                proposals.append(Proposal(error="negatives_failed", detail=f"{reply.error}: {reply.detail}"))
                continue
            phrases = read_phrases(reply.text or "")
            self.reply_forms[phrases.form] += 1
            self.phrases += len(phrases.items)
            usable = len(select_valid(request.expression, phrases.items, count))
            fallback: list[str] = []
            if usable < count and self.repair is not None:
                fallback = self.repair.generate(request.expression, count - usable + FALLBACK_SPARE, request.rng)
            note = (f"reply read as {phrases.form}: {len(phrases.items)} phrases, {usable} valid"
                    f"{', cut off at the token limit' if reply.truncated else ''}")
            proposals.append(Proposal(phrases.items, fallback, detail=note))
        return proposals

    def metrics(self) -> dict[str, float]:
        forms = {f"negatives.reply_form.{form}": float(n) for form, n in sorted(self.reply_forms.items())}
        return {**self.engine.metrics("negatives.backend"), **forms, "negatives.reply_phrases": float(self.phrases)}


def rules_repair(config: NegativesConfig) -> RulesNegativeGenerator | None:
    return RulesNegativeGenerator(max_attempts=config.max_attempts) if config.repair else None
