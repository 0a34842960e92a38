"""negatives: K hard negatives for every region's short expression.

Generators (`negatives.backend`, backends/): `rules` (attribute swaps), `openai` (an LLM
behind an OpenAI-compatible endpoint), `hf` (a causal LM in process). `validation.py` is
the one definition of a valid negative set. Built-in prompts are in prompts/.
"""
